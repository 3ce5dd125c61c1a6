"""The config files of a diffusers pipeline, from a local folder or a hub id.

What a family needs before it loads a model: the pipeline's ``model_index.json`` (which
classes it holds) and one component's own config file (the scheduler's noise schedule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def model_index(path: str | Path) -> dict[str, Any]:
    """The ``model_index.json`` of a pipeline folder or hub id."""
    local = Path(path) / "model_index.json"
    if local.exists():
        return json.loads(local.read_text())
    if Path(path).is_dir():
        raise ValueError(
            f"{local} does not exist: {path} is not a diffusers pipeline folder "
            "(a LoRA folder belongs to the family of its base model)"
        )
    from diffusers import DiffusionPipeline

    return dict(DiffusionPipeline.load_config(str(path)))


def component_config(path: str | Path, subfolder: str, file_name: str) -> dict[str, Any]:
    """One component's own config file (``scheduler/scheduler_config.json``,
    ``unet/config.json``) of a pipeline folder or hub id.

    Not ``DiffusionPipeline.load_config(path, subfolder=...)``: that reads the pipeline's
    model_index.json whatever the subfolder, so a scheduler built from it silently has the
    library's default noise schedule instead of the checkpoint's.
    """
    local = Path(path) / subfolder / file_name
    if local.exists():
        return json.loads(local.read_text())
    if Path(path).is_dir():
        raise ValueError(f"{local} does not exist: {path} is not a complete pipeline folder")
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(str(path), file_name, subfolder=subfolder)).read_text())
