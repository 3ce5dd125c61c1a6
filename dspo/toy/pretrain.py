"""Pre-train the toy world's base model on unlabelled renders.

SD1.5 was trained on web images of mixed quality; the toy base model is trained the same
way on toy renders with their defects, so that preference fine-tuning has something to fix.
Two stages: the VAE learns to reconstruct renders, then the UNet and the text encoder learn
to denoise the VAE's latents of captioned renders. The UNet and text encoder are saved with
their EMA weights, and every fine-tuned method starts from exactly these weights.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dspo import toy
from dspo.core.content import write_content_record
from dspo.families import family_class


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _train_vae(vae, images: torch.Tensor, cfg: Mapping[str, Any], rng: torch.Generator, log):
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    vae.train()
    for step in tqdm(range(cfg["steps"]), desc="pretrain vae", mininterval=5):
        idx = torch.randint(len(images), (cfg["batch_size"],), generator=rng)
        batch = images[idx]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=rng)).sample
        recon_loss = F.mse_loss(recon, batch)
        loss = recon_loss + cfg["kl_weight"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg["steps"] - 1:
            log({"stage": "vae", "step": step, "loss": loss.item(), "recon_mse": recon_loss.item()})
    vae.eval()


@torch.no_grad()
def _encode_latents(vae, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat(
        [
            vae.encode(images[i : i + batch_size]).latent_dist.mean
            for i in range(0, len(images), batch_size)
        ]
    )


class _TrainedText:
    """SD's conditioning in pre-training: its one text encoder learns with the UNet."""

    def __init__(self, pipe, captions: list[str]) -> None:
        self.encoder = pipe.text_encoder
        self.modules = [self.encoder]  # trained, and kept with their EMA weights

        def ids(texts: list[str]) -> torch.Tensor:
            return pipe.tokenizer(
                texts,
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids

        self.tokens, self.empty = ids(captions), ids([""])

    def __call__(self, idx: torch.Tensor, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.tokens[idx].clone()
        ids[drop] = self.empty
        return {"embeddings": self.encoder(ids)[0]}


class _FixedText:
    """A flow family's conditioning in pre-training: its text encoders (two CLIPs and a T5
    for SD3) stay as built, so each distinct caption is encoded once; only the denoiser
    learns to read their features."""

    def __init__(self, pipe, family, captions: list[str]) -> None:
        unique = sorted(set(captions))
        row = {c: i for i, c in enumerate(unique)}
        self.modules: list[torch.nn.Module] = []
        self.rows = torch.tensor([row[c] for c in captions])
        with torch.no_grad():
            self.text = family.encode_prompts(pipe, unique)
            self.empty = family.encode_prompts(pipe, [""])

    def __call__(self, idx: torch.Tensor, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        cond = {}
        for key, value in self.text.items():
            rows = value[self.rows[idx]].clone()
            rows[drop] = self.empty[key]
            cond[key] = rows
        return cond


def _train_denoiser(
    pipe, family, text, latents, cfg: Mapping[str, Any], rng: torch.Generator, log
) -> None:
    """Denoising pre-training in the family's own terms (its timesteps, noising and target)
    of the denoiser and whatever ``text`` trains; both keep their EMA weights."""
    denoiser = getattr(pipe, family.denoiser)
    text_modules = text.modules
    params = [p for m in (denoiser, *text_modules) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-2)
    warmup = max(1, cfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    emas = [copy.deepcopy(m).eval() for m in (denoiser, *text_modules)]
    ema_params = [p for m in emas for p in m.parameters()]
    for p in ema_params:
        p.requires_grad_(False)
    for module in (denoiser, *text_modules):
        module.train()
    running = 0.0
    for step in tqdm(range(cfg["steps"]), desc=f"pretrain {family.denoiser}", mininterval=5):
        idx = torch.randint(len(latents), (cfg["batch_size"],), generator=rng)
        x0 = latents[idx]
        # Empty captions teach the unconditional score that classifier-free guidance needs.
        drop = torch.rand(len(idx), generator=rng) < cfg["caption_dropout"]
        noise = torch.randn(x0.shape, generator=rng)
        t = family.sample_timesteps(len(idx), rng, x0.shape[1:])
        pred = family.predict(denoiser, family.add_noise(x0, noise, t), t, text(idx, drop))
        loss = F.mse_loss(pred, family.target(x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg["ema_decay"], (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        running += loss.item()
        if (step + 1) % 100 == 0 or step == cfg["steps"] - 1:
            log({"stage": "unet", "step": step, "loss": running / ((step % 100) + 1)})
            running = 0.0
    setattr(pipe, family.denoiser, emas[0])
    if text_modules:
        pipe.text_encoder = emas[1]


def _architecture(model: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture without the keys a preset set to null (to drop another family's)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return value

    return clean(model["architecture"])


def pretrain_toy_base(
    world: Mapping[str, Any], model: Mapping[str, Any], out_dir: Path, log_path: Path
) -> dict[str, Any]:
    """Build the tiny pipeline of model["architecture"], pre-train it, save it to out_dir."""
    started = time.time()
    cfg = model["pretrain"]
    torch.manual_seed(cfg["seed"])
    rng = torch.Generator().manual_seed(cfg["seed"])
    world_cfg = toy.ToyWorldConfig.from_dict(world)
    images, captions = toy.sample_unlabelled(
        world_cfg, np.random.default_rng(cfg["seed"]), cfg["n_images"]
    )
    words = sorted({w.strip(",.()") for c in captions for w in c.split()} - {""})
    architecture = _architecture(model)
    cls = family_class(architecture.pop("family", "sd"))
    pipe = cls.build(architecture, words, seed=cfg["seed"])
    family = cls(dict(pipe.scheduler.config))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:

        def log(record: dict[str, Any]) -> None:
            log_file.write(json.dumps({**record, "time_s": round(time.time() - started, 1)}) + "\n")
            log_file.flush()

        pixels = _images_to_tensor(images)
        _train_vae(pipe.vae, pixels, cfg["vae"], rng, log)
        latents = _encode_latents(pipe.vae, pixels)
        if getattr(pipe.vae.config, "shift_factor", None) is not None:
            # As SD3 and FLUX do: shift latents to zero mean before scaling them.
            shift = float(latents.mean())
            pipe.vae.register_to_config(shift_factor=shift)
            latents = latents - shift
        # As SD does: scale latents to unit variance so the noise schedule fits them.
        scaling = float(1.0 / latents.std())
        pipe.vae.register_to_config(scaling_factor=scaling)
        text = (
            _TrainedText(pipe, captions)
            if family.pretrain_trains_text
            else _FixedText(pipe, family, captions)
        )
        _train_denoiser(pipe, family, text, latents * scaling, cfg["unet"], rng, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    summary = {
        "images": len(images),
        "vocabulary": len(words),
        "scaling_factor": scaling,
        "family": family.name,
        "denoiser_parameters": sum(p.numel() for p in getattr(pipe, family.denoiser).parameters()),
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # SHA-256 of every file, once, now: the folder's content key (dspo.core.content) then changes
    # whenever the base is rebuilt in place, and resumed training and images follow it.
    write_content_record(out_dir)
    return summary
