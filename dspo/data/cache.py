"""A cache of VAE latents and text embeddings for preference pairs.

Training reads latents instead of decoding JPEGs and running the VAE and text encoder at
every step. The cache is a folder of sharded safetensors plus ``manifest.json``:

- ``latents-NNNNN.safetensors``: ``latents_w``, ``latents_l`` (pairs, C, h, w), already
  multiplied by the VAE's scaling factor; ``text_w``, ``text_l`` (pairs,) row indices into
  the text embeddings (equal for human pairs; DDSPO's rejected image has its own prompt);
  ``pair_id`` (pairs,).
  ``original_size_w``, ``original_size_l`` (pairs, 2): each image's (height, width) before
  resizing; ``crop_w``, ``crop_l`` (pairs, 2): the (top, left) corner of its crop in the resized
  (and, when flipped, mirrored) image. SDXL's UNet is conditioned on both (its time ids).
- ``text.safetensors``: ``embeddings`` (unique prompts, tokens, dim) and ``empty`` (1, tokens,
  dim), the embedding of the empty prompt used for prompt dropout; for SDXL also ``pooled``
  (unique prompts, dim) and ``empty_pooled`` (1, dim).
- ``manifest.json``: the model, its family (``sd`` or ``sdxl``), resolution, crop and flip
  settings, dtype and scaling factor it was built with, the shards and their sizes.

Latents are the VAE posterior mean; SD's posterior standard deviation is negligible next to
the noise the trainer adds.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dspo.models import encode_text, load_pipeline, model_family, resolve_dtype

MANIFEST = "manifest.json"
SIDES = ("w", "l")


CROPS = ("center", "random")


@dataclass(frozen=True)
class PreparedImage:
    """Pixels as the VAE sees them, and where they came from (SDXL's size conditioning)."""

    pixels: np.ndarray
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


def load_image(
    data: bytes,
    resolution: int,
    *,
    crop: str = "center",
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> PreparedImage:
    """JPEG/PNG bytes -> (3, r, r) float32 in [-1, 1]: shorter side resized to r, then cropped.

    ``crop`` is ``center`` or ``random``; ``flip`` mirrors the image with probability 1/2 before
    cropping (paper D.3). Random crops and flips draw from ``rng``. The recorded crop corner
    refers to the image as cropped, mirrored or not.
    """
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r} is not one of {CROPS}")
    if (crop == "random" or flip) and rng is None:
        raise ValueError("random crops and flips need a seeded rng")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    if scale != 1.0:
        size = (
            max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    spare_h, spare_w = image.height - resolution, image.width - resolution
    if crop == "random":
        top, left = int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))
    else:
        top, left = spare_h // 2, spare_w // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return PreparedImage(pixels, original, (top, left))


