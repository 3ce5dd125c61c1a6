"""The preference fine-tuning loop shared by every method.

One loop for all objectives: each step draws B pairs from the latent cache, one timestep
and one noise tensor per pair (shared by its two images, which is what makes their errors
comparable), runs the policy (and the frozen reference when the objective needs one) on the
2B noisy latents, and hands the predictions to the objective from `dspo.objectives`.
Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a job
that is killed and rerun resumes from its last checkpoint and continues exactly where it left
off, and the same effective batch trains alike on one process or several.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import (
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm

from dspo.data.cache import PairCache, load_cache
from dspo.models import load_pipeline, model_family
from dspo.objectives import Objective, get_objective, objective_kwargs

MODEL_CONFIG = "dspo_config.json"
METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"
LORA_WRITERS = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
# SDXL's UNet takes pooled text embeddings and time ids; SD's takes nothing more.
Added = dict[str, torch.Tensor] | None


def accumulation_steps(effective_pairs: int, local_pairs: int, processes: int) -> int:
    """Micro-steps per optimiser step so that processes x local batch x steps = effective batch."""
    per_micro = local_pairs * processes
    if effective_pairs % per_micro:
        raise ValueError(
            f"effective batch of {effective_pairs} pairs is not a multiple of "
            f"{processes} process(es) x {local_pairs} local pairs"
        )
    return effective_pairs // per_micro


def learning_rate_factor(step: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or inverse-square-root decay (paper D.3)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1))
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected 'constant' or 'inverse_sqrt'")


def _optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(
            params,
            lr=cfg["lr"],
            betas=tuple(cfg["adam_betas"]),
            weight_decay=cfg["weight_decay"],
            eps=cfg["adam_eps"],
        )
    if cfg["optimizer"] == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=cfg["lr"], scale_parameter=False, relative_step=False, warmup_init=False
        )
    raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; expected 'adamw' or 'adafactor'")


def _generator(seed: int, *parts: int) -> torch.Generator:
    """A generator whose state depends only on the run seed and the position in the run."""
    mixed = seed
    for part in parts:
        mixed = (mixed * 1_000_003 + part) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def step_rows(n: int, pairs_per_step: int, seed: int, step: int) -> torch.Tensor:
    """Rows of the cache for one optimiser step: epoch-wise shuffles, no repeats within an epoch.

    The step's rows depend only on the effective batch, never on how it is split into
    processes and micro-steps, so 1 process x 2 micro-steps and 2 processes x 1 micro-step
    train on the same pairs.
    """
    per_epoch = max(1, n // pairs_per_step)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=_generator(seed, 1, epoch))
    if n < pairs_per_step:
        return order[torch.arange(pairs_per_step) % n]
    return order[position * pairs_per_step : (position + 1) * pairs_per_step]


def micro_batch_start(micro: int, processes: int, rank: int, local: int) -> int:
    """Where one process's micro-batch starts within the step's rows."""
    return (micro * processes + rank) * local


class PreferenceModel(torch.nn.Module):
    """The policy UNet and, when the objective needs it, its frozen reference.

    With LoRA the reference is the same UNet with its adapters disabled, so no second copy of
    the weights is held; otherwise it is a frozen copy of the starting weights, stored in
    ``reference_dtype`` (the mixed-precision dtype on a GPU: it only runs forward passes, as
    the public scripts keep it, so it need not cost fp32 memory).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        needs_reference: bool,
        lora: bool,
        reference_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.lora = lora
        self.reference = None
        if needs_reference and not lora:
            reference = copy.deepcopy(unet).requires_grad_(False).eval()
            self.reference = reference.to(reference_dtype)

    def policy(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: Added = None
    ) -> torch.Tensor:
        return self.unet(x, t, text, added_cond_kwargs=added).sample

    @torch.no_grad()
    def ref(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: Added = None
    ) -> torch.Tensor:
        if self.reference is not None:
            return self.reference(x, t, text, added_cond_kwargs=added).sample
        self.unet.disable_adapters()
        try:
            return self.unet(x, t, text, added_cond_kwargs=added).sample
        finally:
            self.unet.enable_adapters()

    def forward(self, batch: Mapping[str, torch.Tensor], objective: Objective, hparams, scheduler):
        return preference_loss(self, batch, objective, hparams, scheduler)


