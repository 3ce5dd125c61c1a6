"""A cache of VAE latents and text embeddings for preference pairs.

Training reads latents instead of decoding JPEGs and running the VAE and text encoder at
every step. The cache is a folder of sharded safetensors plus ``manifest.json``:

- ``latents-NNNNN.safetensors``: ``latents_w``, ``latents_l`` (pairs, C, h, w), as the
  denoiser sees them (shifted and scaled as the model family does, `Family.encode_images`);
  ``text_w``, ``text_l`` (pairs,) row indices into the text embeddings (equal for human pairs;
  DDSPO's rejected image has its own prompt); ``pair_id`` (pairs,).
  ``original_size_w``, ``original_size_l`` (pairs, 2): each image's (height, width) before
  resizing; ``crop_w``, ``crop_l`` (pairs, 2): the (top, left) corner of its crop in the resized
  (and, when flipped, mirrored) image. SDXL's UNet is conditioned on both (its time ids).
- ``text.safetensors``: each prompt tensor the family declares (`Family.text_keys`), for the
  unique prompts, and beside it the empty prompt's (one row, used for prompt dropout) under
  `dspo.families.base.empty_name`: ``embeddings`` (unique prompts, tokens, dim) and ``empty``
  (1, tokens, dim) for every family; for families with pooled text (SDXL, SD3, FLUX) also
  ``pooled`` (unique prompts, dim) and ``empty_pooled`` (1, dim).
- ``manifest.json``: the model, its family (a name of `dspo.families`), resolution, crop and flip
  settings, dtype and scaling factor it was built with, the shards and their sizes, and the
  bytes per pair. It is written last: a folder with a manifest is a complete cache.

At scale the cache is built by scatter/gather: :func:`encode_part` encodes part k of N (a
contiguous block of latent files and of the sorted unique prompts, see :class:`PartPlan`) into
its own folder with ``part.json``, renamed into place when complete; :func:`gather_cache` joins
the N folders. The blocks follow fixed grids, so the result does not depend on N.

By default each image is encoded once, as its VAE posterior mean, with its crop and flip drawn
once at caching time. The upstream recipe redraws all three at every visit of a pair. With
``per_visit`` the cache keeps what the trainer needs to redraw two of them
(`dspo.training.preference.make_batch`): the posterior's standard deviation (``std_w``, ``std_l``),
so a new posterior sample is drawn at each visit; and with ``flip`` both orientations of each image
(``mirror_w``, ``mirror_l``, ``mirror_std_w``, ``mirror_std_l``, ``crop_mirror_w``,
``crop_mirror_l``), one chosen at each visit. The mirror is encoded from the mirrored pixels: a
VAE encoder is not mirror-symmetric, so mirroring the latent is not the same
(docs/benchmarks.md gives the measured difference). Storage per pair: 2 latents by default, 4
with ``per_visit``, 8 with ``per_visit`` and ``flip``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dspo.core.content import file_sha256
from dspo.core.dtypes import resolve_dtype
from dspo.core.files import part_folder, read_part_records, write_json_atomic

# The reading side lives in its own module; its names are part of this module's interface.
from dspo.data.cache_load import MANIFEST, SHARD_KEYS, PairCache, load_cache  # noqa: F401
from dspo.data.pair_table import REJECTED_CAPTION
from dspo.data.tensor_files import concat_safetensors
from dspo.families import load_family
from dspo.families.base import CROSS_ATTENTION, Family, empty_name
from dspo.families.sd_pipeline import load_pipeline

SIDES = ("w", "l")
# Prompts per text-encoder call. Fixed, so that parts split prompts on one grid (PartPlan).
TEXT_BATCH = 256
CROPS = ("center", "random")


@dataclass(frozen=True)
class PreparedImage:
    """Pixels as the VAE sees them, and where they came from (SDXL's size conditioning).

    ``mirror_crop_top_left`` is the crop corner of the same pixels mirrored left to right:
    cropping and then mirroring equals mirroring and then cropping there.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    mirror_crop_top_left: tuple[int, int]


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
    return PreparedImage(pixels, original, (top, left), (top, spare_w - left))


def prepare_image(data: bytes, resolution: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 (3, r, r) in [-1, 1]: shorter side resized, centre-cropped."""
    return load_image(data, resolution).pixels


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


# Part fields that must agree for parts to belong to one cache.
_SHARED = ("model", "family", *(f.name for f in fields(CacheSettings)), "scaling_factor")


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link shares the part's bytes (parts are deleted after gathering); a copy is the
    # fallback where links are not possible (another file system).
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _gather_text(infos: list[dict[str, Any]], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Join the parts' prompt embeddings into one ``text.safetensors`` on disk, a chunk at a
    time (at full scale they are far larger than memory); return it with its header."""
    rows = 0
    for info in infos:
        start, stop = info["prompt_rows"]
        if start != rows and stop > start:
            raise ValueError(f"{info['dir']}: prompt rows start at {start}, expected {rows}")
        rows = max(rows, stop)
    if rows != infos[0]["prompts"]:
        raise ValueError(f"cache parts embed {rows} prompts, expected {infos[0]['prompts']}")
    path = out_dir / "text.safetensors"
    sources = [info["dir"] / info["text_file"] for info in infos if info["text_file"]]
    return path, concat_safetensors(sources, path)


def gather_cache(part_dirs: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """Join the parts written by :func:`encode_part` into one cache folder.

    Latent files are hard-linked (copied where links are impossible) into ``out_dir``, text
    embeddings are joined on disk (:func:`dspo.data.tensor_files.concat_safetensors`), and
    ``manifest.json`` is written last, so a folder with a manifest is always a complete cache.
    The manifest records ``bytes_per_pair``.
    """
    infos = read_part_records(part_dirs, "cache", (*_SHARED, "pairs", "prompts"))
    first = infos[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    shards = [shard for info in infos for shard in info["files"]]
    expected = -(-first["pairs"] // first["shard_size"])
    if len(shards) != expected or sum(s["pairs"] for s in shards) != first["pairs"]:
        raise ValueError(f"cache parts hold {len(shards)} latent files, expected {expected}")
    for info in infos:
        for shard in info["files"]:
            _link_or_copy(info["dir"] / shard["file"], out_dir / shard["file"])
    # Parts written before shards carried checksums get theirs now, from the gathered files.
    shards = [{**s, "sha256": s.get("sha256") or file_sha256(out_dir / s["file"])} for s in shards]
    text, text_header = _gather_text(infos, out_dir)
    latent_bytes = sum((out_dir / s["file"]).stat().st_size for s in shards)
    text_bytes = text.stat().st_size
    pairs = max(1, first["pairs"])
    manifest = {
        **{k: first[k] for k in _SHARED},
        "pairs": first["pairs"],
        "prompts": first["prompts"],
        "parts": first["parts"],
        "latent_shape": next(i["latent_shape"] for i in infos if i["files"]),
        "text_shape": text_header[empty_name(CROSS_ATTENTION)]["shape"][1:],
        "shards": shards,
        "text_sha256": file_sha256(text),
        # Latent files only, as training reads them per pair; the text is shared by prompts.
        "bytes_per_pair": round(latent_bytes / pairs, 1),
        "text_bytes": text_bytes,
        "total_bytes_per_pair": round((latent_bytes + text_bytes) / pairs, 1),
    }
    write_json_atomic(manifest, out_dir / MANIFEST, indent=2)
    return manifest


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
    per_visit: bool = False,
) -> dict[str, Any]:
    """Encode ``pairs`` (the canonical pair table) with ``model``'s VAE and text encoder(s).

    One process, one part: the same code and result as the workflow's sharded build.
    ``prompts_l`` gives each rejected image its own prompt (DDSPO's degraded prompts);
    by default both images of a pair share the caption. ``crop`` is ``center`` or ``random``;
    ``flip`` mirrors half the images; both are seeded per image by ``seed`` and the pair id.
    ``per_visit`` keeps what lets the trainer redraw posterior samples and flips per visit.
    """
    settings = CacheSettings(resolution, dtype, shard_size, batch_size, crop, flip, seed, per_visit)
    texts = pairs[["caption"]]
    if prompts_l is not None:
        texts = texts.assign(**{REJECTED_CAPTION: list(prompts_l)})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        part_dir = Path(tmp) / "part-0"
        encode_part(texts, lambda a, b: pairs.iloc[a:b], model, part_dir, settings, device=device)
        return gather_cache([part_dir], out_dir)
