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

from dspo.content import write_content_record
from dspo.data import toy
from dspo.models import build_pipeline


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


def _train_denoiser(pipe, latents, captions, cfg: Mapping[str, Any], rng: torch.Generator, log):
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-2)
    warmup = max(1, cfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = [*ema_unet.parameters(), *ema_text.parameters()]
    for p in ema_params:
        p.requires_grad_(False)
    tokens = pipe.tokenizer(
        captions,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    empty = pipe.tokenizer(
        [""], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    unet.train()
    text_encoder.train()
    running = 0.0
    for step in tqdm(range(cfg["steps"]), desc="pretrain unet", mininterval=5):
        idx = torch.randint(len(latents), (cfg["batch_size"],), generator=rng)
        x0 = latents[idx]
        ids = tokens[idx].clone()
        # Empty captions teach the unconditional score that classifier-free guidance needs.
        drop = torch.rand(len(idx), generator=rng) < cfg["caption_dropout"]
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(idx),), generator=rng)
        pred = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
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
    pipe.unet, pipe.text_encoder = ema_unet, ema_text


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
    pipe = build_pipeline(model["architecture"], words, seed=cfg["seed"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:

        def log(record: dict[str, Any]) -> None:
            log_file.write(json.dumps({**record, "time_s": round(time.time() - started, 1)}) + "\n")
            log_file.flush()

        pixels = _images_to_tensor(images)
        _train_vae(pipe.vae, pixels, cfg["vae"], rng, log)
        latents = _encode_latents(pipe.vae, pixels)
        # As SD does: scale latents to unit variance so the noise schedule fits them.
        scaling = float(1.0 / latents.std())
        pipe.vae.register_to_config(scaling_factor=scaling)
        _train_denoiser(pipe, latents * scaling, captions, cfg["unet"], rng, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    summary = {
        "images": len(images),
        "vocabulary": len(words),
        "scaling_factor": scaling,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # SHA-256 of every file, once, now: the folder's content key (dspo.content) then changes
    # whenever the base is rebuilt in place, and resumed training and images follow it.
    write_content_record(out_dir)
    return summary
