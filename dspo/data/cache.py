"""A cache of VAE latents and text embeddings for preference pairs.

Training reads latents instead of decoding JPEGs and running the VAE and text encoder at
every step. The cache is a folder of sharded safetensors plus ``manifest.json``:

- ``latents-NNNNN.safetensors``: ``latents_w``, ``latents_l`` (pairs, C, h, w), already
  multiplied by the VAE's scaling factor; ``text_w``, ``text_l`` (pairs,) row indices into
  the text embeddings (equal for human pairs; DDSPO's rejected image has its own prompt);
  ``pair_id`` (pairs,).
- ``text.safetensors``: ``embeddings`` (unique prompts, tokens, dim) and ``empty`` (1, tokens,
  dim), the embedding of the empty prompt used for prompt dropout.
- ``manifest.json``: the model, resolution, dtype and scaling factor it was built with, the
  shards and their sizes.

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

from dspo.models import encode_prompts, load_pipeline, resolve_dtype

MANIFEST = "manifest.json"


def prepare_image(data: bytes, resolution: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 (3, r, r) in [-1, 1]: shorter side resized, centre-cropped."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = resolution / min(image.size)
    if scale != 1.0:
        size = (
            max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


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
) -> dict[str, Any]:
    """Encode ``pairs`` (the canonical pair table) with ``model``'s VAE and text encoder.

    ``prompts_l`` gives each rejected image its own prompt (DDSPO's degraded prompts);
    by default both images of a pair share the caption.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(model, device=device)
    storage = resolve_dtype(dtype)
    captions = pairs["caption"].tolist()
    rejected = list(prompts_l) if prompts_l is not None else captions
    unique = sorted(set(captions) | set(rejected))
    row = {text: i for i, text in enumerate(unique)}
    embeddings = encode_prompts(pipe, unique).to(storage)
    empty = encode_prompts(pipe, [""]).to(storage)
    _save_atomic({"embeddings": embeddings, "empty": empty}, out_dir / "text.safetensors")

    scaling = float(pipe.vae.config.scaling_factor)
    shards = []
    starts = range(0, len(pairs), shard_size)
    for shard, start in enumerate(tqdm(starts, desc="cache shards", mininterval=5)):
        chunk = pairs.iloc[start : start + shard_size]
        latents = {}
        for side in ("w", "l"):
            encoded = []
            for b in range(0, len(chunk), batch_size):
                images = np.stack(
                    [
                        prepare_image(x, resolution)
                        for x in chunk[f"jpg_{side}"].iloc[b : b + batch_size]
                    ]
                )
                pixels = torch.from_numpy(images).to(device, pipe.vae.dtype)
                encoded.append(pipe.vae.encode(pixels).latent_dist.mean * scaling)
            latents[f"latents_{side}"] = torch.cat(encoded).to(storage).cpu()
        name = f"latents-{shard:05d}.safetensors"
        _save_atomic(
            {
                **latents,
                "text_w": torch.tensor([row[c] for c in captions[start : start + shard_size]]),
                "text_l": torch.tensor([row[c] for c in rejected[start : start + shard_size]]),
                "pair_id": torch.tensor(chunk["pair_id"].to_numpy(np.int64)),
            },
            out_dir / name,
        )
        shards.append({"file": name, "pairs": len(chunk)})

    manifest = {
        "model": str(model),
        "resolution": resolution,
        "dtype": dtype,
        "scaling_factor": scaling,
        "pairs": len(pairs),
        "prompts": len(unique),
        "latent_shape": list(latents["latents_w"].shape[1:]),
        "text_shape": list(embeddings.shape[1:]),
        "shards": shards,
    }
    manifest["bytes_per_pair"] = round(
        sum((out_dir / s["file"]).stat().st_size for s in shards) / max(1, len(pairs)), 1
    )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class PairCache:
    """A cache loaded into memory: what the trainer samples batches from."""

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    text_w: torch.Tensor
    text_l: torch.Tensor
    embeddings: torch.Tensor
    empty: torch.Tensor
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.latents_w)


def load_cache(cache_dir: Path) -> PairCache:
    """Read every shard of a cache folder, checking the manifest against the files."""
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: build the cache first")
    manifest = json.loads(manifest_path.read_text())
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("latents_w", "latents_l", "text_w", "text_l")
    }
    for shard in manifest["shards"]:
        tensors = load_file(str(cache_dir / shard["file"]))
        if len(tensors["latents_w"]) != shard["pairs"]:
            raise ValueError(
                f"{cache_dir / shard['file']}: {len(tensors['latents_w'])} pairs, "
                f"manifest says {shard['pairs']}"
            )
        for key in parts:
            parts[key].append(tensors[key])
    text = load_file(str(cache_dir / "text.safetensors"))
    return PairCache(
        **{k: torch.cat(v) for k, v in parts.items()},
        embeddings=text["embeddings"],
        empty=text["empty"],
        manifest=manifest,
    )
