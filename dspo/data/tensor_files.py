"""Joining safetensors files on disk, without holding their tensors in memory.

The latent cache's gather joins every part's prompt embeddings into one ``text.safetensors``
(115.5 KiB a prompt at SD1.5's shape: ~100 GiB for Pick-a-Pic v2's captions). Loading the
parts and concatenating them would hold all of it, twice, in one process. The safetensors
layout (an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape
and byte range, then the raw bytes) lets the join be a header plus byte copies instead.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspo.data.cache_load import safetensors_header

# Bytes copied per read: the memory the join holds, whatever the files' sizes.
CHUNK_BYTES = 16 << 20


def concat_safetensors(
    sources: Sequence[Path], dest: Path, *, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, dict[str, Any]]:
    """Write ``dest`` holding each tensor name's pieces from ``sources``, joined along dim 0
    in the sources' order (a name may be missing from some sources); return its header.

    Equal to ``torch.cat`` of the loaded pieces, written atomically (a temporary file renamed
    into place). Pieces of one name must agree in dtype and in every dimension but the first.
    """
    headers = [(Path(path), *safetensors_header(Path(path))) for path in sources]
    pieces: dict[str, list[tuple[Path, int, dict[str, Any]]]] = {}
    for path, start, header in headers:
        for name, entry in header.items():
            pieces.setdefault(name, []).append((path, start, entry))
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name in sorted(pieces):
        first = pieces[name][0][2]
        for path, _, entry in pieces[name]:
            if entry["dtype"] != first["dtype"] or entry["shape"][1:] != first["shape"][1:]:
                raise ValueError(
                    f"{path}: tensor {name} is {entry['dtype']} {entry['shape']}, other parts "
                    f"have {first['dtype']} [*, {', '.join(map(str, first['shape'][1:]))}]"
                )
        rows = sum(entry["shape"][0] for _, _, entry in pieces[name])
        size = sum(e["data_offsets"][1] - e["data_offsets"][0] for _, _, e in pieces[name])
        shape = [rows, *first["shape"][1:]]
        layout[name] = {
            "dtype": first["dtype"],
            "shape": shape,
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name in layout:
            for path, start, entry in pieces[name]:
                begin, end = entry["data_offsets"]
                _copy_range(path, start + begin, end - begin, out, chunk_bytes)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    return layout


def _copy_range(path: Path, offset: int, size: int, out: Any, chunk_bytes: int) -> None:
    with open(path, "rb") as handle:
        handle.seek(offset)
        while size:
            block = handle.read(min(chunk_bytes, size))
            if not block:
                raise ValueError(f"{path} ended {size} bytes early")
            out.write(block)
            size -= len(block)
