"""The preference fine-tuning loop shared by every method.

One loop for all objectives: each step draws B pairs from the latent cache, one timestep
and one noise tensor per pair (shared by its two images, which is what makes their errors
comparable), runs the policy (and the frozen reference when the objective needs one) on the
2B noisy latents, and hands the predictions to the objective from `dspo.objectives`.
Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a job
that is killed and rerun resumes from its last checkpoint and continues exactly where it left
off, and the same effective batch trains alike on one process or several (the data and loss
of a step are in `dspo.training.preference`).

It never returns a wrong model silently: checkpoints are resumed only by the run that wrote
them (`dspo.training.checkpoints`), non-finite numbers stop training and SIGTERM/SIGUSR1/SIGINT save
a checkpoint before exiting (`dspo.training.guards`), and the learning rate follows the step, once
per optimiser step, however many processes train.

What it shows while it runs: metrics every ``log_every`` steps (`dspo.training.metrics`),
validation images of fixed prompts (and the first of a prompt set's) every ``validate_every``
steps (`dspo.training.validation`, which leaves the trajectory untouched), both also in the
tracker (`dspo.training.tracking`). The models of ``training.evaluate_steps`` are kept for
choosing the step later (`dspo.training.step_models`).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from dspo.core.content import combined_key
from dspo.core.files import folder_bytes, space_for
from dspo.data.cache import PairCache, load_cache
from dspo.objectives import get_objective, objective_kwargs
from dspo.training import checkpoints as ckpt
from dspo.training.fingerprint import fingerprint_details, fingerprint_parts
from dspo.training.guards import (
    DivergenceError,
    Preempted,
    StopSignals,
    check_weights_finite,
    first_nonfinite,
)
from dspo.training.job_watch import JobWatch
from dspo.training.metrics import append_metrics, mean_over, restart_metrics
from dspo.training.optimisation import make_optimizer, resolve_mixed_precision, set_learning_rate
from dspo.training.policy import MODEL_CONFIG, build_model, use_tf32, write_model_folder
from dspo.training.preference import PreferenceModel, micro_batch, micro_batch_start, step_rows
from dspo.training.reference import PrecomputedReference, reference_parts
from dspo.training.run_lock import RunLock, held, run_record, write_model
from dspo.training.settings import TrainSettings
from dspo.training.step_models import keep_resumed, write_step
from dspo.training.tracking import log_images, new_run_id, start_trackers
from dspo.training.validation import (
    ValidationSettings,
    Validator,
    is_due,
    restart_validation,
    save_strip,
    validation_prompts,
)


def accumulation_steps(effective_pairs: int, local_pairs: int, processes: int) -> int:
    """Micro-steps per optimiser step so that processes x local batch x steps = effective batch."""
    per_micro = local_pairs * processes
    if effective_pairs % per_micro:
        raise ValueError(
            f"effective batch of {effective_pairs} pairs is not a multiple of "
            f"{processes} process(es) x {local_pairs} local pairs"
        )
    return effective_pairs // per_micro


def host_values(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalars summed on the device, read by the host in one transfer (one sync per
    optimiser step, not one per metric and micro-step)."""
    if not values:
        return {}
    stacked = torch.stack([torch.as_tensor(v).float().reshape(()) for v in values.values()])
    return dict(zip(values, stacked.tolist(), strict=True))