def _added(batch: Mapping[str, torch.Tensor], pooled: list[str], time_ids: list[str]) -> Added:
    """SDXL's added conditions for images stacked in this order; None for SD batches."""
    if "pooled_w" not in batch:
        return None
    return {
        "text_embeds": torch.cat([batch[k] for k in pooled]),
        "time_ids": torch.cat([batch[k] for k in time_ids]),
    }


def preference_loss(model: PreferenceModel, batch, objective: Objective, hparams, scheduler):
    """Noise a batch of pairs, run policy/reference, and evaluate the objective.

    SDXL batches carry pooled text embeddings and per-image time ids (``pooled_w/l``,
    ``time_ids_w/l``); each image is conditioned on its own original size and crop.
    """
    lat_w, lat_l, noise, t = batch["latents_w"], batch["latents_l"], batch["noise"], batch["t"]
    text, text_l = batch["text_w"], batch["text_l"]

    def target_of(latents: torch.Tensor) -> torch.Tensor:
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, t)
        return noise

    x_w = scheduler.add_noise(lat_w, noise, t)
    if objective.preferred_only:
        added = _added(batch, ["pooled_w"], ["time_ids_w"])
        pred = model.policy(x_w, t, text, added)
        ref = model.ref(x_w, t, text, added) if objective.needs_reference else None
        return objective.fn(pred, ref, target_of(lat_w), **hparams)

    x = torch.cat([x_w, scheduler.add_noise(lat_l, noise, t)])
    t2, text2 = torch.cat([t, t]), torch.cat([text, text])
    added = _added(batch, ["pooled_w", "pooled_w"], ["time_ids_w", "time_ids_l"])
    pred = model.policy(x, t2, text2, added)
    ref = model.ref(x, t2, text2, added) if objective.needs_reference else None
    if objective.reference_target:
        # DDSPO: the reference's own score, given the original prompt for the preferred
        # image and the degraded prompt for the rejected one, is the regression target.
        added_l = _added(batch, ["pooled_l"], ["time_ids_l"])
        target = torch.cat([ref[: len(t)], model.ref(x[len(t) :], t, text_l, added_l)])
    else:
        target = torch.cat([target_of(lat_w), target_of(lat_l)])
    return objective.fn(pred, ref, target, **hparams)


def make_batch(
    cache: PairCache, rows: torch.Tensor, cfg: Mapping[str, Any], gen: torch.Generator, scheduler
) -> dict[str, torch.Tensor]:
    """Latents and text embeddings of the rows, with prompt dropout, noise and timesteps.

    For SDXL caches also pooled text embeddings and time ids: (original height, width, crop
    top, left, target height, width) of each image, as SDXL was trained with.
    """
    drop = torch.rand(len(rows), generator=gen) < cfg["prompt_dropout"]
    batch = {}
    for side in ("w", "l"):
        text = cache.embeddings[getattr(cache, f"text_{side}")[rows]].float()
        text[drop] = cache.empty.float()
        batch[f"text_{side}"] = text
        batch[f"latents_{side}"] = getattr(cache, f"latents_{side}")[rows].float()
        if cache.pooled is not None:
            pooled = cache.pooled[getattr(cache, f"text_{side}")[rows]].float()
            pooled[drop] = cache.empty_pooled.float()
            target = torch.tensor([cache.manifest["resolution"]] * 2).expand(len(rows), 2)
            batch[f"pooled_{side}"] = pooled
            batch[f"time_ids_{side}"] = torch.cat(
                [
                    getattr(cache, f"original_size_{side}")[rows],
                    getattr(cache, f"crop_{side}")[rows],
                    target,
                ],
                dim=1,
            ).float()
    batch["noise"] = torch.randn(batch["latents_w"].shape, generator=gen)
    batch["t"] = torch.randint(scheduler.config.num_train_timesteps, (len(rows),), generator=gen)
    return batch


# Keys that do not change the training trajectory up to a given step: a checkpoint stays
# valid when only these change (e.g. more steps resume a finished run's last checkpoint).
_RESUME_NEUTRAL = frozenset(
    {"name", "steps", "checkpoint_every", "checkpoints_kept", "log_every", "report_to"}
)


