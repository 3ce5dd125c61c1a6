"""A stand-in training process for tests/training/test_launch.py, run as
``python -m tests.launch_worker OUT SECONDS``: it records its rank variables in
OUT/rank-R.json, then waits for SIGTERM or SIGURG (the SLURM profile's warning); on it, it
takes SECONDS (a slow checkpoint) before writing OUT/saved-R and exiting 1, as a preempted
trainer does."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def main() -> None:
    out, seconds = Path(sys.argv[1]), float(sys.argv[2])
    stop = []
    for sig in (signal.SIGTERM, signal.SIGURG):
        signal.signal(sig, lambda *_: stop.append(True))
    rank = os.environ.get("RANK", "0")
    seen = {k: os.environ.get(k) for k in RANK_VARS}
    seen["accelerate"] = sorted(k for k in os.environ if k.startswith("ACCELERATE_"))
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    while not stop:
        time.sleep(0.05)
    time.sleep(seconds)
    (out / f"saved-{rank}").write_text("done")
    sys.exit(1)


if __name__ == "__main__":
    main()
