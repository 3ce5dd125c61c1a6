"""A trainer whose job was killed outright (``kill -9`` of Snakemake) never overwrites the
model of the rerun that replaced it: it stops at its next step, one trainer holds a run folder
at a time, and the rerun with an edited config writes the only model.

Real processes: a parent that starts the trainer as the workflow's rule does (a shell that
``exec``s it, output to a log), directly or under ``accelerate launch``, and is then killed
with SIGKILL, which re-parents the trainer (or its launcher) to pid 1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dspo.training.job_watch import parent_of
from dspo.training.run_lock import LOCK
from tests.faults.test_train_faults import SIGNAL_CONFIG, base_model, cli, make_cache

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

# The job: a shell that execs the trainer, as rules/train.smk runs it, the parent waiting.
PARENT = "import subprocess, sys; sys.exit(subprocess.Popen(sys.argv[1], shell=True).wait())"
LONG = {**SIGNAL_CONFIG, "steps": 100_000}  # never finishes by itself within the test
EDITED = {**SIGNAL_CONFIG, "steps": 4, "lr": SIGNAL_CONFIG["lr"] / 2}


@pytest.fixture(scope="module")
def world(tiny_pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("orphans")
    base = base_model(root / "base", seed=0)
    return {"base": base, "cache": make_cache(tiny_pairs, base, root / "cache")}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that pid 1 has not reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def job(cfg: dict, world: dict, root: Path, launcher: str) -> subprocess.Popen:
    """The parent process of a training job whose output goes to ``root/train.log``."""
    args = [
        "train", "--params", json.dumps(cfg), "--cache", str(world["cache"]),
        "--base", str(world["base"]), "--out", str(root / "model"),
        "--run-dir", str(root / "run"), "--threads", "1",
    ]  # fmt: skip
    if launcher == "accelerate":
        accelerate = str(Path(sys.executable).parent / "accelerate")
        program = [
            "env", "ACCELERATE_USE_CPU=1", accelerate, "launch", "--num_processes", "1",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "dspo.cli.commands",
        ]  # fmt: skip
    else:
        program = ["env", sys.executable, "-m", "dspo.cli.commands"]
    shell = f"exec {shlex.join(program + args)} > {shlex.quote(str(root / 'train.log'))} 2>&1"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", PARENT, shell], env=env)


@pytest.mark.parametrize("launcher", ["direct", "accelerate"])
def test_an_orphaned_trainer_stops_and_the_rerun_writes_the_only_model(
    launcher: str, world: dict, tmp_path: Path
) -> None:
    parent = job(LONG, world, tmp_path, launcher)
    metrics, trainer = tmp_path / "run/metrics.jsonl", None
    try:
        wait_for(lambda: metrics.exists() and metrics.read_text().strip(), "a training step")
        trainer = json.loads((tmp_path / "run" / LOCK).read_text())["pid"]
        # The trainer is the job's shell, exec'd: the parent's child, or its launcher's.
        job_pid = parent_of(trainer) if launcher == "direct" else parent_of(parent_of(trainer))
        assert job_pid == parent.pid
        if launcher == "direct":
            # A second trainer on the same run folder stops at once, naming it and the holder.
            second = cli(EDITED, world["cache"], world["base"], tmp_path)
            _, err = second.communicate(timeout=300)
            assert second.returncode != 0
            assert f"{tmp_path / 'run'} is in use by another trainer: pid {trainer}" in err
            assert alive(trainer)
        parent.send_signal(signal.SIGKILL)  # Snakemake killed outright: no signal reaches it
        parent.wait()
        wait_for(lambda: not alive(trainer), "the orphaned trainer to stop", timeout=120)
    finally:
        if trainer is not None and alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    log = (tmp_path / "train.log").read_text()
    assert "the job that started this trainer" in log and "is gone" in log, log[-3000:]
    assert not (tmp_path / "model").exists()
    (checkpoint,) = (tmp_path / "run/checkpoints").glob("step-*")  # stopped at a step's end
    assert int(checkpoint.name.split("-")[1]) < LONG["steps"]

    rerun = cli(EDITED, world["cache"], world["base"], tmp_path)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    record = json.loads((tmp_path / "model/dspo_config.json").read_text())
    assert record["config"]["lr"] == EDITED["lr"] and record["config"]["steps"] == 4
    assert record["run"]["pid"] == rerun.pid and record["resumed_from"] == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the rerun's records only, none interleaved
