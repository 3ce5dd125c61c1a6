"""Generate evaluation images for one model and one prompt set.

Every model is sampled from the same initial noise at a given (prompt, seed), so a win rate
compares two models on the same starting point rather than on luck of the draw.

Every PNG carries a key (a PNG text chunk) of everything that made it: the model's and, for
a LoRA folder, the base model's content keys, the sampling settings, the ``dspo`` source, and
the image's own prompt, seed and guidance. An image on disk is reused only when its key
equals the current one and it decodes in full; otherwise it is made again. Paths alone (which
encode only guidance, prompt and seed) would keep stale images after a model or a setting
changed at the same path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dspo.core.content import combined_key, content_key, source_key
from dspo.core.files import png_bytes, write_bytes_atomic
from dspo.core.image_keys import KEY_CHUNK, image_problem
from dspo.core.seeding import seeded_generator
from dspo.families import pipeline_family
from dspo.families.sd_pipeline import load_pipeline

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
MANIFEST_COLUMNS = ["prompt_set", "prompt_id", "prompt", "seed", "guidance", "path", "key"]


def is_lora_folder(model: str) -> bool:
    path = Path(model)
    return (path / LORA_WEIGHTS).exists() and not (path / "model_index.json").exists()


def run_key(model: str, base_model: str | None, settings: Mapping[str, Any]) -> str:
    """The key of what every image of a job shares: model weights, settings and code."""
    parts: dict[str, Any] = {"model": content_key(model), "settings": dict(settings)}
    if is_lora_folder(model):
        # The adapters are fused onto the base: a changed base changes every image.
        parts["base"] = content_key(base_model or "")
    return combined_key(**parts, code=source_key())


def sampling_dtype(dtype: str, device: str) -> str:
    """The configured dtype on an accelerator; float32 on the CPU, where half precision is
    emulated (slower than float32) and bfloat16 convolutions lose visible detail."""
    return "float32" if str(device).startswith("cpu") else dtype


def load_for_sampling(
    model: str, base_model: str, *, dtype: str = "float32", device: str = "cpu"
) -> DiffusionPipeline:
    """A full pipeline folder or hub id as it is; a LoRA folder fused onto the base model."""
    if is_lora_folder(model):
        pipe = load_pipeline(base_model, dtype=dtype, device=device)
        pipe.load_lora_weights(str(model))
        pipe.fuse_lora()
        return pipe
    return load_pipeline(model, dtype=dtype, device=device)


def initial_noise(shape: Sequence[int], prompt_id: int, seed: int) -> torch.Tensor:
    """The starting latent of one (prompt, seed), identical for every model."""
    gen = seeded_generator(seed, prompt_id)
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
    key: str = "",
) -> pd.DataFrame:
    """Sample every (prompt, seed, guidance) into PNG files; return the manifest.

    ``key`` is the :func:`run_key` of the model and settings. An image already on disk is
    kept when its key matches and it decodes, so a job cut short and rerun only makes what is
    missing, and a changed model, setting or damaged file is made again.
    """
    family = pipeline_family(pipe)
    family.sampling_scheduler(pipe, scheduler)
    shape = family.latent_shape(pipe, resolution)
    denoiser = getattr(pipe, family.denoiser)
    device, dtype = denoiser.device, denoiser.dtype
    settings = {"steps": steps, "resolution": resolution, "scheduler": scheduler}
    settings.update(dtype=dtype, device=device.type)
    jobs = image_jobs(prompts, seeds, guidance, key=key, settings=settings)
    for part, missing in tqdm(
        batches_to_make(jobs, out_dir, batch_size), desc="generate", mininterval=5
    ):
        latents = torch.stack([initial_noise(shape, j["prompt_id"], j["seed"]) for j in part])
        images = family.sample(
            pipe,
            [j["prompt"] for j in part],
            latents,
            steps=steps,
            guidance=part[0]["guidance"],
            resolution=resolution,
        )
        for job, image, write in zip(part, images, missing, strict=True):
            if write:
                save_image(image, out_dir / job["path"], job["key"])
    return pd.DataFrame(jobs, columns=MANIFEST_COLUMNS)


def batches_to_make(
    jobs: Sequence[dict], out_dir: Path, batch_size: int
) -> list[tuple[list[dict], list[bool]]]:
    """The pipeline calls that make the images not yet on disk: (jobs, which to write).

    A call's images depend on the batch they are computed in (float rounding differs with
    the batch's size and contents), so calls are cut as a run from scratch cuts them: the
    jobs in their fixed order in blocks of ``batch_size``, one call per guidance scale in a
    block (the scale is a call argument). A call holding a missing or stale image is run
    whole and writes only those, so a remade image equals the one a whole run makes.
    """
    calls = []
    for start in range(0, len(jobs), batch_size):
        block = jobs[start : start + batch_size]
        for g in sorted({job["guidance"] for job in block}):
            part = [job for job in block if job["guidance"] == g]
            missing = [not reusable(out_dir / job["path"], job["key"]) for job in part]
            if any(missing):
                calls.append((part, missing))
    return calls


def image_jobs(
    prompts: pd.DataFrame,
    seeds: Sequence[int],
    guidance: Sequence[float],
    *,
    key: str = "",
    settings: Mapping[str, Any] | None = None,
    inputs: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """One manifest row per (guidance, seed, prompt), with the image's path and key.

    The key joins the job's ``key`` and ``settings`` with the row's prompt, seed and guidance
    and, for edits, the hash of its source image (``inputs`` by prompt id).
    """
    settings = {k: str(v) for k, v in (settings or {}).items()}
    inputs = inputs or {}
    jobs = []
    for g in guidance:
        for seed in seeds:
            for row in prompts.itertuples():
                prompt_id = int(row.prompt_id)
                image_key = combined_key(
                    run=key,
                    settings=settings,
                    prompt=row.prompt,
                    seed=int(seed),
                    guidance=float(g),
                    source=inputs.get(prompt_id),
                )
                jobs.append(
                    {
                        "prompt_set": row.prompt_set,
                        "prompt_id": prompt_id,
                        "prompt": row.prompt,
                        "seed": int(seed),
                        "guidance": float(g),
                        "path": f"g{g:g}/p{prompt_id}-s{int(seed)}.png",
                        "key": image_key,
                    }
                )
    return jobs


def reusable(path: Path, key: str) -> bool:
    """True when ``path`` is a PNG made with ``key`` that decodes in full."""
    return image_problem(path, key) is None


def save_image(image: np.ndarray, path: Path, key: str = "") -> None:
    """An (H, W, 3) float image in [0, 1] as PNG with its key, written atomically: a cut job
    leaves no half-written file for the rerun to keep."""
    write_bytes_atomic(png_bytes(image, {KEY_CHUNK: key}), path)


def write_manifest(manifest: pd.DataFrame, path: Path, meta: dict[str, Any]) -> None:
    """The manifest parquet plus a JSON sidecar saying how the images were made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(path, index=False)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
