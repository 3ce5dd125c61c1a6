"""Training checkpoints: which run they belong to, written atomically, checked when resumed.

A checkpoint is resumed only by the run that wrote it. Its fingerprint covers what shapes the
trained weights, by part: the trajectory-relevant config, the *contents* of what the run read
(the base model's content key, see :mod:`dspo.core.content`; the cache's manifest, which holds
every shard's SHA-256), and the code the training step runs: the package version and the
source of ``dspo.training.train`` and every ``dspo`` module it imports (:data:`TRAINING_ENTRY`; not
evaluation, rewards, reporting, the CLI or tooling). A rebuilt base model at the same path, a
rebuilt cache or an edited objective therefore start afresh; an edited evaluation module does
not. ``training.resume_across_code_change`` resumes when only the code differs.

Nothing is deleted for not matching: checkpoints of another run (or past this run's steps)
move aside to ``checkpoints.stale-<time>/`` beside ``checkpoints/``, and the log says what
differs: which config keys, the base model's or the cache's contents, which source files or
the version (each checkpoint records its config, version and source files' hashes).

A checkpoint folder is written under a temporary name, its ``state.json`` (step, fingerprint,
and the size and SHA-256 of every file) last, then renamed into place. When resuming, the
newest checkpoint whose files still match their record is used; a damaged one (an empty
``state.json``, a truncated weights file) is reported by name, moved aside, and the previous
one is used.

A finished run leaves ``finished.json`` in its run folder. Started again with the same
fingerprint and step count, the run is a forced rerun (Snakemake removed the model, not the
run folder): it starts from step 0, its kept checkpoints moved aside.

Only trainable weights are checkpointed (:func:`trainable_weights_only`): a LoRA run's frozen
base, which is also its reference, is rebuilt from the base model like the full fine-tuning
reference copy, so a LoRA checkpoint holds the adapters and their optimiser state only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import Accelerator

from dspo.core.content import combined_key, file_sha256
from dspo.core.files import write_json_atomic
from dspo.training.fingerprint import describe_change, fingerprint_details, only_code_differs

if TYPE_CHECKING:
    from dspo.training.settings import TrainSettings

STATE = "state.json"
FINISHED = "finished.json"
# Beside ``checkpoints/``: where checkpoints another run wrote are moved, with the time.
STALE = "stale"


def move_aside(folders: list[Path], checkpoints: Path) -> Path:
    """Move checkpoint folders into ``checkpoints.stale-<time>/`` beside ``checkpoints``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stale = checkpoints.with_name(f"{checkpoints.name}.{STALE}-{stamp}")
    n = 1
    while stale.exists():
        n += 1
        stale = checkpoints.with_name(f"{checkpoints.name}.{STALE}-{stamp}-{n}")
    stale.mkdir(parents=True)
    for folder in folders:
        os.replace(folder, stale / folder.name)
    return stale


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE
    }