def run_fingerprint(cfg: Mapping[str, Any], base_model: str, cache_manifest: Mapping) -> str:
    """A hash of everything that determines the trajectory: config, base model and cache."""
    relevant = {k: v for k, v in cfg.items() if k not in _RESUME_NEUTRAL}
    blob = json.dumps(
        {"config": relevant, "base_model": str(base_model), "cache": cache_manifest},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _latest_checkpoint(checkpoints: Path, fingerprint: str) -> tuple[Path | None, list[Path]]:
    """The newest complete checkpoint of this run, and the checkpoints of other runs.

    A checkpoint written under another config (a method's hyper-parameters were edited and
    the job rerun) must not be resumed: it is returned as stale, to be removed.
    """
    current, stale = [], []
    for state in sorted(checkpoints.glob("step-*/state.json")):
        same = json.loads(state.read_text()).get("fingerprint") == fingerprint
        (current if same else stale).append(state.parent)
    return (current[-1] if current else None), stale


def resolve_mixed_precision(requested: str) -> str:
    """The mixed precision to train with: fp16/bf16 need a GPU; on CPU, float32 with a warning."""
    if requested not in ("no", "fp16", "bf16"):
        raise ValueError(f"training.mixed_precision {requested!r}; expected 'no', 'fp16' or 'bf16'")
    if requested != "no" and not torch.cuda.is_available():
        warnings.warn(
            f"training.mixed_precision {requested!r} needs a CUDA GPU and none is visible: "
            "training in float32",
            stacklevel=2,
        )
        return "no"
    return requested


def _append_metrics(run_dir: Path, record: Mapping[str, float]) -> None:
    """One line of metrics.jsonl and one row of metrics.csv (columns from the file's header)."""
    with (run_dir / METRICS_JSONL).open("a") as f:
        f.write(json.dumps(record) + "\n")
    path = run_dir / METRICS_CSV
    new = not path.exists() or path.stat().st_size == 0
    if new:
        fields = list(record)
    else:
        with path.open(newline="") as f:
            fields = next(csv.reader(f))
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(record)


def _restart_metrics(run_dir: Path, start_step: int) -> None:
    """Keep the metrics of the steps before ``start_step``; a resumed run appends the rest."""
    path = run_dir / METRICS_JSONL
    kept = []
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [r for r in records if r["step"] <= start_step]
    path.unlink(missing_ok=True)
    (run_dir / METRICS_CSV).unlink(missing_ok=True)
    for record in kept:
        _append_metrics(run_dir, record)


def _build_model(
    cfg: Mapping[str, Any], objective: Objective, base_model: str, cache: PairCache, precision: str
) -> PreferenceModel:
    """The policy UNet (with LoRA when configured) and its reference, checked against the cache."""
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
    if cache.manifest["latent_shape"][0] != unet.config.in_channels:
        raise ValueError(
            f"cache of {cache.manifest['model']} has {cache.manifest['latent_shape'][0]} latent "
            f"channels, the UNet of {base_model} expects {unet.config.in_channels}"
        )
    if cache.family != model_family(unet):
        raise ValueError(
            f"cache of {cache.manifest['model']} holds {cache.family} embeddings, "
            f"the UNet of {base_model} is {model_family(unet)}: rebuild the cache with this model"
        )
    lora = cfg.get("lora")
    if lora:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=lora["rank"],
                lora_alpha=lora["alpha"],
                init_lora_weights="gaussian",
                target_modules=lora["target_modules"],
            )
        )
    if cfg["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    reference_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    return PreferenceModel(unet, objective.needs_reference, bool(lora), reference_dtype)


def train(
    cfg: Mapping[str, Any], *, cache_dir: Path, base_model: str, out_dir: Path, run_dir: Path
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on the cache with one method's resolved config.

    Run it under ``accelerate launch`` for several processes: the effective batch
    (``pairs_per_step``) stays the same and the accumulation follows from it.
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
    cache = load_cache(cache_dir)
    scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")
    model = _build_model(cfg, objective, base_model, cache, precision)
    unet = model.unet
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = _optimizer(trainable, cfg)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(s, cfg["warmup_steps"], cfg["lr_schedule"])
    )
    model, optimizer, lr_sched = accelerator.prepare(model, optimizer, lr_sched)

    checkpoints = run_dir / "checkpoints"
    fingerprint = run_fingerprint(cfg, base_model, cache.manifest)
    start_step = 0
    latest, stale = _latest_checkpoint(checkpoints, fingerprint)
    accelerator.wait_for_everyone()
    if stale and accelerator.is_main_process:
        accelerator.print(f"removing {len(stale)} checkpoint(s) of a run with another config")
        for old in stale:
            shutil.rmtree(old)
    if latest is not None:
        accelerator.load_state(str(latest))
        start_step = json.loads((latest / "state.json").read_text())["step"]
        accelerator.print(f"resuming from {latest} (step {start_step})")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _restart_metrics(run_dir, start_step)
    if cfg["report_to"]:
        accelerator.init_trackers(
            "train", config={"method": cfg.get("name", objective.name), "objective": objective.name}
        )

    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x, reduction="mean")

    if objective.name == "diffusion_kto":
        hparams = {**hparams, "all_reduce": all_reduce}
    model.train()
    steps = cfg["steps"]
    bar = tqdm(
        range(start_step, steps),
        initial=start_step,
        total=steps,
        desc=f"train {cfg.get('name', objective.name)}",
        disable=not accelerator.is_local_main_process,
        mininterval=5,
    )
    for step in bar:
        rows = step_rows(len(cache), cfg["pairs_per_step"], cfg["seed"], step)
        sums: dict[str, float] = {}
        for micro in range(accum):
            start = micro_batch_start(micro, processes, accelerator.process_index, local)
            # Noise, timesteps and dropout follow the micro-batch's place in the step, so they
            # too are the same however the step is split across processes.
            gen = _generator(cfg["seed"], 2, step, start)
            batch = {
                k: v.to(accelerator.device)
                for k, v in make_batch(
                    cache, rows[start : start + local], cfg, gen, scheduler
                ).items()
            }
            sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss, metrics = model(batch, objective, hparams, scheduler)
                accelerator.backward(loss / accum)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value) / accum
        if cfg["max_grad_norm"]:
            sums["grad_norm"] = float(accelerator.clip_grad_norm_(trainable, cfg["max_grad_norm"]))
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % cfg["log_every"] == 0 or done == steps:
            record = {
                "step": done,
                "lr": lr_sched.get_last_lr()[0],
                **_mean_over(accelerator, sums),
            }
            if accelerator.is_main_process:
                _append_metrics(run_dir, record)
            if cfg["report_to"]:
                accelerator.log(record, step=done)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0 and done < steps:
            _save_checkpoint(accelerator, checkpoints, done, cfg["checkpoints_kept"], fingerprint)

    accelerator.wait_for_everyone()
    summary = {
        "method": cfg.get("name", objective.name),
        "objective": objective.name,
        "family": cache.family,
        "steps": steps,
        "pairs_per_step": cfg["pairs_per_step"],
        "accumulation": accum,
        "processes": processes,
        "mixed_precision": precision,
        "resumed_from": start_step,
        "seconds": round(time.time() - started, 1),
    }
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model).unet, cfg, base_model, out_dir)
        (out_dir / MODEL_CONFIG).write_text(json.dumps({"config": cfg, **summary}, indent=2) + "\n")
    accelerator.end_training()
    return summary


