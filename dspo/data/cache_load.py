"""Reading a latent cache: rows by index from memory-mapped shards, checksums verified.

A cache at the paper's scale (~960k SD1.5 pairs) is tens of GiB. Concatenating it into every
training process would hold one private copy per process; instead each shard is mapped
read-only (``numpy.memmap`` over the safetensors layout: an 8-byte header length, a JSON
header, then the raw tensors), and a batch reads only its rows. The pages are the kernel's
page cache, shared by every process on the node. Only the per-pair indices, sizes and crops
(64 bytes a pair) and the empty prompt's tensors are read into memory.

Every shard's SHA-256, recorded in the manifest when the shard was written, is checked before
use: a shard overwritten in place (same size, other bytes) is an error naming the file, never
a silent source of NaN.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspo.core.content import file_sha256
from dspo.families import family_class
from dspo.families.base import empty_name

MANIFEST = "manifest.json"
TEXT_FILE = "text.safetensors"
# Latents are large and read per batch; the rest of a shard's keys are small and read whole.
ROW_KEYS = ("latents_w", "latents_l")
SMALL_KEYS = ("text_w", "text_l", "original_size_w", "original_size_l", "crop_w", "crop_l")
SHARD_KEYS = (*ROW_KEYS, *SMALL_KEYS)
# cache.per_visit: the posterior's standard deviation of each latent, so that the trainer
# draws a new posterior sample at every visit; with cache.flip also each image's mirror (its
# posterior mean and deviation, and its crop corner), one of the two chosen at every visit.
POSTERIOR_KEYS = ("std_w", "std_l")
MIRROR_ROW_KEYS = ("mirror_w", "mirror_l", "mirror_std_w", "mirror_std_l")
MIRROR_SMALL_KEYS = ("crop_mirror_w", "crop_mirror_l")


def visit_keys(manifest: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The row keys and small keys a cache holds beyond SHARD_KEYS, by its settings."""
    if not manifest.get("per_visit"):
        return (), ()
    if manifest.get("flip"):
        return (*POSTERIOR_KEYS, *MIRROR_ROW_KEYS), MIRROR_SMALL_KEYS
    return POSTERIOR_KEYS, ()


_NUMPY = {
    "F16": np.float16,
    "BF16": np.int16,  # no numpy bfloat16: read the bits, reinterpret in torch
    "F32": np.float32,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """Where the data starts and the tensor entries of a safetensors file, checked for size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (truncated header)")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ValueError(f"{path} is truncated: its header runs past the end of the file")
        try:
            header = json.loads(handle.read(length))
        except ValueError as err:
            raise ValueError(f"{path} has an unreadable safetensors header: {err}") from None
    header.pop("__metadata__", None)
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + length + end != size:
        raise ValueError(f"{path} is {size} bytes, its header describes {8 + length + end}")
    return 8 + length, header


def _map(path: Path, start: int, entry: dict[str, Any]) -> np.ndarray:
    if entry["dtype"] not in _NUMPY:
        raise ValueError(f"{path}: tensor dtype {entry['dtype']} is not supported")
    offset = start + entry["data_offsets"][0]
    shape = tuple(entry["shape"])
    if not int(np.prod(shape)):
        return np.empty(shape, _NUMPY[entry["dtype"]])
    return np.memmap(path, _NUMPY[entry["dtype"]], mode="r", offset=offset, shape=shape)


def _to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "BF16" else tensor


class Rows:
    """One tensor's rows across shards, read on demand from their memory maps.

    Indexing with an int, a slice, or an index tensor/array returns a new tensor holding just
    those rows, in the order asked for; ``rows[:]`` materialises everything.
    """

    def __init__(self, maps: list[np.ndarray], dtype: str) -> None:
        self._maps = maps
        self._dtype = dtype
        self._starts = np.cumsum([0, *(len(m) for m in maps)])
        self.shape = (int(self._starts[-1]), *maps[0].shape[1:])
        self.dtype = _to_torch(np.empty(0, maps[0].dtype), dtype).dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice):
            return self[np.arange(len(self))[index]]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim == 0:
            return self[idx[None]][0]
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(idx), *self.shape[1:]), self._maps[0].dtype)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard):
            chosen = shard == s
            out[chosen] = self._maps[s][idx[chosen] - self._starts[s]]
        return _to_torch(out, self._dtype)


@dataclass
class PairCache:
    """A cache opened for training: what the trainer samples batches from.

    Latents and prompt tensors are :class:`Rows` (read per batch from memory maps); the
    per-pair indices, sizes and crops are tensors. ``prompt_tensors`` holds each prompt tensor
    of the cache's family by its name in ``text_keys`` (``embeddings``; ``pooled`` for SDXL,
    SD3 and FLUX), rows indexed by ``text_w`` and ``text_l``; ``empty_prompt`` the empty
    prompt's (one row each) by the same names.
    """

    latents_w: Rows
    latents_l: Rows
    text_w: torch.Tensor
    text_l: torch.Tensor
    original_size_w: torch.Tensor
    original_size_l: torch.Tensor
    crop_w: torch.Tensor
    crop_l: torch.Tensor
    prompt_tensors: dict[str, Rows]
    empty_prompt: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    # Only in a cache.per_visit cache (see visit_keys); None otherwise.
    std_w: Rows | None = None
    std_l: Rows | None = None
    mirror_w: Rows | None = None
    mirror_l: Rows | None = None
    mirror_std_w: Rows | None = None
    mirror_std_l: Rows | None = None
    crop_mirror_w: torch.Tensor | None = None
    crop_mirror_l: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.latents_w)

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def per_visit(self) -> bool:
        """Whether the trainer redraws each image's posterior sample (and mirror) per visit."""
        return bool(self.manifest.get("per_visit"))


