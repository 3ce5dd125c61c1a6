"""One part of a latent cache: how pairs are encoded (:class:`CacheSettings`), which latent files
and prompts a part holds (:class:`PartPlan`), and the encoding of a part's latent files and prompt
tensors into its own folder (:func:`encode_part`). The format is :mod:`dspo.data.cache`'s; the
parts are joined by :mod:`dspo.data.cache_gather`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dspo.core.content import file_sha256
from dspo.core.dtypes import resolve_dtype
from dspo.core.files import part_folder
from dspo.data.cache_images import CROPS, load_image
from dspo.data.pair_table import REJECTED_CAPTION
from dspo.families import load_family
from dspo.families.base import Family, empty_name
from dspo.families.sd_pipeline import load_pipeline

SIDES = ("w", "l")
# Prompts per text-encoder call. Fixed, so that parts split prompts on one grid (PartPlan).
TEXT_BATCH = 256


def _image_rng(seed: int, pair_id: int, side: str) -> np.random.Generator:
    """One generator per image, so crops and flips do not depend on shard or batch sizes."""
    return np.random.default_rng([seed, pair_id, SIDES.index(side)])


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


@dataclass(frozen=True)
class CacheSettings:
    """How pairs are encoded: everything but the model that decides a cache's contents."""

    resolution: int
    dtype: str = "float16"
    shard_size: int = 4096
    batch_size: int = 64
    crop: str = "center"
    flip: bool = False
    seed: int = 0
    per_visit: bool = False

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"cache.crop {self.crop!r} is not one of {CROPS}")
        for key in ("resolution", "shard_size", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"cache.{key} must be at least 1, got {getattr(self, key)}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CacheSettings:
        """The settings from the workflow's ``cache`` slice (other keys, e.g. shards, ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclass(frozen=True)
class PartPlan:
    """What one part encodes: whole latent files and a block of the sorted unique prompts.

    Both are cut on fixed grids (``shard_size`` pairs per file, ``TEXT_BATCH`` prompts per
    text-encoder call) that do not depend on the number of parts, so every model call sees the
    same batch whatever the sharding, and N parts gather into the very cache one part builds.
    """

    files: range
    prompts: range


def plan_parts(n_pairs: int, n_prompts: int, shard_size: int, parts: int) -> list[PartPlan]:
    """Split ``n_pairs`` pairs and ``n_prompts`` prompts into ``parts`` contiguous blocks."""
    if parts < 1:
        raise ValueError(f"cache.shards must be at least 1, got {parts}")
    n_files = -(-n_pairs // shard_size)
    n_batches = -(-n_prompts // TEXT_BATCH)
    plans = []
    for k in range(parts):
        files = range(k * n_files // parts, (k + 1) * n_files // parts)
        first, last = k * n_batches // parts, (k + 1) * n_batches // parts
        prompts = range(first * TEXT_BATCH, min(last * TEXT_BATCH, n_prompts))
        plans.append(PartPlan(files, prompts))
    return plans


def _prompt_rows(texts: pd.DataFrame) -> tuple[list[int], list[int], list[str]]:
    """Each pair's row in the sorted unique prompts, for both sides, and those prompts."""
    captions = texts["caption"].tolist()
    rejected = texts[REJECTED_CAPTION].tolist() if REJECTED_CAPTION in texts else captions
    unique = sorted(set(captions) | set(rejected))
    row = {text: i for i, text in enumerate(unique)}
    return [row[c] for c in captions], [row[c] for c in rejected], unique


def _encode_side(
    family: Family, pipe, chunk: pd.DataFrame, side: str, settings: CacheSettings
) -> dict[str, torch.Tensor]:
    """VAE latents (as the denoiser sees them) and size/crop records of one side of a chunk;
    with ``per_visit`` also the posterior's deviation, and with ``flip`` the mirrors."""
    mirrors = settings.per_visit and settings.flip
    out: dict[str, list] = {}

    def keep(key: str, value) -> None:
        out.setdefault(key, []).append(value)

    for b in range(0, len(chunk), settings.batch_size):
        part = chunk.iloc[b : b + settings.batch_size]
        images = [
            load_image(
                data,
                settings.resolution,
                crop=settings.crop,
                # Per visit, both orientations are kept; none is chosen here.
                flip=settings.flip and not settings.per_visit,
                rng=_image_rng(settings.seed, int(pid), side),
            )
            for data, pid in zip(part[f"jpg_{side}"], part["pair_id"], strict=True)
        ]
        pixels = torch.from_numpy(np.stack([im.pixels for im in images]))
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        mean, std = family.encode_posterior(pipe, pixels)
        keep(f"latents_{side}", mean)
        keep(f"original_size_{side}", torch.tensor([im.original_size for im in images]))
        keep(f"crop_{side}", torch.tensor([im.crop_top_left for im in images]))
        if settings.per_visit:
            keep(f"std_{side}", std)
        if mirrors:
            mean, std = family.encode_posterior(pipe, pixels.flip(-1))
            keep(f"mirror_{side}", mean)
            keep(f"mirror_std_{side}", std)
            keep(f"crop_mirror_{side}", torch.tensor([im.mirror_crop_top_left for im in images]))
    storage = resolve_dtype(settings.dtype)
    tensors = {key: torch.cat(values).cpu() for key, values in out.items()}
    # Latents and deviations in the storage dtype; sizes and crop corners stay int64.
    return {k: v.to(storage) if v.is_floating_point() else v for k, v in tensors.items()}


def _latent_file(
    family: Family,
    pipe,
    load_rows: Callable[[int, int], pd.DataFrame],
    rows: slice,
    text_rows: tuple[list[int], list[int]],
    settings: CacheSettings,
) -> dict[str, torch.Tensor]:
    """The tensors of one latent file: pairs ``rows`` of the table."""
    chunk = load_rows(rows.start, rows.stop)
    if len(chunk) != rows.stop - rows.start:
        raise ValueError(f"pair rows {rows.start}:{rows.stop}: got {len(chunk)} rows")
    tensors = {}
    for side in SIDES:
        tensors.update(_encode_side(family, pipe, chunk, side, settings))
    return {
        **tensors,
        "text_w": torch.tensor(text_rows[0][rows]),
        "text_l": torch.tensor(text_rows[1][rows]),
        "pair_id": torch.tensor(chunk["pair_id"].to_numpy(np.int64)),
    }


def _encoded(family: Family, pipe, prompts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    """``family.encode_prompts``, checked to return exactly the family's ``text_keys``."""
    encoded = family.encode_prompts(pipe, prompts, **kwargs)
    if sorted(encoded) != sorted(family.text_keys):
        raise ValueError(
            f"model family {family.name!r}: encode_prompts returned {sorted(encoded)}, "
            f"its text_keys are {sorted(family.text_keys)}"
        )
    return encoded


def _text_tensors(
    family: Family, pipe, prompts: list[str], storage: torch.dtype, empty: bool
) -> dict[str, torch.Tensor]:
    """The family's prompt tensors of ``prompts``, by its ``text_keys``, and (for one part
    only) the empty prompt's, by `empty_name`."""
    tensors = {}
    if prompts:
        encoded = _encoded(family, pipe, prompts, batch_size=TEXT_BATCH)
        tensors.update({key: value.to(storage) for key, value in encoded.items()})
    if empty:
        encoded = _encoded(family, pipe, [""])
        tensors.update({empty_name(key): value.to(storage) for key, value in encoded.items()})
    return tensors


@torch.no_grad()
def encode_part(
    texts: pd.DataFrame,
    load_rows: Callable[[int, int], pd.DataFrame],
    model: str,
    out_dir: Path,
    settings: CacheSettings,
    *,
    part: int = 0,
    parts: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Encode part ``part`` of ``parts`` of a pair table into the folder ``out_dir``.

    ``texts`` holds every pair's ``caption`` (and ``caption_l`` when the rejected image has its
    own prompt), in pair order; ``load_rows(start, stop)`` returns the canonical rows
    ``start:stop`` with their images, so a part reads only its own images. The part is written
    in a temporary folder beside ``out_dir`` and renamed into place when complete.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    text_w, text_l, unique = _prompt_rows(texts)
    plan = plan_parts(len(texts), len(unique), settings.shard_size, parts)[part]
    family = load_family(model)
    pipe = load_pipeline(model, device=device, without=(family.denoiser,))
    with part_folder(out_dir, "cache") as (tmp, info):
        files, latent_shape = [], None
        for index in tqdm(plan.files, desc=f"cache part {part}", mininterval=5):
            start = index * settings.shard_size
            rows = slice(start, min(start + settings.shard_size, len(texts)))
            tensors = _latent_file(family, pipe, load_rows, rows, (text_w, text_l), settings)
            name = f"latents-{index:05d}.safetensors"
            _save(tensors, tmp / name)
            # The checksum is taken once, as the shard is written; every load verifies it.
            files.append(
                {"file": name, "pairs": rows.stop - rows.start, "sha256": file_sha256(tmp / name)}
            )
            latent_shape = list(tensors["latents_w"].shape[1:])
        storage = resolve_dtype(settings.dtype)
        prompts = unique[plan.prompts.start : plan.prompts.stop]
        text = _text_tensors(family, pipe, prompts, storage, empty=part == 0)
        text_file = f"text-{part:05d}.safetensors" if text else None
        if text_file:
            _save(text, tmp / text_file)
        info |= {
            "model": str(model),
            "family": family.name,
            **asdict(settings),
            "scaling_factor": float(pipe.vae.config.scaling_factor),
            "part": part,
            "parts": parts,
            "pairs": len(texts),
            "prompts": len(unique),
            "prompt_rows": [plan.prompts.start, plan.prompts.stop],
            "latent_shape": latent_shape,
            "text_file": text_file,
            "files": files,
        }
    return info