def _mean_over(accelerator: Accelerator, sums: Mapping[str, float]) -> dict[str, float]:
    """Metrics averaged over processes (each process saw its own share of the step's pairs)."""
    if accelerator.num_processes == 1:
        return dict(sums)
    values = torch.tensor(list(sums.values()), device=accelerator.device)
    means = accelerator.reduce(values, reduction="mean").tolist()
    return dict(zip(sums, means, strict=True))


def _save_checkpoint(
    accelerator: Accelerator, checkpoints: Path, step: int, kept: int, fingerprint: str
) -> None:
    path = checkpoints / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # state.json is written last: a checkpoint without it was cut short and is ignored.
        state = {"step": step, "fingerprint": fingerprint}
        (path / "state.json").write_text(json.dumps(state) + "\n")
        complete = sorted(p.parent for p in checkpoints.glob("step-*/state.json"))
        for old in complete[:-kept]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_model(unet: UNet2DConditionModel, cfg: Mapping[str, Any], base_model: str, out_dir: Path):
    """Write what users load: a full diffusers pipeline, or standard LoRA safetensors.

    LoRA weights are written by the pipeline class of the model family (SD or SDXL), so
    that class's ``load_lora_weights`` reads them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("lora"):
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        pipeline_class = LORA_WRITERS[model_family(unet)]
        pipeline_class.save_lora_weights(
            out_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        )
        return
    pipe = load_pipeline(base_model)
    pipe.unet = unet.to(torch.float32)
    pipe.save_pretrained(out_dir)