def _agree(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Whether any process raised each flag, so that every process takes the same branch."""
    if accelerator.num_processes == 1:
        return list(flags)
    raised = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [v > 0 for v in accelerator.reduce(raised, reduction="sum").tolist()]


def train(
    cfg: Mapping[str, Any],
    *,
    cache_dir: Path,
    base_model: str,
    out_dir: Path,
    run_dir: Path,
    reference_dir: Path | None = None,
    validation_table: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on the cache with one method's resolved config.

    Run it under ``accelerate launch`` for several processes: the effective batch
    (``pairs_per_step``) stays the same and the accumulation follows from it. Raises
    :class:`DivergenceError` on non-finite numbers and :class:`Preempted` after SIGTERM,
    SIGUSR1 or SIGINT, or once the job that started it is gone (a checkpoint written); in
    these cases no model is written. One trainer at a time holds ``run_dir``
    (:mod:`dspo.training.run_lock`). ``reference_dir`` holds the reference's outputs computed before
    training (:mod:`dspo.training.reference`): no reference forward runs and no reference copy is
    held. ``validation_table`` is the table of the prompt set ``validation.from_prompt_set``
    names (:func:`dspo.training.validation.validation_prompts`).
    """
    settings = TrainSettings.from_config(cfg)
    # Read before any model loads: a wrong table fails at once.
    prompts = (
        validation_prompts(settings.validation or {}, validation_table)
        if settings.validate_every
        else ()
    )
    watch = JobWatch.start()
    with held(run_dir, watch) as lock:
        run = TrainingRun.set_up(settings, cache_dir, base_model, run_dir, reference_dir)
        run.resume(prompts)
        bar = tqdm(
            range(run.start_step, settings.steps),
            initial=run.start_step,
            total=settings.steps,
            desc=f"train {settings.name}",
            disable=not run.accelerator.is_local_main_process,
            mininterval=5,
        )
        with StopSignals() as signals:
            for step in bar:
                loss = run.step(step, stop=signals.reason or watch.gone())
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")
        return run.finish(out_dir, lock)


class TrainingRun:
    """One training run: :meth:`set_up`, :meth:`resume`, :meth:`step` per step, :meth:`finish`."""

    def __init__(
        self,
        settings: TrainSettings,
        accelerator: Accelerator,
        cache: PairCache,
        model: PreferenceModel,
        optimizer: torch.optim.Optimizer,
        precomputed: PrecomputedReference | None,
        paths: tuple[Path, str, Path],
    ) -> None:
        self.settings, self.accelerator, self.cache = settings, accelerator, cache
        self.model, self.optimizer, self.precomputed = model, optimizer, precomputed
        self.cache_dir, self.base_model, self.run_dir = paths
        self.started = time.time()
        # The wall clock of the last checkpoint (or the start), for checkpoint_every_minutes.
        self.saved_at = time.monotonic()
        self.tf32 = use_tf32(settings.tf32)
        self.objective = get_objective(settings.objective)
        self.hparams = objective_kwargs(settings.objective, settings.params)
        if self.objective.batch_statistics:
            self.hparams["all_reduce"] = lambda x: accelerator.reduce(x, reduction="mean")
        self.family = accelerator.unwrap_model(model).family
        self.trainable = [p for p in self._policy().parameters() if p.requires_grad]
        self.processes = accelerator.num_processes
        self.accumulation = accumulation_steps(
            settings.pairs_per_step, settings.local_pairs, self.processes
        )
        # What a checkpoint must match to be resumed (dspo.training.checkpoints).
        self.parts = fingerprint_parts(settings, self.base_model, cache.manifest)
        self.start_step, self.skipped = 0, 0
        self.last_checkpoint: Path | None = None
        self.validator: Validator | None = None

    @classmethod
    def set_up(
        cls,
        settings: TrainSettings,
        cache_dir: Path,
        base_model: str,
        run_dir: Path,
        reference_dir: Path | None = None,
    ) -> TrainingRun:
        """Load the cache, the model and, where given, the precomputed reference; build the
        optimiser. Nothing is read from ``run_dir`` yet (see :meth:`resume`)."""
        objective = get_objective(settings.objective)
        precision = resolve_mixed_precision(settings.mixed_precision)
        accelerator = Accelerator(
            mixed_precision=precision, log_with=settings.report_to, project_dir=str(run_dir)
        )
        accumulation_steps(settings.pairs_per_step, settings.local_pairs, accelerator.num_processes)
        # Seeds LoRA's initialisation, the one random draw outside the step's own generators.
        torch.manual_seed(settings.seed)
        # One process per node reads every byte to verify the checksums; the others map them.
        cache = load_cache(cache_dir, verify=accelerator.is_local_main_process)
        accelerator.wait_for_everyone()
        precomputed = None
        if reference_dir is not None and objective.needs_reference:
            expected = reference_parts(settings, objective, base_model, cache.manifest)
            precomputed = PrecomputedReference(reference_dir, expected, settings.pairs_per_step)
        model = build_model(settings, objective, base_model, cache, precision, precomputed is None)
        trainable = [p for p in model.denoiser.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, settings.optimiser)
        model, optimizer = accelerator.prepare(model, optimizer)
        ckpt.trainable_weights_only(accelerator)
        return cls(
            settings,
            accelerator,
            cache,
            model,
            optimizer,
            precomputed,
            (Path(cache_dir), base_model, Path(run_dir)),
        )

    def _policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).denoiser

    def resume(self, prompts: Sequence[str] = ()) -> None:
        """Continue from the newest intact checkpoint of this very run, if any; restart the
        metrics, validation strips (of the validation ``prompts``) and trackers from that
        step."""
        accelerator, settings = self.accelerator, self.settings
        found = None
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.forget_finished_run(self.run_dir, self.parts, settings.steps, accelerator.print)
            found = ckpt.resumable_checkpoint(
                self.run_dir / "checkpoints",
                self.parts,
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
            self.start_step, self.skipped = state["step"], state.get("skipped", 0)
            self.last_checkpoint = folder
        # The tracker run continues across resumes: its id is kept with the checkpoints.
        self.tracker_run_id = (found[1].get("tracker_run_id") if found else None) or new_run_id()
        validation = ValidationSettings.from_config(
            settings.validate_every,
            settings.validation or {},
            prompts,
            self.cache.manifest["resolution"],
        )
        if accelerator.is_main_process:
            restart_metrics(self.run_dir, self.start_step)
            restart_validation(self.run_dir, self.start_step, validation)
            # Kept step models written under the resumed checkpoint's fingerprint stay too
            # (resumed across a code change).
            trajectory = {combined_key(**self.parts), *([found[1]["fingerprint"]] if found else [])}
            keep_resumed(self.run_dir, self.start_step, trajectory, accelerator.print)
            if validation is not None:
                self.validator = Validator(
                    self.base_model, self._policy(), validation, accelerator.device
                )
        if settings.report_to:
            start_trackers(
                accelerator, settings.resolved, settings.name, self.start_step, self.tracker_run_id
            )
        self.model.train()
        self.saved_at = time.monotonic()

    def step(self, step: int, stop: str = "") -> float | None:
        """Optimiser step ``step``: its micro-batches, then the update, unless a number is not
        finite (skipped within ``skip_nonfinite``, else :class:`DivergenceError`); then
        metrics, validation and checkpoint as due. ``stop``: why training must stop (a signal
        arrived, the job is gone), so a checkpoint is written and :class:`Preempted` raised.
        Returns the loss when logged."""
        settings = self.settings
        lr = set_learning_rate(self.optimizer, settings.optimiser, step)
        sums = self._gradients(step)
        # Under fp16 the loss scaler makes overflowing gradients on purpose and skips those.
        checks_gradient = self.accelerator.mixed_precision != "fp16"
        checked = {k: v for k, v in sums.items() if checks_gradient or k != "grad_norm"}
        metric = first_nonfinite(checked)
        # Every rank takes the same branches: one that got a signal, or whose clock says a
        # checkpoint is due, makes all of them save after this step.
        bad, stopping, clock_due = _agree(
            self.accelerator, metric is not None, bool(stop), self._clock_due()
        )
        done, loss = step + 1, None
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            what = f"{metric} is {sums[metric]}" if metric else "another process's metrics"
            self._skip(done, what)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if done % settings.log_every == 0 or done == settings.steps:
                loss = self._log(done, lr, sums)
        self._validate(done)
        self._keep_step(done)
        if stopping and done < settings.steps:
            self.last_checkpoint = self._save(done)
            raise Preempted(
                f"{stop or 'another process was told to stop'}: stopped after step {done} "
                f"of {settings.steps}, checkpoint {self.last_checkpoint}; run again to resume"
            )
        every = settings.checkpoint_every
        if (clock_due or (every and done % every == 0)) and done < settings.steps:
            self.last_checkpoint = self._save(done)
        return loss

    def _clock_due(self) -> bool:
        """Whether ``checkpoint_every_minutes`` have passed since the last checkpoint."""
        minutes = self.settings.checkpoint_every_minutes
        return bool(minutes) and time.monotonic() - self.saved_at >= 60 * minutes

    def _gradients(self, step: int) -> dict[str, float]:
        """Run the step's micro-batches (backward included) and clip; the metrics summed."""
        accelerator, settings, local = self.accelerator, self.settings, self.settings.local_pairs
        accum = self.accumulation
        rows = step_rows(len(self.cache), settings.pairs_per_step, settings.seed, step)
        on_device: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            start = micro_batch_start(micro, self.processes, accelerator.process_index, local)
            batch = micro_batch(
                self.cache, rows, step, start, settings, self.family, self.objective.shared_noise
            )
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            if self.precomputed is not None:
                batch["reference"] = self.precomputed.stats(step, start, local, accelerator.device)
            sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(self.model)
            with sync, accelerator.autocast():
                loss, metrics = self.model(batch, self.objective, self.hparams)
                accelerator.backward(loss / accum)
            for key, value in metrics.items():
                value = torch.as_tensor(value, device=accelerator.device).detach().float()
                on_device[key] = on_device.get(key, 0.0) + value / accum
        # Without clipping the norm is still taken (clipping at infinity leaves the
        # gradient as it is), to catch non-finite gradients.
        limit = settings.optimiser.max_grad_norm or math.inf
        on_device["grad_norm"] = accelerator.clip_grad_norm_(self.trainable, limit)
        return host_values(on_device)

    def _skip(self, done: int, what: str) -> None:
        may_skip = self.settings.skip_nonfinite
        if self.skipped >= may_skip:
            kept = f"kept {self.last_checkpoint}" if self.last_checkpoint else "none was written"
            raise DivergenceError(
                f"step {done}: {what} (not finite): training stopped and no model "
                f"written; last good checkpoint: {kept}"
            )
        self.skipped += 1
        self.accelerator.print(
            f"step {done}: {what} (not finite): step skipped "
            f"({self.skipped} of training.skip_nonfinite {may_skip})"
        )

    def _log(self, done: int, lr: float, sums: Mapping[str, float]) -> float:
        record = {"step": done, "lr": lr, **mean_over(self.accelerator, sums)}
        if self.accelerator.is_main_process:
            append_metrics(self.run_dir, record)
        if self.settings.report_to:
            self.accelerator.log(record, step=done)
        return record["loss"]

    def _validate(self, done: int) -> None:
        """Sample the validation prompts (main process; the others go on to the next step)."""
        settings = self.settings
        if self.validator is None or not is_due(done, settings.steps, settings.validate_every):
            return
        images = self.validator.sample(self.model)
        save_strip(self.run_dir, done, images)
        if settings.report_to:
            captions = [f"{c['prompt']} (seed {c['seed']})" for c in self.validator.columns]
            log_images(self.accelerator, images, captions, done)

    def _data(self) -> str:
        """What the model card says the model learned from."""
        return (
            f"{len(self.cache)} preference pairs (`{self.settings.data}`, cache {self.cache_dir})"
        )

    def _keep_step(self, done: int) -> None:
        """Keep the model of step ``done`` when ``training.evaluate_steps`` lists it (main
        process; the last step's is the run's model)."""
        settings = self.settings
        if done not in settings.evaluate_steps or done == settings.steps:
            return
        if self.accelerator.is_main_process:
            policy = self._policy()
            check_weights_finite(policy.named_parameters(), f"the model of step {done}")
            record = {
                "config": dict(settings.resolved),
                "method": settings.name,
                "step": done,
                "steps": settings.steps,
                "fingerprint": combined_key(**self.parts),
                "tf32": self.tf32,
            }
            card = {**settings.resolved, "name": f"{settings.name}@{done}", "steps": done}
            write = partial(
                write_model_folder, policy, self.family, settings, self.base_model, record, card
            )
            kept = write_step(self.run_dir, done, partial(write, self._data()))
            self.accelerator.print(f"kept the model of step {done} in {kept}")

    def _save(self, done: int) -> Path:
        check_weights_finite(self._policy().named_parameters(), f"checkpoint of step {done}")
        folder = self.run_dir / "checkpoints"
        # Every checkpoint of a run is as large as the last one.
        needed = folder_bytes(self.last_checkpoint) if self.last_checkpoint else None
        start = time.monotonic()
        with space_for(folder / f"step-{done:06d}", needed):
            saved = ckpt.save_checkpoint(
                self.accelerator,
                folder,
                done,
                self.settings.checkpoints_kept,
                self.parts,
                {
                    "skipped": self.skipped,
                    "details": fingerprint_details(self.settings),
                    "tracker_run_id": self.tracker_run_id,
                },
            )
        # What SLURM's signal lead must cover: the rest of a step, then this (docs/cluster.md).
        self.accelerator.print(
            f"checkpoint {saved.name} written in {time.monotonic() - start:.1f} s; "
            f"{start - self.saved_at:.1f} s of training since the last one or the start"
        )
        self.saved_at = time.monotonic()
        return saved

    def finish(self, out_dir: Path, lock: RunLock | None) -> dict[str, Any]:
        """Write the model, its record and card (main process, which holds ``lock``, if this
        run still owns its folder: :func:`dspo.training.run_lock.write_model`); drop the
        checkpoints."""
        accelerator, settings = self.accelerator, self.settings
        accelerator.wait_for_everyone()
        summary = {
            "method": settings.name,
            "objective": self.objective.name,
            "family": self.cache.family,
            "steps": settings.steps,
            "pairs_per_step": settings.pairs_per_step,
            "accumulation": self.accumulation,
            "processes": self.processes,
            "mixed_precision": accelerator.mixed_precision,
            "tf32": self.tf32,
            "resumed_from": self.start_step,
            "skipped_steps": self.skipped,
            "seconds": round(time.time() - self.started, 1),
        }
        if accelerator.is_main_process:
            final = self._policy()
            check_weights_finite(final.named_parameters(), f"the model for {out_dir}")
            record = {"config": dict(settings.resolved), **summary, **run_record(lock)}
            data = self._data()
            card = {"name": settings.name, **settings.resolved}
            write = partial(write_model_folder, final, self.family, settings, self.base_model)
            write_model(out_dir, lock, MODEL_CONFIG, partial(write, record, card, data))
            ckpt.mark_finished(self.run_dir, self.parts, settings.steps, out_dir)
            if not settings.keep_checkpoints:
                # The model is saved and its weights checked: the checkpoints (weights and
                # optimiser state, several times the model's size) have served their purpose.
                shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
        accelerator.end_training()
        return summary
