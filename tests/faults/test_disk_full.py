"""A disk that fills while training writes a checkpoint or the model: the error names the
path and the space, what was there before stays as it was, and the same run after freeing
space ends with the weights of a run that never ran out of space."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch

from dspo.core.content import file_sha256
from dspo.core.files import DiskFull, human_bytes
from dspo.training.checkpoints import STATE
from tests.faults.test_train_faults import assert_same, base_model, make_cache
from tests.training.test_train import DSPO, run

CONFIG = {**DSPO, "steps": 6}  # checkpoints at steps 2 and 4 (BASE_CONFIG), all kept
FREE = 4096  # bytes the full disk reports free


@pytest.fixture(scope="module")
def world(tiny_pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("disk_full")
    base = base_model(root / "base", seed=0)
    cache = make_cache(tiny_pairs, base, root / "cache")
    run(CONFIG, cache, base, root / "clean")
    return {"base": base, "cache": cache, "clean": root / "clean"}


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in folder.rglob("*") if p.is_file()}


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(".")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=FREE))


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if ".step-000004.tmp" in str(f):
            Path(f).write_bytes(b"\0" * 100)  # part of it reached the disk
            # What torch's zip writer raises when the disk is full: no errno, no path.
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                "writing file data/0: file write failed"
            )
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save)
        full_disk(patch)
        with pytest.raises(DiskFull) as raised:
            run(CONFIG, world["cache"], world["base"], tmp_path)
    message = str(raised.value)
    checkpoints = tmp_path / "run/checkpoints"
    assert f"No space left on device: writing {checkpoints / 'step-000004'} failed" in message
    needed = sum(p.stat().st_size for p in (checkpoints / "step-000002").rglob("*"))
    assert f"it needs {human_bytes(needed)}, and {human_bytes(FREE)} were free" in message
    assert [p.name for p in checkpoints.glob("step-*")] == ["step-000002"]
    assert (checkpoints / "step-000002" / STATE).is_file() and not (tmp_path / "model").exists()

    # Space freed: the same run resumes the checkpoint the full disk left intact.
    assert run(CONFIG, world["cache"], world["base"], tmp_path)["resumed_from"] == 2
    assert_same(world["clean"] / "model", tmp_path / "model")


def test_a_full_disk_while_saving_the_model_keeps_the_model_there(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    shutil.copytree(world["clean"] / "model", out)  # a model from an earlier run
    before = hashes(out)
    real_save = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", save_file)
        full_disk(patch)
        with pytest.raises(DiskFull, match=f"No space left on device: writing {out} failed"):
            run(CONFIG, world["cache"], world["base"], tmp_path)
    assert safetensors.torch.save_file is real_save
    assert hashes(out) == before  # the model that was there, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]  # no partial left
    steps = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step-*"))
    assert steps == ["step-000002", "step-000004"]

    assert run(CONFIG, world["cache"], world["base"], tmp_path)["resumed_from"] == 4
    assert_same(world["clean"] / "model", out)
