"""Training on a cluster: dspo.training.launch starts one process per GPU of each node, forwards
stop signals and waits for the checkpoint; training through it survives SIGTERM and trains across
"nodes" like one process; wall-clock checkpoints; the TF32 switch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from dspo.training.launch import Topology, free_port, port_of_job, slurm_topology, worker_env
from dspo.training.policy import use_tf32
from tests.training.test_train import BASE_CONFIG, DSPO, SCHEDULE, run

REPO = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-m", "dspo.training.launch"]
# test_train's settings with DSPO's parameters, its warm-up schedule and no periodic
# checkpoints (the stop signal writes the one these tests resume from).
CONFIG = {
    **BASE_CONFIG,
    **DSPO,
    **SCHEDULE,
    "checkpoint_every": 0,
}


def env(**extra: str) -> dict[str, str]:
    """The caller's environment with this repository importable and one thread a process."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_worker_env_gives_ranks_and_drops_accelerate_defaults() -> None:
    caller = {"PATH": "/bin", "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR", "ACCELERATE_USE_CPU": "0"}
    topo = Topology(nodes=2, node_rank=1, procs_per_node=4, main_address="n1", main_port=123)
    got = worker_env(caller, topo, local_rank=2, cpu=False)
    assert (got["RANK"], got["WORLD_SIZE"], got["LOCAL_RANK"]) == ("6", "8", "2")
    assert (got["LOCAL_WORLD_SIZE"], got["GROUP_RANK"]) == ("4", "1")
    assert (got["MASTER_ADDR"], got["MASTER_PORT"], got["PATH"]) == ("n1", "123", "/bin")
    assert not any(k.startswith("ACCELERATE_") for k in got)
    alone = worker_env(caller, Topology(1, 0, 1, "127.0.0.1", 1), 0, cpu=True)
    assert alone["ACCELERATE_USE_CPU"] == "1" and "RANK" not in alone


def test_slurm_topology_reads_the_node_id_and_the_first_host(tmp_path: Path) -> None:
    # `scontrol show hostnames LIST` prints one host a line (SLURM's man page); a stand-in.
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho gpu03\necho gpu04\n")
    fake.chmod(0o755)
    variables = {
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NODELIST": "gpu[03-04]",
    }
    old = os.environ["PATH"]
    os.environ["PATH"] = variables["PATH"]
    try:
        topo = slurm_topology(variables, procs_per_node=4)
    finally:
        os.environ["PATH"] = old
    assert topo == Topology(2, 1, 4, "gpu03", port_of_job("4242"))
    assert 20000 <= topo.main_port < 40000
    with pytest.raises(ValueError, match="SLURM_NODEID"):
        slurm_topology({"SLURM_JOB_ID": "1"}, 4)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGURG], ids=["TERM", "URG"])
def test_a_stop_signal_reaches_every_worker_and_their_slow_checkpoints_finish(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The elastic agent of `accelerate launch` SIGKILLs workers 30 s after forwarding TERM
    (pytorch/pytorch#119856); this launcher waits for them, however long they take. URG is
    the SLURM profile's warning before the time limit (dspo/config/slurm_site.py)."""
    seconds = 3.0
    proc = subprocess.Popen(
        [*LAUNCH, "--procs-per-node", "2", "--module", "tests.launch_worker", "--"]
        + [str(tmp_path), str(seconds)],
        env=env(ACCELERATE_MIXED_PRECISION="fp16"),
    )
    ready = [tmp_path / f"rank-{r}.json" for r in (0, 1)]
    wait_for(lambda: all(p.exists() for p in ready), 60, "both workers to start")
    sent = time.monotonic()
    proc.send_signal(sig)  # to the launcher only
    assert proc.wait(timeout=60) == 1  # the workers' status: stopped, checkpoint written
    assert time.monotonic() - sent >= seconds
    assert all((tmp_path / f"saved-{r}").exists() for r in (0, 1))
    seen = [json.loads(p.read_text()) for p in ready]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    assert seen[0]["accelerate"] == []  # the caller's ACCELERATE_* defaults stay out


def test_tf32_switch_leaves_a_machine_without_cuda_as_it_is() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    try:
        in_effect = use_tf32(True)
        if torch.cuda.is_available():
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert torch.get_float32_matmul_precision() == "high"
            assert in_effect == (torch.cuda.get_device_capability()[0] >= 8)
            assert use_tf32(False) is False
            assert torch.get_float32_matmul_precision() == "highest"
        else:
            # CPU float32 matmuls keep their precision: the toy results stay comparable.
            assert in_effect is False
            after = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
            assert after == before
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])
        torch.backends.cudnn.allow_tf32 = True  # torch's default


