"""Generate evaluation images for one model and one prompt set.

Every model is sampled from the same initial noise at a given (prompt, seed), so a win rate
compares two models on the same starting point rather than on luck of the draw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dspo.models import load_pipeline, sampling_scheduler

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
MANIFEST_COLUMNS = ["prompt_set", "prompt_id", "prompt", "seed", "guidance", "path"]


def load_for_sampling(
    model: str, base_model: str, *, dtype: str = "float32", device: str = "cpu"
) -> DiffusionPipeline:
    """A full pipeline folder or hub id as it is; a LoRA folder fused onto the base model."""
    path = Path(model)
    if (path / LORA_WEIGHTS).exists() and not (path / "model_index.json").exists():
        pipe = load_pipeline(base_model, dtype=dtype, device=device)
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
        return pipe
    return load_pipeline(model, dtype=dtype, device=device)


def initial_noise(shape: Sequence[int], prompt_id: int, seed: int) -> torch.Tensor:
    """The starting latent of one (prompt, seed), identical for every model."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(prompt_id)) % (2**63 - 1))
    return torch.randn(tuple(shape), generator=gen)


def generate(
    pipe: DiffusionPipeline,
    prompts: pd.DataFrame,
    out_dir: Path,
    *,
    seeds: Sequence[int],
    guidance: Sequence[float],
    steps: int,
    resolution: int,
    scheduler: str = "ddim",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Sample every (prompt, seed, guidance) into PNG files; return the manifest.

    Images already on disk are kept, so a job cut short and rerun only makes what is missing.
    """
    sampling_scheduler(pipe, scheduler)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, resolution // scale, resolution // scale)
    jobs = image_jobs(prompts, seeds, guidance)
    todo = [job for job in jobs if not (out_dir / job["path"]).exists()]
    device, dtype = pipe.unet.device, pipe.unet.dtype
    for start in tqdm(range(0, len(todo), batch_size), desc="generate", mininterval=5):
        chunk = todo[start : start + batch_size]
        # One pipeline call per guidance scale: the scale is a call argument.
        for g in sorted({job["guidance"] for job in chunk}):
            part = [job for job in chunk if job["guidance"] == g]
            latents = torch.stack([initial_noise(shape, j["prompt_id"], j["seed"]) for j in part])
            images = pipe(
                prompt=[j["prompt"] for j in part],
                latents=latents.to(device, dtype),
                num_inference_steps=steps,
                guidance_scale=g,
                height=resolution,
                width=resolution,
                output_type="np",
            ).images
            for job, image in zip(part, images, strict=True):
                save_image(image, out_dir / job["path"])
    return pd.DataFrame(jobs, columns=MANIFEST_COLUMNS)


def image_jobs(
    prompts: pd.DataFrame, seeds: Sequence[int], guidance: Sequence[float]
) -> list[dict[str, Any]]:
    """One manifest row per (guidance, seed, prompt), with the image's path in the folder."""
    return [
        {
            "prompt_set": row.prompt_set,
            "prompt_id": int(row.prompt_id),
            "prompt": row.prompt,
            "seed": int(seed),
            "guidance": float(g),
            "path": f"g{g:g}/p{int(row.prompt_id)}-s{int(seed)}.png",
        }
        for g in guidance
        for seed in seeds
        for row in prompts.itertuples()
    ]


def save_image(image: np.ndarray, path: Path) -> None:
    """An (H, W, 3) float image in [0, 1] as PNG, written atomically: a cut job leaves no
    half-written file for the rerun to keep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp)
    tmp.replace(path)


def write_manifest(manifest: pd.DataFrame, path: Path, meta: dict[str, Any]) -> None:
    """The manifest parquet plus a JSON sidecar saying how the images were made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(path, index=False)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