def verify_checksum(path: Path, expected: str | None) -> None:
    """Raise naming ``path`` when its SHA-256 is not the one recorded when it was written."""
    if not expected:
        raise ValueError(f"{path} has no checksum in the cache manifest: rebuild the cache")
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"{path} was changed after the cache was built (SHA-256 {actual[:12]}..., "
            f"manifest records {expected[:12]}...): rebuild the cache"
        )


def _open(path: Path, sha256: str | None, verify: bool) -> tuple[dict[str, Any], dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rebuild the cache")
    if verify:
        verify_checksum(path, sha256)
    start, header = safetensors_header(path)
    return {key: _map(path, start, entry) for key, entry in header.items()}, header


def load_cache(cache_dir: Path, *, verify: bool = True) -> PairCache:
    """Open a cache folder: manifest checked against the files, checksums verified.

    ``verify=False`` skips the checksums (one read of every file), for processes that share a
    node with one that has verified them.
    """
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: build the cache first")
    manifest = json.loads(manifest_path.read_text())
    if "family" not in manifest:
        raise ValueError(f"{manifest_path} has no model family: rebuild the cache")
    visit_rows, visit_small = visit_keys(manifest)
    row_keys, small_keys = (*ROW_KEYS, *visit_rows), (*SMALL_KEYS, *visit_small)
    maps: dict[str, list[np.ndarray]] = {k: [] for k in (*row_keys, *small_keys)}
    dtypes: dict[str, str] = {}
    for shard in manifest["shards"]:
        path = cache_dir / shard["file"]
        tensors, header = _open(path, shard.get("sha256"), verify)
        missing = sorted(set(maps) - set(tensors))
        if missing:
            raise ValueError(f"{path} lacks {missing}: rebuild the cache")
        if len(tensors["latents_w"]) != shard["pairs"]:
            raise ValueError(
                f"{path}: {len(tensors['latents_w'])} pairs, manifest says {shard['pairs']}"
            )
        for key in maps:
            maps[key].append(tensors[key])
            dtypes[key] = header[key]["dtype"]
    text_path = cache_dir / TEXT_FILE
    text, text_header = _open(text_path, manifest.get("text_sha256"), verify)
    names = family_class(manifest["family"]).text_keys
    lacking = [k for k in names if k not in text or empty_name(k) not in text]
    if lacking:
        raise ValueError(
            f"{text_path} of a {manifest['family']} cache lacks {lacking} (or the empty "
            "prompt's): rebuild the cache"
        )
    empty = {k: empty_name(k) for k in names}
    small = {k: _to_torch(np.concatenate(maps[k]), dtypes[k]) for k in small_keys}
    return PairCache(
        **{k: Rows(maps[k], dtypes[k]) for k in row_keys},
        **small,
        prompt_tensors={k: Rows([text[k]], text_header[k]["dtype"]) for k in names},
        empty_prompt={
            k: _to_torch(np.array(text[e]), text_header[e]["dtype"]) for k, e in empty.items()
        },
        manifest=manifest,
    )