# --- training through the launcher --------------------------------------------------------


def train_args(cfg: dict, cache_dir: Path, base: Path, root: Path) -> list[str]:
    return [
        "train", "--params", json.dumps(cfg), "--cache", str(cache_dir), "--base", str(base),
        "--out", str(root / "model"), "--run-dir", str(root / "run"),
    ]  # fmt: skip


def weights(root: Path) -> dict[str, torch.Tensor]:
    return UNet2DConditionModel.from_pretrained(root / "model", subfolder="unet").state_dict()


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = weights(a), weights(b)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=atol)


def record(root: Path) -> dict:
    return json.loads((root / "model/dspo_config.json").read_text())


def test_wall_clock_checkpoints(cache_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    # A minute's hundred-millionth: due at every step boundary, with no step-based ones.
    cfg = {**CONFIG, "checkpoint_every_minutes": 1e-8}
    summary = run(cfg, cache_dir, tiny_model, tmp_path)
    saved = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step-*"))
    assert saved == ["step-000002", "step-000003"]  # the newest 2 of steps 1-3; 4 is the model
    assert summary["tf32"] is False  # asked for (absent: on), but no such GPU here
    # Unset, only the step-based checkpoints are written (here none).
    run(CONFIG, cache_dir, tiny_model, tmp_path / "plain")
    assert not list((tmp_path / "plain/run/checkpoints").glob("step-*"))


def test_sigterm_under_the_launcher_checkpoints_and_the_rerun_matches(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Two CPU processes (gloo) under the launcher the train rule runs; SIGTERM to every
    process of the job, as SLURM's --signal and preemption send it; the resubmitted run's
    weights equal an uninterrupted run's."""
    cfg = {**CONFIG, "steps": 12}
    command = [*LAUNCH, "--procs-per-node", "2", "--cpu", "--"]
    straight = subprocess.run(
        command + train_args(cfg, cache_dir, tiny_model, tmp_path / "straight"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    root = tmp_path / "stopped"
    args = command + train_args(cfg, cache_dir, tiny_model, root)
    log = tmp_path / "stopped.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env(), stderr=out, start_new_session=True)
        metrics = root / "run/metrics.jsonl"
        wait_for(lambda: metrics.exists() and metrics.read_text().strip(), 300, "a step")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    err = log.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "SIGTERM received" in err
    (state,) = sorted((root / "run/checkpoints").glob("step-*/state.json"))
    stopped_at = json.loads(state.read_text())["step"]
    assert 1 <= stopped_at < cfg["steps"] and not (root / "model").exists()

    resumed = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert record(root)["resumed_from"] == stopped_at
    assert record(root)["processes"] == 2 and record(root)["tf32"] is False  # no CUDA here
    assert_same_weights(tmp_path / "straight", root, atol=1e-6)


def test_two_nodes_train_like_one_process(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Two launchers on this machine as node ranks 0 and 1 (gloo, one process each, sharing
    the run folder as nodes share a file system) against one process: the same effective
    batch gives the same weights."""
    run(CONFIG, cache_dir, tiny_model, tmp_path / "one")
    port = str(free_port())
    root = tmp_path / "two"
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = []
    for rank, log in enumerate(logs):
        with log.open("w") as err:  # the child keeps its own copy of the descriptor
            nodes.append(
                subprocess.Popen(
                    [*LAUNCH, "--nodes", "2", "--node-rank", str(rank), "--procs-per-node", "1"]
                    + ["--main-address", "127.0.0.1", "--main-port", port, "--cpu", "--"]
                    + train_args(CONFIG, cache_dir, tiny_model, root),
                    env=env(),
                    stderr=err,
                )
            )
    for node, log in zip(nodes, logs, strict=True):
        assert node.wait(timeout=600) == 0, log.read_text()[-3000:]
    two, one = record(root), record(tmp_path / "one")
    assert (two["processes"], two["accumulation"]) == (2, 1)
    assert (one["processes"], one["accumulation"]) == (1, 2)
    # Adam's normalised steps amplify float rounding of the gradient all-reduce
    # (tests/training/test_train.py: test_two_processes_train_like_one).
    assert_same_weights(tmp_path / "one", root, atol=1e-4)
