"""Kept step models: written whole, kept across a resume of their own trajectory only, put
where the workflow samples them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspo.training.step_models import keep_resumed, link_step, step_folder, write_step


def fill(step: int, fingerprint: str):
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(bytes([step]) * 8)
        record = {"step": step, "fingerprint": fingerprint}
        (folder / "dspo_config.json").write_text(json.dumps(record))

    return write


def test_a_step_model_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    write_step(tmp_path, 5, fill(5, "a"))
    assert (step_folder(tmp_path, 5) / "weights.bin").read_bytes() == bytes([5]) * 8

    def fails(folder: Path) -> None:
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_step(tmp_path, 6, fails)
    assert not step_folder(tmp_path, 6).exists()
    assert [p.name for p in (tmp_path / "steps").iterdir()] == ["step-000005"]


def test_a_resume_keeps_only_its_own_trajectory_and_moves_the_rest_aside(tmp_path: Path) -> None:
    for step, fingerprint in ((10, "old"), (20, "new"), (30, "new"), (40, "other")):
        write_step(tmp_path, step, fill(step, fingerprint))
    logged: list[str] = []
    # Resumed at 20 from a checkpoint written under "old" (a resume across a code change).
    kept = keep_resumed(tmp_path, 20, {"new", "old"}, logged.append)
    assert kept == [10, 20]
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == [
        "step-000010",
        "step-000020",
    ]
    (stale,) = tmp_path.glob("steps.stale-*")
    assert sorted(p.name for p in stale.iterdir()) == ["step-000030", "step-000040"]
    assert "moved 2 kept step model(s)" in logged[0]
    # A run started afresh (step 0) keeps none; nothing is deleted.
    assert keep_resumed(tmp_path, 0, {"new"}, logged.append) == []
    moved = sorted(p.name for s in tmp_path.glob("steps.stale-*") for p in s.iterdir())
    assert moved == ["step-000010", "step-000020", "step-000030", "step-000040"]


def test_a_kept_step_is_linked_where_the_workflow_reads_it(tmp_path: Path) -> None:
    write_step(tmp_path / "run", 2, fill(2, "a"))
    out = link_step(tmp_path / "run", 2, tmp_path / "models/dspo@2")
    assert (out / "weights.bin").read_bytes() == bytes([2]) * 8
    assert json.loads((out / "dspo_config.json").read_text())["step"] == 2
    with pytest.raises(FileNotFoundError, match="no model kept at step 3"):
        link_step(tmp_path / "run", 3, tmp_path / "models/dspo@3")
    assert not (tmp_path / "models/dspo@3").exists()


def test_the_step_model_command_links_a_kept_step(tmp_path: Path) -> None:
    """`dspo step-model` as the step_model rule calls it (rules/model.smk)."""
    from dspo.cli.commands import main

    write_step(tmp_path / "run", 2, fill(2, "a"))
    out = tmp_path / "models/dspo@2"
    main(["step-model", "--run-dir", str(tmp_path / "run"), "--at-step", "2", "--out", str(out)])
    assert json.loads((out / "dspo_config.json").read_text())["step"] == 2
