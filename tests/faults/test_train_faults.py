"""Faults the trainer must survive or report: it never silently returns a wrong model.

Stale resumes (base model, cache or code changed; a forced rerun), divergence (NaN in a cache
shard, a learning rate that explodes), shards overwritten in place, preemption signals and
damaged checkpoints. Each test compares weights, not summaries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from dspo.core.content import file_sha256, write_content_record
from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache
from dspo.families import build_pipeline
from dspo.training.guards import DivergenceError
from dspo.training.preference import step_rows
from tests.conftest import TINY_ARCHITECTURE, WORDS
from tests.conftest import edit_source as edit
from tests.training.test_train import BASE_CONFIG, DSPO, interrupted, run, unet_weights

SHARD = "latents-00000.safetensors"


def assert_same(a: Path, b: Path) -> None:
    first, second = unet_weights(a), unet_weights(b)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6)


def assert_differ(a: Path, b: Path) -> None:
    first, second = unet_weights(a), unet_weights(b)
    assert any(not torch.allclose(first[k], second[k], atol=1e-6) for k in first)


def base_model(path: Path, seed: int) -> Path:
    """A tiny base written as dspo writes models: files, then their content record."""
    shutil.rmtree(path, ignore_errors=True)
    build_pipeline(TINY_ARCHITECTURE, WORDS, seed=seed).save_pretrained(path)
    write_content_record(path)
    return path


def make_cache(pairs: pd.DataFrame, base: Path, path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    build_cache(pairs, str(base), path, resolution=16, dtype="float32")
    return path


@pytest.fixture(scope="module")
def world(tiny_pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    base = base_model(root / "base", seed=0)
    return {"base": base, "cache": make_cache(tiny_pairs, base, root / "cache")}


# --- Resume only the same run ------------------------------------------------------------


def test_rebuilt_base_model_at_the_same_path_trains_afresh(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base = base_model(tmp_path / "base", seed=0)
    interrupted(DSPO, world["cache"], base, tmp_path / "job", monkeypatch, step=3)
    assert (tmp_path / "job/run/checkpoints/step-000002").is_dir()
    base_model(base, seed=1)  # rebuilt in place: same path, other weights
    summary = run(DSPO, world["cache"], base, tmp_path / "job")
    assert summary["resumed_from"] == 0
    assert "base model's contents" in capsys.readouterr().out
    run(DSPO, world["cache"], base_model(tmp_path / "fresh", seed=1), tmp_path / "clean")
    assert_same(tmp_path / "clean/model", tmp_path / "job/model")


def test_rebuilt_cache_trains_afresh(
    world: dict, tiny_pairs: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
) -> None:
    cache = make_cache(tiny_pairs, world["base"], tmp_path / "cache")
    interrupted(DSPO, cache, world["base"], tmp_path / "job", monkeypatch, step=3)
    # Other pairs (preferred and rejected swapped) in the same folder.
    swapped = tiny_pairs.assign(jpg_w=tiny_pairs["jpg_l"], jpg_l=tiny_pairs["jpg_w"])
    make_cache(swapped, world["base"], cache)
    assert run(DSPO, cache, world["base"], tmp_path / "job")["resumed_from"] == 0
    assert "cache's contents" in capsys.readouterr().out
    other = make_cache(swapped, world["base"], tmp_path / "other")
    run(DSPO, other, world["base"], tmp_path / "clean")
    assert_same(tmp_path / "clean/model", tmp_path / "job/model")
    run(DSPO, world["cache"], world["base"], tmp_path / "old")
    assert_differ(tmp_path / "old/model", tmp_path / "job/model")


def test_code_edits_outside_training_resume_and_training_edits_move_aside(
    world: dict, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    interrupted(DSPO, world["cache"], world["base"], tmp_path, monkeypatch, step=3)
    edit(package, "evaluation/tables.py")  # a git pull that touches evaluation only
    assert run(DSPO, world["cache"], world["base"], tmp_path)["resumed_from"] == 2
    shutil.rmtree(tmp_path / "model")
    (tmp_path / "run" / "finished.json").unlink()
    # An edited objective: the run starts afresh, its checkpoints kept aside, not deleted.
    edit(package, "objectives/losses.py")
    capsys.readouterr()
    assert run(DSPO, world["cache"], world["base"], tmp_path)["resumed_from"] == 0
    out = capsys.readouterr().out
    assert "changed since it was written: training code (dspo/objectives/losses.py)" in out
    (stale,) = (tmp_path / "run").glob("checkpoints.stale-*")
    assert (stale / "step-000002" / "state.json").is_file() and f"to {stale}" in out


def test_the_setting_resumes_across_an_objective_edit(
    world: dict, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cfg = {**DSPO, "resume_across_code_change": True}
    interrupted(cfg, world["cache"], world["base"], tmp_path, monkeypatch, step=3)
    edit(package, "objectives/losses.py")
    assert run(cfg, world["cache"], world["base"], tmp_path)["resumed_from"] == 2
    out = capsys.readouterr().out
    assert "across a code change (training code (dspo/objectives/losses.py))" in out
    assert not list((tmp_path / "run").glob("checkpoints.stale-*"))


def test_forced_rerun_starts_from_step_zero_keeping_the_old_checkpoints(
    world: dict, tmp_path: Path, capsys
) -> None:
    run(DSPO, world["cache"], world["base"], tmp_path)
    # The run finished; started again unchanged (Snakemake's --forcerun removes the model
    # folder only), it trains from step 0 rather than resume its own last checkpoint.
    assert (tmp_path / "run/checkpoints/step-000002").is_dir()
    shutil.rmtree(tmp_path / "model")
    assert run(DSPO, world["cache"], world["base"], tmp_path)["resumed_from"] == 0
    assert "rerunning from step 0" in capsys.readouterr().out
    assert list((tmp_path / "run").glob("checkpoints.stale-*/step-000002/state.json"))


# --- Divergence stops ----------------------------------------------------------------------


def poisoned_cache(source: Path, dest: Path, row: int) -> Path:
    """A copy of the cache with a NaN latent in ``row``, written as a valid cache."""
    shutil.copytree(source, dest)
    tensors = load_file(str(dest / SHARD))
    tensors["latents_w"][row] = float("nan")
    save_file(tensors, str(dest / SHARD))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(dest / SHARD)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_nan_in_a_batch_stops_training_and_keeps_the_last_good_checkpoint(
    world: dict, tmp_path: Path
) -> None:
    # Step 3's first pair gets a NaN latent; steps 1 and 2 draw other rows (one epoch).
    bad_row = int(step_rows(24, 4, BASE_CONFIG["seed"], 2)[0])
    cache = poisoned_cache(world["cache"], tmp_path / "cache", bad_row)
    with pytest.raises(DivergenceError, match=r"step 3: loss is nan .*step-000002"):
        run(DSPO, cache, world["base"], tmp_path / "job")
    assert not (tmp_path / "job/model").exists()
    kept = tmp_path / "job/run/checkpoints/step-000002"
    weights = load_file(str(kept / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    # Skipping allowed: the bad step is counted, the others train, the model is finite and
    # differs from a run that never saw the NaN only by that one step.
    summary = run({**DSPO, "skip_nonfinite": 1}, cache, world["base"], tmp_path / "skip")
    assert summary["skipped_steps"] == 1
    trained = unet_weights(tmp_path / "skip/model")
    assert all(torch.isfinite(t).all() for t in trained.values())
    run(DSPO, world["cache"], world["base"], tmp_path / "clean")
    assert_differ(tmp_path / "clean/model", tmp_path / "skip/model")


def test_exploding_learning_rate_writes_no_model(world: dict, tmp_path: Path) -> None:
    cfg = {**DSPO, "lr": 1e3, "max_grad_norm": None, "steps": 8, "checkpoint_every": 0}
    with pytest.raises(DivergenceError, match=r"step \d+: \w+ is (nan|inf)"):
        run(cfg, world["cache"], world["base"], tmp_path)
    assert not (tmp_path / "model").exists()


def test_shard_overwritten_in_place_is_named(world: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    size = (cache / SHARD).stat().st_size
    with open(cache / SHARD, "r+b") as handle:  # same size, other bytes
        handle.seek(size - 64)
        handle.write(b"\xff" * 64)
    assert (cache / SHARD).stat().st_size == size
    with pytest.raises(ValueError, match=f"{SHARD} was changed after the cache was built"):
        load_cache(cache)
    with pytest.raises(ValueError, match=SHARD):
        run(DSPO, cache, world["base"], tmp_path / "job")
    assert not (tmp_path / "job/model").exists()


# --- Damaged checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def six_steps(world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("six")
    run({**DSPO, "steps": 6}, world["cache"], world["base"], root)
    return root


@pytest.mark.parametrize("damage", ["empty state.json", "truncated weights"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    damage: str, world: dict, six_steps: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = {**DSPO, "steps": 6}
    interrupted(cfg, world["cache"], world["base"], tmp_path, monkeypatch, step=5)
    latest = tmp_path / "run/checkpoints/step-000004"
    assert (tmp_path / "run/checkpoints/step-000002/state.json").exists()
    if damage == "empty state.json":
        damaged = latest / "state.json"
        damaged.write_text("")
    else:
        damaged = latest / "model.safetensors"
        os.truncate(damaged, damaged.stat().st_size // 2)
    with pytest.warns(UserWarning, match=f"damaged checkpoint: {damaged}"):
        summary = run(cfg, world["cache"], world["base"], tmp_path)
    assert summary["resumed_from"] == 2
    assert_same(six_steps / "model", tmp_path / "model")
    # Kept aside as it was, not deleted.
    (kept,) = (tmp_path / "run").glob(f"checkpoints.stale-*/{latest.name}")
    assert (kept / damaged.relative_to(latest)).exists()


# --- Preemption saves -----------------------------------------------------------------------

SIGNAL_STEPS = 60


def cli(cfg: dict, cache: Path, base: Path, root: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "dspo.cli.commands", "train", "--params", json.dumps(cfg),
        "--cache", str(cache), "--base", str(base), "--out", str(root / "model"),
        "--run-dir", str(root / "run"), "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


SIGNAL_CONFIG = {
    **BASE_CONFIG,
    **DSPO,
    "steps": SIGNAL_STEPS,
    "checkpoint_every": 0,  # the only checkpoint is the one the signal asks for
    "log_every": 1,
}


@pytest.fixture(scope="module")
def uninterrupted(world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = cli(SIGNAL_CONFIG, world["cache"], world["base"], root)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-2000:]
    return root


def test_signal_checkpoints_at_the_next_step_and_the_rerun_matches(
    world: dict, uninterrupted: Path, tmp_path: Path
) -> None:
    """SIGTERM, as SLURM sends it at the time limit or on preemption, to a training process.
    SIGURG (the profile's warning before the limit), SIGUSR1 and SIGINT go through the same
    handler (tests/training/test_guards.py)."""
    sig = signal.SIGTERM
    job = cli(SIGNAL_CONFIG, world["cache"], world["base"], tmp_path)
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()):
        assert job.poll() is None and time.time() < deadline, "training ended before a step"
        time.sleep(0.02)
    job.send_signal(sig)
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    assert f"{sig.name} received" in err
    (saved,) = (tmp_path / "run/checkpoints").glob("step-*")
    stopped_at = int(saved.name.split("-")[1])
    assert 0 < stopped_at < SIGNAL_STEPS and not (tmp_path / "model").exists()

    again = cli(SIGNAL_CONFIG, world["cache"], world["base"], tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert json.loads(out[out.index("{") :])["resumed_from"] == stopped_at
    assert_same(uninterrupted / "model", tmp_path / "model")
