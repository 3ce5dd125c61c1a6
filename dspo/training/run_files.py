"""A training run's files (the run is `dspo.training.train.TrainingRun`): resuming from its
newest checkpoint, with its metrics, validation strips, trackers and kept models restarted from
that step (:func:`resume_run`); writing checkpoints (:func:`write_checkpoint`); keeping the
models of ``training.evaluate_steps`` (:func:`keep_step_model`); and writing the final model,
its record and card (:func:`finish_run`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import broadcast_object_list

from dspo.core.content import combined_key
from dspo.core.files import folder_bytes, space_for
from dspo.training import checkpoints as ckpt
from dspo.training.fingerprint import fingerprint_details
from dspo.training.guards import check_weights_finite
from dspo.training.metrics import restart_metrics
from dspo.training.policy import MODEL_CONFIG, write_model_folder
from dspo.training.run_lock import RunLock, run_record, write_model
from dspo.training.step_models import keep_resumed, write_step
from dspo.training.tracking import new_run_id, start_trackers
from dspo.training.validation import ValidationSettings, Validator, restart_validation

if TYPE_CHECKING:
    from dspo.training.train import TrainingRun


def resume_run(run: TrainingRun, prompts: Sequence[str] = ()) -> None:
    """Continue ``run`` from the newest intact checkpoint of this very run, if any; restart
    the metrics, validation strips (of the validation ``prompts``) and trackers from that
    step."""
    accelerator, settings = run.accelerator, run.settings
    found = None
    if accelerator.is_main_process:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.forget_finished_run(run.run_dir, run.parts, settings.steps, accelerator.print)
        found = ckpt.resumable_checkpoint(
            run.run_dir / "checkpoints",
            run.parts,
            settings.steps,
            accelerator.print,
            settings=settings,
            across_code_change=settings.resume_across_code_change,
        )
    if accelerator.num_processes > 1:
        found = broadcast_object_list([found])[0]
    if found is not None:
        folder, state = found
        accelerator.load_state(str(folder))
        accelerator.print(f"resuming from {folder} (step {state['step']})")
        run.start_step, run.skipped = state["step"], state.get("skipped", 0)
        run.last_checkpoint = folder
    # The tracker run continues across resumes: its id is kept with the checkpoints.
    run.tracker_run_id = (found[1].get("tracker_run_id") if found else None) or new_run_id()
    validation = ValidationSettings.from_config(
        settings.validate_every,
        settings.validation or {},
        prompts,
        run.cache.manifest["resolution"],
    )
    if accelerator.is_main_process:
        restart_metrics(run.run_dir, run.start_step)
        restart_validation(run.run_dir, run.start_step, validation)
        # Kept step models written under the resumed checkpoint's fingerprint stay too
        # (resumed across a code change).
        trajectory = {combined_key(**run.parts), *([found[1]["fingerprint"]] if found else [])}
        keep_resumed(run.run_dir, run.start_step, trajectory, accelerator.print)
        if validation is not None:
            run.validator = Validator(run.base_model, run.policy(), validation, accelerator.device)
    if settings.report_to:
        start_trackers(
            accelerator, settings.resolved, settings.name, run.start_step, run.tracker_run_id
        )
    run.model.train()
    run.saved_at = time.monotonic()


def _data(run: TrainingRun) -> str:
    """What the model card says the model learned from."""
    return f"{len(run.cache)} preference pairs (`{run.settings.data}`, cache {run.cache_dir})"


def keep_step_model(run: TrainingRun, done: int) -> None:
    """Keep the model of step ``done`` when ``training.evaluate_steps`` lists it (main
    process; the last step's is the run's model)."""
    settings = run.settings
    if done not in settings.evaluate_steps or done == settings.steps:
        return
    if run.accelerator.is_main_process:
        policy = run.policy()
        check_weights_finite(policy.named_parameters(), f"the model of step {done}")
        record = {
            "config": dict(settings.resolved),
            "method": settings.name,
            "step": done,
            "steps": settings.steps,
            "fingerprint": combined_key(**run.parts),
            "tf32": run.tf32,
        }
        card = {**settings.resolved, "name": f"{settings.name}@{done}", "steps": done}
        write = partial(
            write_model_folder, policy, run.family, settings, run.base_model, record, card
        )
        kept = write_step(run.run_dir, done, partial(write, _data(run)))
        run.accelerator.print(f"kept the model of step {done} in {kept}")


def write_checkpoint(run: TrainingRun, done: int) -> Path:
    """Write the checkpoint of step ``done`` (its weights checked finite first, room made for
    it on disk) and return its folder."""
    check_weights_finite(run.policy().named_parameters(), f"checkpoint of step {done}")
    folder = run.run_dir / "checkpoints"
    # Every checkpoint of a run is as large as the last one.
    needed = folder_bytes(run.last_checkpoint) if run.last_checkpoint else None
    start = time.monotonic()
    with space_for(folder / f"step-{done:06d}", needed):
        saved = ckpt.save_checkpoint(
            run.accelerator,
            folder,
            done,
            run.settings.checkpoints_kept,
            run.parts,
            {
                "skipped": run.skipped,
                "details": fingerprint_details(run.settings),
                "tracker_run_id": run.tracker_run_id,
            },
        )
    # What SLURM's signal lead must cover: the rest of a step, then this (docs/cluster.md).
    run.accelerator.print(
        f"checkpoint {saved.name} written in {time.monotonic() - start:.1f} s; "
        f"{start - run.saved_at:.1f} s of training since the last one or the start"
    )
    run.saved_at = time.monotonic()
    return saved


def finish_run(run: TrainingRun, out_dir: Path, lock: RunLock | None) -> dict[str, Any]:
    """Write the model, its record and card (main process, which holds ``lock``, if this
    run still owns its folder: :func:`dspo.training.run_lock.write_model`); drop the
    checkpoints."""
    accelerator, settings = run.accelerator, run.settings
    accelerator.wait_for_everyone()
    summary = {
        "method": settings.name,
        "objective": run.objective.name,
        "family": run.cache.family,
        "steps": settings.steps,
        "pairs_per_step": settings.pairs_per_step,
        "accumulation": run.accumulation,
        "processes": run.processes,
        "mixed_precision": accelerator.mixed_precision,
        "tf32": run.tf32,
        "resumed_from": run.start_step,
        "skipped_steps": run.skipped,
        "seconds": round(time.time() - run.started, 1),
    }
    if accelerator.is_main_process:
        final = run.policy()
        check_weights_finite(final.named_parameters(), f"the model for {out_dir}")
        record = {"config": dict(settings.resolved), **summary, **run_record(lock)}
        data = _data(run)
        card = {"name": settings.name, **settings.resolved}
        write = partial(write_model_folder, final, run.family, settings, run.base_model)
        write_model(out_dir, lock, MODEL_CONFIG, partial(write, record, card, data))
        ckpt.mark_finished(run.run_dir, run.parts, settings.steps, out_dir)
        if not settings.keep_checkpoints:
            # The model is saved and its weights checked: the checkpoints (weights and
            # optimiser state, several times the model's size) have served their purpose.
            shutil.rmtree(run.run_dir / "checkpoints", ignore_errors=True)
    accelerator.end_training()
    return summary
