"""Writing results so that a job cut short leaves nothing half-written that a rerun could keep.

Every writer here writes beside its destination and renames into place: a JSON record, PNG
bytes, and a part folder of a scatter/gather step (pairs, cache, DDSPO pairs, reference
outputs), which is only ever seen whole, with its record written last.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

# The record of a finished part folder: its presence marks the part complete.
PART_RECORD = "part.json"


def write_json_atomic(data: Mapping[str, Any], path: Path, *, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, flushed to disk before it replaces the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(data, indent=indent) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def png_bytes(image: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """An (H, W, 3) float image in [0, 1] as PNG bytes, with ``text`` chunks."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    kwargs = {}
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        kwargs["pnginfo"] = info
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def write_bytes_atomic(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def part_folder(out_dir: Path, what: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A folder beside ``out_dir`` to write one part of a ``what`` step into, and its record.

    On success the record is written last, a finished part already at ``out_dir`` is
    replaced (anything else there is refused, naming it, before it is touched) and the folder
    is renamed into place whole; on an error it is removed. So the old part stays until the
    new one is complete, and a folder with a record is always a finished part.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / PART_RECORD).exists():
        raise ValueError(f"{out_dir} exists and is not a {what} part: not replacing it")
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict[str, Any] = {}
    try:
        yield tmp, record
        write_json_atomic(record, tmp / PART_RECORD)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
