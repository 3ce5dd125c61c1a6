"""The models a run keeps at ``training.evaluate_steps``, for choosing the step afterwards.

When training passes one of those steps (short of the last, which is the run's model), the
main process writes the policy as it is then to ``<run_dir>/steps/step-NNNNNN/``: the same
files as the final model (a diffusers folder or a LoRA file, its record ``dspo_config.json``
and its model card), written beside that name and renamed into place, so a folder that
exists is whole. The record holds the step and the run's fingerprint
(:mod:`dspo.training.checkpoints`).

They outlive the run (the end of training removes checkpoints only). A run that resumes
keeps those of the trajectory it continues: at most its start step, and written under the
fingerprint of the checkpoint it resumed or its own. Others (a run started afresh, a forced
rerun, a model kept past the checkpoint resumed) move aside to ``steps.stale-<time>/``;
nothing is deleted.

The workflow exposes a kept model as ``results/models/<model>@<step>`` (:func:`link_step`,
hard links where the file system allows), sampled and scored like any other model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from dspo.training.checkpoints import move_aside
from dspo.training.policy import MODEL_CONFIG as RECORD

STEPS = "steps"


def step_name(model: str, step: int) -> str:
    """The row and folder name of ``model``'s kept step: ``dspo@100``, ``dspo-r1@100``."""
    return f"{model}@{step}"


def step_folder(run_dir: Path, step: int) -> Path:
    """Where the run in ``run_dir`` keeps its model of ``step``."""
    return Path(run_dir) / STEPS / f"step-{step:06d}"


def _record(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_step(run_dir: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Have ``write`` fill a folder beside the step's folder, then rename it into place."""
    final = step_folder(run_dir, step)
    part = final.with_name(f".{final.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(part)
        if final.exists():
            move_aside([final], final.parent)
        os.replace(part, final)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return final


def keep_resumed(
    run_dir: Path, start_step: int, fingerprints: Collection[str], log: Callable[[str], None]
) -> list[int]:
    """Keep the step models of the trajectory a run resumes at ``start_step``; move the rest
    aside. ``fingerprints``: those a kept model may have been written under. Returns the
    steps kept."""
    folder = Path(run_dir) / STEPS
    kept, aside = [], []
    for path in sorted(folder.glob("step-*")):
        record = _record(path)
        step = record.get("step")
        if (
            isinstance(step, int)
            and step <= start_step
            and record.get("fingerprint") in fingerprints
        ):
            kept.append(step)
        else:
            aside.append(path)
    for part in folder.glob(".step-*.part"):
        shutil.rmtree(part, ignore_errors=True)  # cut short while being written
    if aside:
        stale = move_aside(aside, folder)
        log(f"moved {len(aside)} kept step model(s) of another trajectory to {stale}")
    return kept


def link_step(run_dir: Path, step: int, out: Path) -> Path:
    """Put the run's model of ``step`` at ``out`` (hard links, else copies), whole or not at
    all; a missing or unfinished one is an error naming the folder."""
    source = step_folder(run_dir, step)
    if _record(source).get("step") != step:
        raise FileNotFoundError(
            f"{source}: no model kept at step {step} (training.evaluate_steps must list it "
            "before the run passes that step; the train job rewrites it when retrained)"
        )
    out = Path(out)
    part = out.with_name(f".{out.name}.part")
    shutil.rmtree(part, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        shutil.copytree(source, part, copy_function=link)
        if out.exists():
            shutil.rmtree(out)
        os.replace(part, out)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return out
