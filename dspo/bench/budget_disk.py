"""The disk side of ``dspo budget``: the base model's shapes and the bytes of each item a
stage stores, which :mod:`dspo.bench.budget` multiplies by the config's counts.

The pair source (a local path is measured; otherwise rows x bytes per row of the public copy),
the pair tables (per pair its caption, ids and references to its images in the source,
:mod:`dspo.data.image_refs`; both JPEGs only for a streamed source, whose images live nowhere
else), the latent caches (channels x (resolution/8)^2 x dtype bytes per image, plus every
prompt tensor's elements x dtype per unique prompt), the training checkpoints (the trainable
weights with an fp32 master and the optimiser's moments: AdamW two fp32 moments, Adafactor
about none), the trained models (the whole pipeline in the base dtype, or the LoRA adapters),
the images (PNG bytes per pixel, a stated figure) and the score rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# PNG of a generated image, bytes per pixel: a stated figure (SD outputs at 512 px are
# ~0.35-0.5 MB as 8-bit RGB PNG, about 1.5 bytes a pixel).
PNG_BYTES_PER_PIXEL = 1.5
SCORE_ROW_BYTES = 300  # one reward's score row in the tables (docs/cluster.md)
CAPTION_BYTES = 150
# A pair table's row beside its caption (measured, 2,000 pairs): four int64 ids, and the
# images' references (tar member names in a webdataset); a table's footer adds about 3 kB.
PAIR_REF_BYTES = {"parquet": 36, "webdataset": 49}
PAIR_TABLE_BYTES = 3000
# Per-pair metadata of a latent file: text_w, text_l, pair_id (int64) and original size and
# crop of both images (int64 pairs), as `dspo.data.cache` writes them.
CACHE_PAIR_META_BYTES = 3 * 8 + 4 * 2 * 8
# Public Pick-a-Pic v2 copies: (bytes, rows). The webdataset copy holds train, validation and
# test; the train split had 959,040 rows, 851,293 without ties, 58,960 unique prompts
# (Diffusion-DPO paper, sec. 5).
PICKAPIC = {
    "webdataset": (560e9, 1_001_352),
    "parquet": (335e9, 1_000_872),
}
# Hub copies by id; another hub id is taken as a parquet copy. A hub source downloads only
# its split's files and reads them as they are (no second copy).
PICKAPIC_HUB = {
    "sayakpaul/pickapic_v2_webdataset": PICKAPIC["webdataset"],
    "yuvalkirstain/pickapic_v2": PICKAPIC["parquet"],
}
PICKAPIC_TRAIN_ROWS, PICKAPIC_NO_TIES, PICKAPIC_PROMPTS = 959_040, 851_293, 58_960
# Known base models: family, latent channels, the shape of each prompt tensor of one prompt
# by its name in the family's ``text_keys``, and the whole pipeline's parameters
# (docs/cluster.md; the denoiser's are counted).
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "stable-diffusion-v1-5": dict(
        family="sd", latent=4, text={"embeddings": (77, 768)}, params=1.066e9
    ),
    "stable-diffusion-xl-base-1.0": dict(
        family="sdxl", latent=4, text={"embeddings": (77, 2048), "pooled": (1280,)}, params=3.5e9
    ),
    "stable-diffusion-3.5-medium": dict(
        family="sd3", latent=16, text={"embeddings": (333, 4096), "pooled": (2048,)}, params=8.1e9
    ),
    "FLUX.1-dev": dict(
        family="flux", latent=16, text={"embeddings": (512, 4096), "pooled": (768,)}, params=16.9e9
    ),
}
# LoRA adapters on SD1.5's attention projections at rank 4: 0.8 M parameters; scaled by rank
# and by the denoiser's size for other models and ranks (an approximation, stated).
LORA_PARAMS_RANK4_SD15 = 0.8e6
SD15_DENOISER = 859_520_964


def _architecture_shapes(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Shapes of a model built from an architecture mapping (the toy base model)."""
    return dict(
        family=None,
        latent=arch["vae"]["latent_channels"],
        factor=2 ** (len(arch["vae"]["block_out_channels"]) - 1),
        text={"embeddings": (arch["max_length"], arch["text_encoder"]["hidden_size"])},
        params=None,
    )