def save_checkpoint(
    accelerator: Accelerator,
    checkpoints: Path,
    step: int,
    kept: int,
    parts: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the training state of ``step`` atomically; keep the newest ``kept`` checkpoints."""
    final = checkpoints / f"step-{step:06d}"
    tmp = checkpoints / f".step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "step": step,
            "fingerprint": combined_key(**parts),
            "parts": dict(parts),
            **(extra or {}),
            "files": _files(tmp),
        }
        write_json_atomic(state, tmp / STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted(p.parent for p in checkpoints.glob(f"step-*/{STATE}"))
        for old in complete[:-kept]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _damage(folder: Path) -> tuple[str, dict[str, Any] | None]:
    """Why a checkpoint cannot be used ('' when it can), and its state."""
    path = folder / STATE
    try:
        state = json.loads(path.read_text())
        step, files = int(state["step"]), state["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is unreadable ({type(err).__name__}: {err})", None
    if folder.name != f"step-{step:06d}":
        return f"{path} records step {step}", None
    for name, record in files.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing", None
        if file.stat().st_size != record["bytes"]:
            return f"{file} is {file.stat().st_size} bytes, {record['bytes']} were written", None
        if file_sha256(file) != record["sha256"]:
            return f"{file} was changed after it was written", None
    return "", state


def _state_of(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def resumable_checkpoint(
    checkpoints: Path,
    parts: Mapping[str, str],
    steps: int,
    log: Callable[[str], None],
    *,
    settings: TrainSettings | None = None,
    across_code_change: bool = False,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint this run may resume (main process), or None.

    It may resume a checkpoint of the same fingerprint, and with ``across_code_change`` one
    whose code part alone differs. Checkpoints it may not resume (another config, base model,
    cache or code; past ``steps``) are moved aside (:func:`move_aside`), the log saying what
    differs (``settings``: this run's, to name the config keys). A damaged checkpoint moves
    aside too, with a warning naming the file, and the next older one is tried.
    """
    fingerprint = combined_key(**parts)
    details = fingerprint_details(settings)

    def may_resume(state: Mapping[str, Any]) -> bool:
        if state.get("fingerprint") == fingerprint:
            return True
        return across_code_change and only_code_differs(parts, state)

    found, aside = None, []
    for folder in sorted(checkpoints.glob("step-*"), reverse=True):
        if not folder.is_dir():
            continue
        if found is not None:
            # Older checkpoints this run may resume stay (kept for fallback).
            if not may_resume(_state_of(folder)):
                aside.append(folder)
            continue
        why, state = _damage(folder)
        if why:
            if (folder / STATE).exists():
                warnings.warn(
                    f"damaged checkpoint: {why}; falling back to the previous one", stacklevel=2
                )
            aside.append(folder)
        elif not may_resume(state):
            what = describe_change(parts, details, state)
            log(f"not resuming {folder}: changed since it was written: {what}")
            aside.append(folder)
        elif state["step"] > steps:
            log(f"not resuming {folder}: step {state['step']} is past this run's {steps} steps")
            aside.append(folder)
        else:
            if state["fingerprint"] != fingerprint:
                what = describe_change(parts, details, state)
                log(
                    f"resuming {folder} across a code change ({what}): "
                    "training.resume_across_code_change is on"
                )
            found = (folder, state)
    if aside:
        stale = move_aside(aside, checkpoints)
        log(f"moved {len(aside)} checkpoint(s) to {stale}" + ("" if found else "; starting afresh"))
    for tmp in checkpoints.glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)  # cut short while being written
    return found


def forget_finished_run(
    run_dir: Path, parts: Mapping[str, str], steps: int, log: Callable[[str], None]
) -> bool:
    """Whether this start repeats a finished run (a forced rerun); removes the finished mark.

    When it does, the run's kept checkpoints are moved aside, so training starts from step 0.
    """
    path = run_dir / FINISHED
    if not path.exists():
        return False
    try:
        finished = json.loads(path.read_text())
    except ValueError:
        finished = {}
    path.unlink()
    again = finished.get("fingerprint") == combined_key(**parts) and finished.get("steps") == steps
    if again:
        kept = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
        moved = f"; its checkpoints moved to {move_aside(kept, run_dir / 'checkpoints')}"
        log(
            f"{run_dir} holds a finished run of this very config: rerunning from step 0"
            + (moved if kept else "")
        )
    return again


def mark_finished(run_dir: Path, parts: Mapping[str, str], steps: int, out_dir: Path) -> None:
    """Record that the run finished and wrote ``out_dir`` (see :func:`forget_finished_run`)."""
    record = {"fingerprint": combined_key(**parts), "steps": steps, "out": str(out_dir)}
    write_json_atomic(record, run_dir / FINISHED)


def trainable_weights_only(accelerator: Accelerator) -> None:
    """Checkpoint only the parameters that train; load them back checking every key.

    Accelerate's save hook gets each model's state dict before writing: the frozen entries
    are dropped there. Its load hook loads the file itself (accelerate would load strictly
    and miss the dropped keys), refusing a file whose keys are not exactly the trainable
    ones, and hands accelerate no model to load.
    """
    from accelerate.utils import SAFE_MODEL_NAME
    from safetensors.torch import load_file

    def trainable_names(model) -> set[str]:
        return {name for name, p in model.named_parameters() if p.requires_grad}

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for model, state in zip(models, weights, strict=True):
            keep = trainable_names(model)
            for key in [k for k in state if k not in keep]:
                del state[key]

    def load_hook(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):
            name = SAFE_MODEL_NAME if i == 0 else f"{SAFE_MODEL_NAME}_{i}"  # accelerate's names
            path = Path(input_dir) / f"{name}.safetensors"
            # safetensors takes "cpu" but not "cpu:0", the device of a multi-process CPU run.
            device = accelerator.device
            state = load_file(path, device="cpu" if device.type == "cpu" else str(device))
            expected = trainable_names(model)
            if set(state) != expected:
                missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
                raise ValueError(
                    f"{path}: not this run's trainable weights "
                    f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unexpected, "
                    f"e.g. {extra[:1]})"
                )
            model.load_state_dict(state, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
