"""Text-guided image editing for evaluation (the paper's Table 4).

Each model edits the editing set's source images image-to-image (SDEdit): the source is
encoded, noised to `strength` of the schedule, and denoised under the edit prompt with
classifier-free guidance. The noise of each (prompt, seed) comes from one seeded generator,
so every model starts its edit from the same noised source.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dspo.core.seeding import seeded_generator
from dspo.families import pipeline_family
from dspo.generation.sample import MANIFEST_COLUMNS, batches_to_make, image_jobs, save_image


def edit_generator(prompt_id: int, seed: int) -> torch.Generator:
    """The generator of one (prompt, seed), identical for every model."""
    return seeded_generator(seed, prompt_id)


def edit(
    pipe: DiffusionPipeline,
    editing: pd.DataFrame,
    out_dir: Path,
    *,
    seeds: Sequence[int],
    guidance: Sequence[float],
    steps: int,
    strength: float,
    resolution: int,
    scheduler: str = "ddim",
    batch_size: int = 64,
    key: str = "",
) -> pd.DataFrame:
    """Edit every source image at every (seed, guidance) into PNG files; return the manifest.

    ``editing`` has the columns of `dspo.data.prompts.load_editing_set`. ``key`` is the
    :func:`dspo.generation.sample.run_key` of the model and settings; each image's key adds its
    source image's hash. An image on disk is kept when its key matches and it decodes, so a job cut
    short and rerun only makes what is missing, and anything changed or damaged is remade.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"editing strength must be in (0, 1], got {strength}")
    family = pipeline_family(pipe)
    family.sampling_scheduler(pipe, scheduler)
    denoiser = getattr(pipe, family.denoiser)
    sources = {
        int(row.prompt_id): Image.open(io.BytesIO(row.image))
        .convert("RGB")
        .resize((resolution, resolution), Image.Resampling.BICUBIC)
        for row in editing.itertuples()
    }
    settings = {
        "steps": steps,
        "strength": strength,
        "resolution": resolution,
        "scheduler": scheduler,
        "dtype": denoiser.dtype,
        "device": denoiser.device.type,
    }
    inputs = {
        int(row.prompt_id): hashlib.sha256(row.image).hexdigest() for row in editing.itertuples()
    }
    jobs = image_jobs(editing, seeds, guidance, key=key, settings=settings, inputs=inputs)
    for part, missing in tqdm(
        batches_to_make(jobs, out_dir, batch_size), desc="edit", mininterval=5
    ):
        images = family.edit(
            pipe,
            [j["prompt"] for j in part],
            [sources[j["prompt_id"]] for j in part],
            strength=strength,
            steps=steps,
            guidance=part[0]["guidance"],
            resolution=resolution,
            generators=[edit_generator(j["prompt_id"], j["seed"]) for j in part],
        )
        for job, image, write in zip(part, images, missing, strict=True):
            if write:
                save_image(image, out_dir / job["path"], job["key"])
    return pd.DataFrame(jobs, columns=MANIFEST_COLUMNS)
