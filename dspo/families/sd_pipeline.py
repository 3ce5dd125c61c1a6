"""Load diffusers pipelines of any family.

Every model the workflow touches goes through `load_pipeline`, whether it is a hub id
(``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a local folder written by
``save_pretrained`` (the toy base model, a fine-tuned method). What is particular to a
family (building a random-init one, encoding prompts, samplers) is in its own module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dspo.core.dtypes import resolve_dtype

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def load_pipeline(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    without: Sequence[str] = (),
) -> DiffusionPipeline:
    """Load a diffusers pipeline from a hub id or a local ``save_pretrained`` folder.

    The pipeline class comes from the folder's ``model_index.json``, so SD1.5 and SDXL folders
    both load. A local path that does not exist fails here with its name, rather than deep
    inside a hub lookup.
    """
    from diffusers import DiffusionPipeline  # seconds to import: only where a model loads

    text = str(path)
    _check_model_source(text)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    # SD1.x folders list a safety checker; loading it would cost memory and black out images.
    if "safety_checker" in DiffusionPipeline.load_config(text):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    # Components a job does not use are not loaded (the cache needs no denoiser: FLUX's is
    # 24 GB in bf16).
    kwargs.update(dict.fromkeys(without))
    pipe = DiffusionPipeline.from_pretrained(text, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_model_source(text: str) -> None:
    """Fail early, naming the path, when a model is neither a local folder nor a hub id."""
    if Path(text).exists():
        return
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        return
    raise FileNotFoundError(
        f"model {text!r} is neither an existing folder nor a hub id (owner/name)"
    )
