"""The gather of a latent cache: the parts written by `dspo.data.cache_encode.encode_part`
joined into one cache folder, its ``manifest.json`` written last (the format is
:mod:`dspo.data.cache`'s).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from dspo.core.content import file_sha256
from dspo.core.files import read_part_records, write_json_atomic
from dspo.data.cache_encode import CacheSettings
from dspo.data.cache_load import MANIFEST
from dspo.data.tensor_files import concat_safetensors
from dspo.families.base import CROSS_ATTENTION, empty_name

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
