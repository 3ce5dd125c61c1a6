"""The preference fine-tuning loop shared by every method.

One loop for all objectives: each step draws B pairs from the latent cache, one timestep
and one noise tensor per pair (shared by its two images, which is what makes their errors
comparable), runs the policy (and the frozen reference when the objective needs one) on the
2B noisy latents, and hands the predictions to the objective from `dspo.objectives`.
Batches, noise and timesteps are pure functions of (seed, step, process), so a job that is
killed and rerun resumes from its last checkpoint and continues exactly where it left off.
"""

from __future__ import annotations

import copy
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
from diffusers import DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from dspo.data.cache import PairCache, load_cache
from dspo.models import load_pipeline
from dspo.objectives import Objective, get_objective, objective_kwargs

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


def batch_indices(n: int, local: int, seed: int, micro_step: int, processes: int, rank: int):
    """Rows of the cache for one micro-step of one process: epoch-wise shuffles, no repeats."""
    per_micro = local * processes
    per_epoch = max(1, n // per_micro)
    epoch, position = divmod(micro_step, per_epoch)
    order = torch.randperm(n, generator=_generator(seed, 1, epoch))
    start = position * per_micro + rank * local
    return order[start : start + local] if n >= per_micro else order[torch.arange(local) % n]


class PreferenceModel(torch.nn.Module):
    """The policy UNet and, when the objective needs it, its frozen reference.

    With LoRA the reference is the same UNet with its adapters disabled, so no second copy of
    the weights is held; otherwise it is a frozen copy of the starting weights.
    """

    def __init__(self, unet: UNet2DConditionModel, needs_reference: bool, lora: bool) -> None:
        super().__init__()
        self.unet = unet
        self.lora = lora
        self.reference = None
        if needs_reference and not lora:
            self.reference = copy.deepcopy(unet).requires_grad_(False).eval()

    def policy(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, text).sample

    @torch.no_grad()
    def ref(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:
            return self.reference(x, t, text).sample
        self.unet.disable_adapters()
        try:
            return self.unet(x, t, text).sample
        finally:
            self.unet.enable_adapters()

    def forward(self, batch: Mapping[str, torch.Tensor], objective: Objective, hparams, scheduler):
        return preference_loss(self, batch, objective, hparams, scheduler)


def preference_loss(model: PreferenceModel, batch, objective: Objective, hparams, scheduler):
    """Noise a batch of pairs, run policy/reference, and evaluate the objective."""
    lat_w, lat_l, noise, t = batch["latents_w"], batch["latents_l"], batch["noise"], batch["t"]
    text, text_l = batch["text_w"], batch["text_l"]

    def target_of(latents: torch.Tensor) -> torch.Tensor:
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, t)
        return noise

    x_w = scheduler.add_noise(lat_w, noise, t)
    if objective.preferred_only:
        pred = model.policy(x_w, t, text)
        ref = model.ref(x_w, t, text) if objective.needs_reference else None
        return objective.fn(pred, ref, target_of(lat_w), **hparams)

    x = torch.cat([x_w, scheduler.add_noise(lat_l, noise, t)])
    t2, text2 = torch.cat([t, t]), torch.cat([text, text])
    pred = model.policy(x, t2, text2)
    ref = model.ref(x, t2, text2) if objective.needs_reference else None
    if objective.reference_target:
        # DDSPO: the reference's own score, given the original prompt for the preferred
        # image and the degraded prompt for the rejected one, is the regression target.
        target = torch.cat([ref[: len(t)], model.ref(x[len(t) :], t, text_l)])
    else:
        target = torch.cat([target_of(lat_w), target_of(lat_l)])
    return objective.fn(pred, ref, target, **hparams)


def make_batch(
    cache: PairCache, rows: torch.Tensor, cfg: Mapping[str, Any], gen: torch.Generator, scheduler
) -> dict[str, torch.Tensor]:
    """Latents and text embeddings of the rows, with prompt dropout, noise and timesteps."""
    text_w = cache.embeddings[cache.text_w[rows]].float()
    text_l = cache.embeddings[cache.text_l[rows]].float()
    drop = torch.rand(len(rows), generator=gen) < cfg["prompt_dropout"]
    text_w[drop] = cache.empty.float()
    text_l[drop] = cache.empty.float()
    lat_w = cache.latents_w[rows].float()
    return {
        "latents_w": lat_w,
        "latents_l": cache.latents_l[rows].float(),
        "text_w": text_w,
        "text_l": text_l,
        "noise": torch.randn(lat_w.shape, generator=gen),
        "t": torch.randint(scheduler.config.num_train_timesteps, (len(rows),), generator=gen),
    }


def _latest_checkpoint(checkpoints: Path) -> Path | None:
    done = sorted(p.parent for p in checkpoints.glob("step-*/state.json"))
    return done[-1] if done else None


def train(
    cfg: Mapping[str, Any], *, cache_dir: Path, base_model: str, out_dir: Path, run_dir: Path
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on the cache with one method's resolved config."""
    started = time.time()
    objective = get_objective(cfg["objective"])
    hparams = objective_kwargs(cfg["objective"], cfg.get("params") or {})
    accelerator = Accelerator(
        mixed_precision=cfg["mixed_precision"],
        log_with=cfg["report_to"] or None,
        project_dir=str(run_dir),
    )
    accum = accumulation_steps(cfg["pairs_per_step"], cfg["local_pairs"], accelerator.num_processes)
    torch.manual_seed(cfg["seed"])
    cache = load_cache(cache_dir)
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")
    if cache.manifest["latent_shape"][0] != unet.config.in_channels:
        raise ValueError(
            f"cache {cache_dir} has {cache.manifest['latent_shape'][0]} latent channels, "
            f"the UNet of {base_model} expects {unet.config.in_channels}"
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
    model = PreferenceModel(unet, objective.needs_reference, bool(lora))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = _optimizer(trainable, cfg)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(s, cfg["warmup_steps"], cfg["lr_schedule"])
    )
    model, optimizer, lr_sched = accelerator.prepare(model, optimizer, lr_sched)

    checkpoints = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    start_step = 0
    latest = _latest_checkpoint(checkpoints)
    if latest is not None:
        accelerator.load_state(str(latest))
        start_step = json.loads((latest / "state.json").read_text())["step"]
        accelerator.print(f"resuming from {latest} (step {start_step})")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if metrics_path.exists():
            kept = [
                line
                for line in metrics_path.read_text().splitlines()
                if json.loads(line)["step"] <= start_step
            ]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    if cfg["report_to"]:
        accelerator.init_trackers("train", config={"method": cfg.get("name", "")})

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
        sums: dict[str, float] = {}
        for micro in range(accum):
            micro_step = step * accum + micro
            rows = batch_indices(
                len(cache),
                cfg["local_pairs"],
                cfg["seed"],
                micro_step,
                accelerator.num_processes,
                accelerator.process_index,
            )
            gen = _generator(cfg["seed"], 2, micro_step, accelerator.process_index)
            batch = {
                k: v.to(accelerator.device)
                for k, v in make_batch(cache, rows, cfg, gen, scheduler).items()
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
            record = {"step": done, "lr": lr_sched.get_last_lr()[0], **sums}
            if accelerator.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if cfg["report_to"]:
                accelerator.log(record, step=done)
            bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0 and done < steps:
            _save_checkpoint(accelerator, checkpoints, done, cfg["checkpoints_kept"])

    accelerator.wait_for_everyone()
    summary = {
        "method": cfg.get("name", objective.name),
        "objective": objective.name,
        "steps": steps,
        "accumulation": accum,
        "processes": accelerator.num_processes,
        "resumed_from": start_step,
        "seconds": round(time.time() - started, 1),
    }
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model).unet, cfg, base_model, out_dir)
        (out_dir / MODEL_CONFIG).write_text(json.dumps({"config": cfg, **summary}, indent=2) + "\n")
    accelerator.end_training()
    return summary


def _save_checkpoint(accelerator: Accelerator, checkpoints: Path, step: int, kept: int) -> None:
    path = checkpoints / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # state.json is written last: a checkpoint without it was cut short and is ignored.
        (path / "state.json").write_text(json.dumps({"step": step}) + "\n")
        complete = sorted(p.parent for p in checkpoints.glob("step-*/state.json"))
        for old in complete[:-kept]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_model(unet: UNet2DConditionModel, cfg: Mapping[str, Any], base_model: str, out_dir: Path):
    """Write what users load: a full diffusers pipeline, or standard LoRA safetensors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("lora"):
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        StableDiffusionPipeline.save_lora_weights(
            out_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        )
        return
    pipe = load_pipeline(base_model)
    pipe.unet = unet.to(torch.float32)
    pipe.save_pretrained(out_dir)
