"""The preference fine-tuning loop shared by every method.

One loop for all objectives: each step draws B pairs from the latent cache, one timestep
and one noise tensor per pair (shared by its two images, which is what makes their errors
comparable), runs the policy (and the frozen reference when the objective needs one) on the
2B noisy latents, and hands the predictions to the objective from `dspo.objectives`.
Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a job
that is killed and rerun resumes from its last checkpoint and continues exactly where it left
off, and the same effective batch trains alike on one process or several (the data and loss
of a step are in `dspo.preference`).

It never returns a wrong model silently: checkpoints are resumed only by the run that wrote
them (`dspo.checkpoints`), non-finite numbers stop training and SIGTERM/SIGUSR1 save a
checkpoint before exiting (`dspo.guards`), and the learning rate follows the step, once per
optimiser step, however many processes train.

What it shows while it runs: metrics every ``log_every`` steps (`dspo.run_metrics`),
validation images of fixed prompts every ``validate_every`` steps (`dspo.validation`, which
leaves the trajectory untouched), both also in the tracker (`dspo.tracking`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers import ModelMixin
from tqdm.auto import tqdm

from dspo import checkpoints as ckpt
from dspo.content import write_content_record
from dspo.data.cache import PairCache, load_cache
from dspo.families import load_family
from dspo.families.base import Family
from dspo.guards import (
    DivergenceError,
    Preempted,
    StopSignals,
    check_weights_finite,
    first_nonfinite,
)
from dspo.model_card import write_model_card
from dspo.objectives import Objective, get_objective, objective_kwargs
from dspo.optimisation import (  # noqa: F401  (learning_rate_factor: also this module's interface)
    learning_rate_factor,
    make_optimizer,
    resolve_mixed_precision,
    set_learning_rate,
)
from dspo.preference import (  # noqa: F401  (also this module's interface)
    PreferenceModel,
    make_batch,
    micro_batch_start,
    preference_loss,
    step_rows,
)
from dspo.reference import PrecomputedReference, reference_parts
from dspo.run_metrics import append_metrics, mean_over, restart_metrics
from dspo.seeding import seeded_generator
from dspo.tracking import log_images, start_trackers
from dspo.validation import (
    ValidationSettings,
    Validator,
    is_due,
    restart_validation,
    save_strip,
)

MODEL_CONFIG = "dspo_config.json"


def accumulation_steps(effective_pairs: int, local_pairs: int, processes: int) -> int:
    """Micro-steps per optimiser step so that processes x local batch x steps = effective batch."""
    per_micro = local_pairs * processes
    if effective_pairs % per_micro:
        raise ValueError(
            f"effective batch of {effective_pairs} pairs is not a multiple of "
            f"{processes} process(es) x {local_pairs} local pairs"
        )
    return effective_pairs // per_micro


def _build_model(
    cfg: Mapping[str, Any],
    objective: Objective,
    base_model: str,
    cache: PairCache,
    precision: str,
    online_reference: bool = True,
) -> PreferenceModel:
    """The policy denoiser (LoRA when configured) and its reference, checked against the cache."""
    family = load_family(base_model, **(cfg.get("family_settings") or {}))
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    lora = cfg.get("lora")
    # LoRA under mixed precision (a GPU): the frozen base only runs forward passes under
    # autocast, so it is loaded and held in the half dtype, as the public LoRA scripts hold
    # it (FLUX's 12 B transformer: 24 GB instead of 48 per process); the adapters, which
    # the optimiser updates, stay float32.
    denoiser = family.load_denoiser(base_model, dtype=half if lora else None)
    channels = family.latent_channels(denoiser)
    if cache.manifest["latent_shape"][0] != channels:
        raise ValueError(
            f"cache of {cache.manifest['model']} has {cache.manifest['latent_shape'][0]} latent "
            f"channels, the {family.denoiser} of {base_model} expects {channels}"
        )
    if cache.family != family.name:
        raise ValueError(
            f"cache of {cache.manifest['model']} holds {cache.family} embeddings, "
            f"the {family.denoiser} of {base_model} is {family.name}: rebuild the cache with "
            "this model"
        )
    if lora:
        family.add_lora(denoiser, lora["rank"], lora["alpha"], lora["target_modules"])
        for p in denoiser.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if cfg["gradient_checkpointing"]:
        denoiser.enable_gradient_checkpointing()
    reference_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    needs = objective.needs_reference and online_reference
    return PreferenceModel(denoiser, family, needs, bool(lora), reference_dtype)


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


def _resume(
    accelerator: Accelerator, run_dir: Path, parts: Mapping[str, str], steps: int
) -> tuple[int, int, Path | None]:
    """Load the newest intact checkpoint of this very run: (step, skipped steps, its folder)."""
    found = None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.forget_finished_run(run_dir, parts, steps, accelerator.print)
        found = ckpt.resumable_checkpoint(run_dir / "checkpoints", parts, steps, accelerator.print)
    if accelerator.num_processes > 1:
        found = broadcast_object_list([found])[0]
    if found is None:
        return 0, 0, None
    folder, state = found
    accelerator.load_state(str(folder))
    accelerator.print(f"resuming from {folder} (step {state['step']})")
    return state["step"], state.get("skipped", 0), folder


def train(
    cfg: Mapping[str, Any],
    *,
    cache_dir: Path,
    base_model: str,
    out_dir: Path,
    run_dir: Path,
    reference_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on the cache with one method's resolved config.

    Run it under ``accelerate launch`` for several processes: the effective batch
    (``pairs_per_step``) stays the same and the accumulation follows from it. Raises
    :class:`DivergenceError` on non-finite numbers and :class:`Preempted` after SIGTERM or
    SIGUSR1 (a checkpoint written); in both cases no model is written. ``reference_dir``
    holds the reference's outputs computed before training (:mod:`dspo.reference`): no
    reference forward runs and no reference copy is held.
    """
    started = time.time()
    objective = get_objective(cfg["objective"])
    hparams = objective_kwargs(cfg["objective"], cfg.get("params") or {})
    precision = resolve_mixed_precision(cfg["mixed_precision"])
    accelerator = Accelerator(
        mixed_precision=precision,
        log_with=cfg["report_to"] or None,
        project_dir=str(run_dir),
    )
    local, processes = cfg["local_pairs"], accelerator.num_processes
    accum = accumulation_steps(cfg["pairs_per_step"], local, processes)
    torch.manual_seed(cfg["seed"])
    # One process per node reads every byte to verify the checksums; the others map the files.
    cache = load_cache(cache_dir, verify=accelerator.is_local_main_process)
    accelerator.wait_for_everyone()
    precomputed = None
    if reference_dir is not None and objective.needs_reference:
        expected = reference_parts(cfg, objective, base_model, cache.manifest)
        precomputed = PrecomputedReference(reference_dir, expected, cfg["pairs_per_step"])
    model = _build_model(cfg, objective, base_model, cache, precision, precomputed is None)
    family = model.family
    trainable = [p for p in model.denoiser.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    ckpt.trainable_weights_only(accelerator)

    steps, checkpoints = cfg["steps"], run_dir / "checkpoints"
    parts = ckpt.fingerprint_parts(cfg, base_model, cache.manifest)
    start_step, skipped, last_checkpoint = _resume(accelerator, run_dir, parts, steps)
    method = cfg.get("name", objective.name)
    validation = ValidationSettings.from_config(cfg, cache.manifest["resolution"])
    validator = None
    if accelerator.is_main_process:
        restart_metrics(run_dir, start_step)
        restart_validation(run_dir, start_step, validation)
        if validation is not None:
            policy = accelerator.unwrap_model(model).denoiser
            validator = Validator(base_model, policy, validation, accelerator.device)
    if cfg["report_to"]:
        start_trackers(accelerator, cfg, method, start_step)

    def validate(done: int) -> None:
        """Sample the validation prompts (main process; the others go on to the next step)."""
        if validator is None or not is_due(done, steps, cfg.get("validate_every", 0)):
            return
        images = validator.sample(model)
        save_strip(run_dir, done, images)
        if cfg["report_to"]:
            captions = [f"{c['prompt']} (seed {c['seed']})" for c in validator.columns]
            log_images(accelerator, images, captions, done)

    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x, reduction="mean")

    def save(done: int) -> Path:
        check_weights_finite(
            accelerator.unwrap_model(model).denoiser.named_parameters(),
            f"checkpoint of step {done}",
        )
        extra = {"skipped": skipped}
        return ckpt.save_checkpoint(
            accelerator, checkpoints, done, cfg["checkpoints_kept"], parts, extra
        )

    if objective.batch_statistics:
        hparams = {**hparams, "all_reduce": all_reduce}
    model.train()
    bar = tqdm(
        range(start_step, steps),
        initial=start_step,
        total=steps,
        desc=f"train {method}",
        disable=not accelerator.is_local_main_process,
        mininterval=5,
    )
    # Under fp16 the loss scaler makes overflowing gradients on purpose and skips those steps.
    checks_gradient = precision != "fp16"
    may_skip = cfg.get("skip_nonfinite", 0)
    with StopSignals() as signals:
        for step in bar:
            lr = set_learning_rate(optimizer, cfg, step)
            rows = step_rows(len(cache), cfg["pairs_per_step"], cfg["seed"], step)
            on_device: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                start = micro_batch_start(micro, processes, accelerator.process_index, local)
                # Noise, timesteps and dropout follow the micro-batch's place in the step, so
                # they too are the same however the step is split across processes.
                gen = seeded_generator(cfg["seed"], 2, step, start)
                batch = {
                    k: v.to(accelerator.device)
                    for k, v in make_batch(
                        cache, rows[start : start + local], cfg, gen, family, objective.shared_noise
                    ).items()
                }
                if precomputed is not None:
                    batch["reference"] = precomputed.stats(step, start, local, accelerator.device)
                sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    loss, metrics = model(batch, objective, hparams)
                    accelerator.backward(loss / accum)
                for key, value in metrics.items():
                    value = torch.as_tensor(value, device=accelerator.device).detach().float()
                    on_device[key] = on_device.get(key, 0.0) + value / accum
            # Without clipping the norm is still taken (clipping at infinity leaves the
            # gradient as it is), to catch non-finite gradients.
            limit = cfg["max_grad_norm"] or math.inf
            on_device["grad_norm"] = accelerator.clip_grad_norm_(trainable, limit)
            sums = host_values(on_device)
            checked = {k: v for k, v in sums.items() if checks_gradient or k != "grad_norm"}
            metric = first_nonfinite(checked)
            bad, stopping = _agree(accelerator, metric is not None, signals.received is not None)
            done = step + 1
            if bad:
                optimizer.zero_grad(set_to_none=True)
                what = f"{metric} is {sums[metric]}" if metric else "another process's metrics"
                if skipped >= may_skip:
                    kept = f"kept {last_checkpoint}" if last_checkpoint else "none was written"
                    raise DivergenceError(
                        f"step {done}: {what} (not finite): training stopped and no model "
                        f"written; last good checkpoint: {kept}"
                    )
                skipped += 1
                accelerator.print(
                    f"step {done}: {what} (not finite): step skipped "
                    f"({skipped} of training.skip_nonfinite {may_skip})"
                )
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if done % cfg["log_every"] == 0 or done == steps:
                    record = {"step": done, "lr": lr, **mean_over(accelerator, sums)}
                    if accelerator.is_main_process:
                        append_metrics(run_dir, record)
                    if cfg["report_to"]:
                        accelerator.log(record, step=done)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
            validate(done)
            if stopping and done < steps:
                last_checkpoint = save(done)
                raise Preempted(
                    f"{signals.name or 'a stop signal'} received: stopped after step {done} "
                    f"of {steps}, checkpoint {last_checkpoint}; run again to resume"
                )
            if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0 and done < steps:
                last_checkpoint = save(done)

    accelerator.wait_for_everyone()
    summary = {
        "method": method,
        "objective": objective.name,
        "family": cache.family,
        "steps": steps,
        "pairs_per_step": cfg["pairs_per_step"],
        "accumulation": accum,
        "processes": processes,
        "mixed_precision": precision,
        "resumed_from": start_step,
        "skipped_steps": skipped,
        "seconds": round(time.time() - started, 1),
    }
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).denoiser
        check_weights_finite(final.named_parameters(), f"the model for {out_dir}")
        save_model(final, family, cfg, base_model, out_dir)
        (out_dir / MODEL_CONFIG).write_text(json.dumps({"config": cfg, **summary}, indent=2) + "\n")
        data = f"{len(cache)} preference pairs (`{cfg.get('data', 'pairs')}`, cache {cache_dir})"
        write_model_card(out_dir, {"name": summary["method"], **cfg}, base_model, data)
        # The record makes the model folder's content key (dspo.content) its weights' hash.
        write_content_record(out_dir)
        ckpt.mark_finished(run_dir, parts, steps, out_dir)
        if not cfg.get("keep_checkpoints", False):
            # The model is saved and its weights checked: the checkpoints (weights and
            # optimiser state, several times the model's size) have served their purpose.
            shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.end_training()
    return summary


def save_model(
    denoiser: ModelMixin, family: Family, cfg: Mapping[str, Any], base_model: str, out_dir: Path
) -> None:
    """Write what users load: a full diffusers pipeline, or standard LoRA safetensors.

    The model family writes LoRA weights as its pipeline class does, so that class's
    ``load_lora_weights`` reads them.
    """
    family.save_denoiser(denoiser, base_model, out_dir, lora=bool(cfg.get("lora")))