def model_shapes(base: Mapping[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    """Family, latent channels and factor, and prompt tensor shapes by name of the base model:
    a known hub model by its name (its FLOPs are counted), else the configs of a local
    diffusers folder or the toy architecture (no FLOPs counted: ``family`` None)."""
    path = str(base["path"])
    name = path.rstrip("/").split("/")[-1]
    if name in KNOWN_MODELS:
        return {**KNOWN_MODELS[name], "factor": 8}
    folder = root / path
    if (folder / "model_index.json").exists():
        vae = json.loads((folder / "vae" / "config.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
        tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
        arch = {"vae": vae, "max_length": tok["model_max_length"], "text_encoder": text}
        return _architecture_shapes(arch)
    if base.get("build") == "toy":
        return _architecture_shapes(base["architecture"])
    raise ValueError(
        f"base_model.path {path!r}: neither a local diffusers folder, the toy build nor one of "
        f"{list(KNOWN_MODELS)}"
    )


def latent_bytes(shapes: Mapping[str, Any], resolution: int, dtype: str) -> int:
    """One image's latent: channels x (resolution / factor)^2 x dtype bytes."""
    return shapes["latent"] * (resolution // shapes["factor"]) ** 2 * DTYPE_BYTES[dtype]


def prompt_bytes(shapes: Mapping[str, Any], dtype: str) -> int:
    """One prompt's prompt tensors (e.g. its embedding, tokens x width, and pooled embedding),
    in ``dtype``."""
    return sum(math.prod(shape) for shape in shapes["text"].values()) * DTYPE_BYTES[dtype]


def cache_bytes(
    shapes: Mapping[str, Any], cache: Mapping[str, Any], pairs: int, prompts: int
) -> float:
    """A latent cache of ``pairs`` pairs and ``prompts`` unique prompts (+ the empty one)."""
    per_image = latent_bytes(shapes, cache["resolution"], cache["dtype"])
    copies = 2 if cache.get("per_visit") else 1  # the posterior's deviation
    copies *= 2 if cache.get("per_visit") and cache.get("flip") else 1  # both orientations
    latents = pairs * (2 * copies * per_image + CACHE_PAIR_META_BYTES)
    return latents + (prompts + 1) * prompt_bytes(shapes, cache["dtype"])


def pickapic_copy(source: Mapping[str, Any]) -> tuple[float, int] | None:
    """(bytes, rows) of the public Pick-a-Pic v2 copy a pair source names; None for others."""
    if source["kind"] == "hub":
        return PICKAPIC_HUB.get(str(source.get("id")), PICKAPIC["parquet"])
    return PICKAPIC.get(source["kind"])


def pair_row_bytes(source: Mapping[str, Any]) -> float:
    """One pair's row in a pair table: caption, ids and references to its images in the
    source; for a streamed source (images nowhere else) both JPEGs instead of references."""
    if source["kind"] == "hub" and source.get("streaming"):
        size, rows = pickapic_copy(source) or (0, 1)
        return CAPTION_BYTES + PAIR_REF_BYTES["parquet"] + size / rows
    tar = source["kind"] == "webdataset" or pickapic_copy(source) == PICKAPIC["webdataset"]
    return CAPTION_BYTES + PAIR_REF_BYTES["webdataset" if tar else "parquet"]


def source_bytes(source: Mapping[str, Any], root: Path) -> tuple[float, str]:
    """The pair source's size: measured when it is a local path, else the public copy's."""
    path = source.get("path")
    if path and (root / path).exists():
        files = [(root / path)] if (root / path).is_file() else (root / path).rglob("*")
        return float(sum(f.stat().st_size for f in files if f.is_file())), "measured"
    copy = pickapic_copy(source)
    if copy is not None:
        if source["kind"] == "hub" and source.get("streaming"):
            return 0.0, "streamed, not stored"
        return copy[0], f"{path} not found: public copy" if path else "public copy"
    return 0.0, "generated"


def trainable_params(denoiser: float, lora: Mapping[str, Any] | None) -> float:
    """The weights a run trains: the whole denoiser, or its LoRA adapters (approximated)."""
    if not lora:
        return denoiser
    return LORA_PARAMS_RANK4_SD15 * lora["rank"] / 4 * denoiser / SD15_DENOISER


def checkpoint_bytes(params: float, optimizer: str) -> float:
    """One training checkpoint: the weights as an fp32 master plus the optimiser's state
    (AdamW: two fp32 moments; Adafactor: factored moments, counted as none)."""
    return params * (4 + (8 if optimizer == "adamw" else 0))


def model_bytes(
    pipeline: float, trained: float, lora: Mapping[str, Any] | None, base: Mapping[str, Any]
) -> float:
    """A trained model as `dspo.training.policy.save_model` writes it: the whole pipeline in the
    base model's dtype (full fine-tuning), or the LoRA adapters in float32."""
    return trained * 4 if lora else pipeline * DTYPE_BYTES[base["dtype"]]


def checkpoints_held(run: Mapping[str, Any]) -> int:
    """Checkpoints on disk at once during a run: one every ``checkpoint_every`` steps before
    the last (the last step is the model), at most ``checkpoints_kept`` of them."""
    every = run.get("checkpoint_every") or 0
    saved = (run["steps"] - 1) // every if every else 0
    kept = run.get("checkpoints_kept")
    return min(saved, kept) if kept else saved
