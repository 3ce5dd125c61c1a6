"""Compare the results/ folders of two runs of the same config (two worktrees at two commits).

A move or a refactor that claims to change no result is checked with it: weights
(safetensors) and tables byte for byte, images pixel for pixel (a PNG also holds its key,
which includes the source code's key, so its bytes differ whenever the code does), parquet
files column for column but the image key, and the base model's metrics but their times.

    python scripts/compare_runs.py OLD/results NEW/results

Prints one line per kind of file and exits 1 if anything differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Timings and logs differ between any two runs.
SKIPPED = ("benchmarks", "logs")


def _files(root: Path, pattern: str) -> list[Path]:
    found = (p.relative_to(root) for p in root.rglob(pattern) if p.is_file())
    return sorted(p for p in found if p.parts[0] not in SKIPPED)


def _same_bytes(old: Path, new: Path) -> bool:
    return old.read_bytes() == new.read_bytes()


def _same_pixels(old: Path, new: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(old)), np.asarray(Image.open(new)))


def _same_rows(old: Path, new: Path) -> bool:
    a, b = pd.read_parquet(old), pd.read_parquet(new)
    keep = [c for c in a.columns if c != "key"]
    return list(a.columns) == list(b.columns) and a[keep].equals(b[keep])


def _same_metrics(old: Path, new: Path) -> bool:
    def rows(path: Path) -> list[dict]:
        lines = path.read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time")} for x in lines]

    return rows(old) == rows(new)


CHECKS = {
    "weights (*.safetensors), bytes": ("*.safetensors", _same_bytes),
    "tables (tables/*), bytes": ("tables/*", _same_bytes),
    "images (*.png), pixels": ("*.png", _same_pixels),
    "parquet (*.parquet), all columns but key": ("*.parquet", _same_rows),
    "training metrics (*metrics.jsonl), all but times": ("*metrics.jsonl", _same_metrics),
}


def main(old: Path, new: Path) -> int:
    failed = False
    for what, (pattern, same) in CHECKS.items():
        names = _files(old, pattern)
        missing = [n for n in names if not (new / n).exists()]
        differ = [n for n in names if (new / n).exists() and not same(old / n, new / n)]
        print(f"{what}: {len(names)} compared, {len(differ)} differ, {len(missing)} missing")
        for name in [*differ, *missing][:10]:
            print(f"  {name}")
        failed |= bool(differ or missing)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
