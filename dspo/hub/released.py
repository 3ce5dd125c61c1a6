"""Released models: an existing model a method entry names, sampled and scored untrained.

A method entry ``{model: SOURCE}`` (a hub id or a local folder) is imported into
``results/models/<method>/``, where a trained model would be saved, so sampling, scoring and
the tables treat it like any other model. Three layouts are recognised, by their files:

- a whole diffusers pipeline (``model_index.json``): copied as it is;
- a denoiser alone (``unet/`` or ``transformer/`` with its ``config.json``, no
  ``model_index.json``): the base pipeline's other parts are combined with it, as the released
  Diffusion-DPO and Diffusion-KTO checkpoints are meant to be used;
- LoRA weights (``pytorch_lora_weights.safetensors``): copied; sampling fuses them onto the
  base model (``dspo.generation.sample.load_for_sampling``).

Files are copied byte for byte (no load and save), so the imported weights equal the source's.
The import records its source, layout and the source's content key in ``released.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dspo.core.content import content_key, write_content_record

MODEL_INDEX = "model_index.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
DENOISERS = ("unet", "transformer")
RECORD = "released.json"
# Hub snapshot housekeeping that is no part of a model.
_SKIPPED = (".cache", ".git*", "*.md", ".snakemake_timestamp")


def layout(folder: Path) -> str:
    """``pipeline``, ``denoiser`` or ``lora``; a ValueError naming what the folder holds
    when it is none of them."""
    if (folder / MODEL_INDEX).is_file():
        return "pipeline"
    if any((folder / name / "config.json").is_file() for name in DENOISERS):
        return "denoiser"
    if (folder / LORA_WEIGHTS).is_file():
        return "lora"
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
    raise ValueError(
        f"model {str(folder)!r} is no diffusers pipeline ({MODEL_INDEX}), denoiser folder "
        f"({' or '.join(f'{d}/config.json' for d in DENOISERS)}) or LoRA weights "
        f"({LORA_WEIGHTS}); found: {found}"
    )


def local_copy(source: str) -> Path:
    """A local folder as it is; a hub id's snapshot folder (downloaded, or from the cache
    when offline)."""
    if Path(source).exists():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def _combine(denoiser_folder: Path, base: Path, out: Path) -> str:
    """The base pipeline's files with its denoiser folder replaced by the released one."""
    index = json.loads((base / MODEL_INDEX).read_text())
    name = next((d for d in DENOISERS if d in index), None)
    if name is None or not (denoiser_folder / name / "config.json").is_file():
        held = [d for d in DENOISERS if (denoiser_folder / d).is_dir()]
        raise ValueError(
            f"model {str(denoiser_folder)!r} holds {held}, but the base pipeline's denoiser "
            f"is {name!r}"
        )
    shutil.copytree(base, out, ignore=shutil.ignore_patterns(name, *_SKIPPED))
    shutil.copytree(denoiser_folder / name, out / name, ignore=shutil.ignore_patterns(*_SKIPPED))
    return name


def import_model(source: str, base_model: str, out: Path) -> dict[str, Any]:
    """Write ``source`` (hub id or folder) as a model folder at ``out``; return its record.

    A folder already at ``out`` is never overwritten: the workflow removes its output first,
    and a user's own folder there is an error.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; move it aside to import {source!r} again")
    folder = local_copy(source)
    kind = layout(folder)
    work = out.with_name(out.name + ".importing")
    if work.exists():
        shutil.rmtree(work)
    if kind == "denoiser":
        _combine(folder, local_copy(base_model), work)
    elif kind == "pipeline":
        shutil.copytree(folder, work, ignore=shutil.ignore_patterns(*_SKIPPED))
    else:
        work.mkdir(parents=True)
        shutil.copyfile(folder / LORA_WEIGHTS, work / LORA_WEIGHTS)
    record = {
        "source": source,
        "layout": kind,
        "source_key": content_key(folder),
        "base": base_model if kind != "pipeline" else None,
    }
    (work / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    record["key"] = write_content_record(work)
    work.rename(out)
    return record
