"""The preference fine-tuning loop shared by every method.

One loop for all objectives: each step draws B pairs from the latent cache, one timestep
and one noise tensor per pair (shared by its two images, which is what makes their errors
comparable), runs the policy (and the frozen reference when the objective needs one) on the
2B noisy latents, and hands the predictions to the objective from `dspo.objectives`.
Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a job
that is killed and rerun resumes from its last checkpoint and continues exactly where it left
off, and the same effective batch trains alike on one process or several (the data and loss
of a step are in `dspo.training.preference`; how a step is shared among processes, in
`dspo.training.processes`).

It never returns a wrong model silently: checkpoints are resumed only by the run that wrote
them (`dspo.training.checkpoints`), non-finite numbers stop training and SIGTERM/SIGUSR1/SIGINT save
a checkpoint before exiting (`dspo.training.guards`), and the learning rate follows the step, once
per optimiser step, however many processes train.

What it shows while it runs: metrics every ``log_every`` steps (`dspo.training.metrics`),
validation images of fixed prompts (and the first of a prompt set's) every ``validate_every``
steps (`dspo.training.validation`, which leaves the trajectory untouched), both also in the
tracker (`dspo.training.tracking`). The models of ``training.evaluate_steps`` are kept for
choosing the step later (`dspo.training.step_models`). The run's files (resuming,
checkpoints, the kept models and the model) are written by `dspo.training.run_files`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dspo.data.cache_load import PairCache, load_cache
from dspo.objectives import get_objective, objective_kwargs
from dspo.training import checkpoints as ckpt
from dspo.training.fingerprint import fingerprint_parts
from dspo.training.guards import DivergenceError, Preempted, StopSignals, first_nonfinite
from dspo.training.job_watch import JobWatch
from dspo.training.metrics import append_metrics, mean_over
from dspo.training.optimisation import make_optimizer, resolve_mixed_precision, set_learning_rate
from dspo.training.policy import build_model, use_tf32
from dspo.training.preference import PreferenceModel, micro_batch, micro_batch_start, step_rows
from dspo.training.processes import accumulation_steps, agree, host_values
from dspo.training.reference import PrecomputedReference, reference_parts
from dspo.training.run_files import finish_run, keep_step_model, resume_run, write_checkpoint
from dspo.training.run_lock import held
from dspo.training.settings import TrainSettings
from dspo.training.tracking import log_images
from dspo.training.validation import Validator, is_due, save_strip, validation_prompts


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
        resume_run(run, prompts)
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
        return finish_run(run, out_dir, lock)


class TrainingRun:
    """One training run: :meth:`set_up`, :func:`resume_run`, :meth:`step` per step,
    :func:`finish_run`."""

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
        self.trainable = [p for p in self.policy().parameters() if p.requires_grad]
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

    def policy(self) -> torch.nn.Module:
        """The policy's denoiser, unwrapped from its processes' wrappers."""
        return self.accelerator.unwrap_model(self.model).denoiser

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
        bad, stopping, clock_due = agree(
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
        keep_step_model(self, done)
        if stopping and done < settings.steps:
            self.last_checkpoint = write_checkpoint(self, done)
            raise Preempted(
                f"{stop or 'another process was told to stop'}: stopped after step {done} "
                f"of {settings.steps}, checkpoint {self.last_checkpoint}; run again to resume"
            )
        every = settings.checkpoint_every
        if (clock_due or (every and done % every == 0)) and done < settings.steps:
            self.last_checkpoint = write_checkpoint(self, done)
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