def prepare_image(data: bytes, resolution: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 (3, r, r) in [-1, 1]: shorter side resized, centre-cropped."""
    return load_image(data, resolution).pixels


def _image_rng(seed: int, pair_id: int, side: str) -> np.random.Generator:
    """One generator per image, so crops and flips do not depend on shard or batch sizes."""
    return np.random.default_rng([seed, pair_id, SIDES.index(side)])


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _encode_side(
    pipe, chunk: pd.DataFrame, side: str, resolution: int, augment: dict[str, Any], batch_size: int
) -> dict[str, torch.Tensor]:
    """VAE latents (scaled) and size/crop records of one side of a chunk of pairs."""
    scaling = float(pipe.vae.config.scaling_factor)
    latents, sizes, crops = [], [], []
    for b in range(0, len(chunk), batch_size):
        part = chunk.iloc[b : b + batch_size]
        images = [
            load_image(
                data,
                resolution,
                crop=augment["crop"],
                flip=augment["flip"],
                rng=_image_rng(augment["seed"], int(pid), side),
            )
            for data, pid in zip(part[f"jpg_{side}"], part["pair_id"], strict=True)
        ]
        pixels = torch.from_numpy(np.stack([im.pixels for im in images]))
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(pixels).latent_dist.mean * scaling)
        sizes += [im.original_size for im in images]
        crops += [im.crop_top_left for im in images]
    return {
        f"latents_{side}": torch.cat(latents),
        f"original_size_{side}": torch.tensor(sizes, dtype=torch.int64),
        f"crop_{side}": torch.tensor(crops, dtype=torch.int64),
    }


def _write_text(pipe, unique: list[str], storage: torch.dtype, out_dir: Path) -> list[int]:
    """Embed every prompt and the empty prompt; return the hidden-state shape per prompt."""
    hidden, pooled = encode_text(pipe, unique)
    empty, empty_pooled = encode_text(pipe, [""])
    tensors = {"embeddings": hidden.to(storage), "empty": empty.to(storage)}
    if pooled is not None:
        tensors.update(pooled=pooled.to(storage), empty_pooled=empty_pooled.to(storage))
    _save_atomic(tensors, out_dir / "text.safetensors")
    return list(hidden.shape[1:])


@torch.no_grad()
def build_cache(
    pairs: pd.DataFrame,
    model: str,
    out_dir: Path,
    *,
    resolution: int,
    dtype: str = "float16",
    shard_size: int = 4096,
    batch_size: int = 64,
    device: str = "cpu",
    prompts_l: Sequence[str] | None = None,
    crop: str = "center",
    flip: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Encode ``pairs`` (the canonical pair table) with ``model``'s VAE and text encoder(s).

    ``prompts_l`` gives each rejected image its own prompt (DDSPO's degraded prompts);
    by default both images of a pair share the caption. ``crop`` is ``center`` or ``random``;
    ``flip`` mirrors half the images; both are seeded per image by ``seed`` and the pair id.
    """
    if crop not in CROPS:
        raise ValueError(f"cache.crop {crop!r} is not one of {CROPS}")
    augment = {"crop": crop, "flip": flip, "seed": seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(model, device=device)
    storage = resolve_dtype(dtype)
    captions = pairs["caption"].tolist()
    rejected = list(prompts_l) if prompts_l is not None else captions
    unique = sorted(set(captions) | set(rejected))
    row = {text: i for i, text in enumerate(unique)}
    text_shape = _write_text(pipe, unique, storage, out_dir)

    shards = []
    starts = range(0, len(pairs), shard_size)
    for shard, start in enumerate(tqdm(starts, desc="cache shards", mininterval=5)):
        chunk = pairs.iloc[start : start + shard_size]
        tensors = {}
        for side in SIDES:
            tensors.update(_encode_side(pipe, chunk, side, resolution, augment, batch_size))
        name = f"latents-{shard:05d}.safetensors"
        _save_atomic(
            {
                **{
                    k: v.to(storage).cpu() if k.startswith("latents") else v
                    for k, v in tensors.items()
                },
                "text_w": torch.tensor([row[c] for c in captions[start : start + shard_size]]),
                "text_l": torch.tensor([row[c] for c in rejected[start : start + shard_size]]),
                "pair_id": torch.tensor(chunk["pair_id"].to_numpy(np.int64)),
            },
            out_dir / name,
        )
        shards.append({"file": name, "pairs": len(chunk)})

    manifest = {
        "model": str(model),
        "family": model_family(pipe.unet),
        "resolution": resolution,
        **augment,
        "dtype": dtype,
        "scaling_factor": float(pipe.vae.config.scaling_factor),
        "pairs": len(pairs),
        "prompts": len(unique),
        "latent_shape": list(tensors["latents_w"].shape[1:]),
        "text_shape": text_shape,
        "shards": shards,
    }
    manifest["bytes_per_pair"] = round(
        sum((out_dir / s["file"]).stat().st_size for s in shards) / max(1, len(pairs)), 1
    )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class PairCache:
    """A cache loaded into memory: what the trainer samples batches from.

    ``pooled`` and ``empty_pooled`` are set for SDXL caches only.
    """

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    text_w: torch.Tensor
    text_l: torch.Tensor
    original_size_w: torch.Tensor
    original_size_l: torch.Tensor
    crop_w: torch.Tensor
    crop_l: torch.Tensor
    embeddings: torch.Tensor
    empty: torch.Tensor
    manifest: dict[str, Any]
    pooled: torch.Tensor | None = None
    empty_pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.latents_w)

    @property
    def family(self) -> str:
        return self.manifest["family"]


SHARD_KEYS = (
    "latents_w",
    "latents_l",
    "text_w",
    "text_l",
    "original_size_w",
    "original_size_l",
    "crop_w",
    "crop_l",
)


def load_cache(cache_dir: Path) -> PairCache:
    """Read every shard of a cache folder, checking the manifest against the files."""
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: build the cache first")
    manifest = json.loads(manifest_path.read_text())
    if "family" not in manifest:
        raise ValueError(f"{manifest_path} has no model family: rebuild the cache")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in SHARD_KEYS}
    for shard in manifest["shards"]:
        path = cache_dir / shard["file"]
        tensors = load_file(str(path))
        missing = sorted(set(SHARD_KEYS) - set(tensors))
        if missing:
            raise ValueError(f"{path} lacks {missing}: rebuild the cache")
        if len(tensors["latents_w"]) != shard["pairs"]:
            raise ValueError(
                f"{path}: {len(tensors['latents_w'])} pairs, manifest says {shard['pairs']}"
            )
        for key in parts:
            parts[key].append(tensors[key])
    text = load_file(str(cache_dir / "text.safetensors"))
    if manifest["family"] == "sdxl" and "pooled" not in text:
        raise ValueError(
            f"{cache_dir / 'text.safetensors'} of an SDXL cache has no pooled embeddings"
        )
    return PairCache(
        **{k: torch.cat(v) for k, v in parts.items()},
        embeddings=text["embeddings"],
        empty=text["empty"],
        manifest=manifest,
        pooled=text.get("pooled"),
        empty_pooled=text.get("empty_pooled"),
    )
