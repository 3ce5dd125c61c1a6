"""Writing results so that a job cut short leaves nothing half-written that a rerun could keep.

Every writer here writes beside its destination and renames into place: a JSON record, PNG
bytes, a part folder of a scatter/gather step (pairs, cache, DDSPO pairs, reference outputs),
which is only ever seen whole, with its record written last, and a folder replaced whole.

A write that fails for lack of space (``ENOSPC``, a quota, or torch's ``file write failed``,
which drops the reason, on a disk that is then full) raises :class:`DiskFull`, naming the
path, what the write needs and the space free on that disk (:func:`space_for`); what was at
the destination before stays as it was, so the same command run again after freeing space
continues exactly.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

# The record of a finished part folder: its presence marks the part complete.
PART_RECORD = "part.json"
# Errors of a write that ran out of space: the disk, or the user's quota on it.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How torch reports a failed write of a tensor file: without the operating system's reason.
TORCH_WRITE_FAILED = ("file write failed", "PytorchStreamWriter failed writing")
# Free space below which such a failure is taken for a full disk.
NEARLY_FULL = 64 << 20


class DiskFull(OSError):
    """A write failed for lack of space; nothing that existed before it was changed."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message names the error itself


def human_bytes(n: int) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (``1.5 GiB``)."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    """Space free to this user on the disk that holds ``path`` (or would, once created)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_out_of_space(err: BaseException, free: int, needed: int | None = None) -> bool:
    """Whether ``err``, raised by a write, means the disk (or quota) is full.

    An :class:`OSError` says so by its errno, safetensors by the operating system's words;
    torch's zip writer says only that the write failed, so that counts when ``free`` (read
    after the failure) is under what the write needs, or nearly nothing when that is unknown.
    """
    if isinstance(err, DiskFull):
        return False  # already reported
    if isinstance(err, OSError) and err.errno in SPACE_ERRNOS:
        return True
    text = str(err)
    if any(os.strerror(code) in text for code in SPACE_ERRNOS) or "StorageFull" in text:
        return True
    failed = isinstance(err, RuntimeError) and any(m in text for m in TORCH_WRITE_FAILED)
    return failed and free < max(needed or 0, NEARLY_FULL)


@contextlib.contextmanager
def space_for(path: Path, needed: int | None = None) -> Iterator[None]:
    """Report a write of ``path`` (``needed`` bytes, when known) that runs out of space.

    The error names the path, the bytes needed (else a lower bound: what was written before
    the disk filled) and the bytes free there before the write began, which is what is free
    again once its partial output is removed.
    """
    before = free_bytes(path)
    try:
        yield
    except (OSError, RuntimeError) as err:
        after = free_bytes(path)
        if not is_out_of_space(err, after, needed):
            raise
        if needed is not None:
            need = f"it needs {human_bytes(needed)}"
        else:
            need = f"it needs more than the {human_bytes(max(before - after, 0))} it wrote"
        raise DiskFull(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)}: writing {path} failed ({type(err).__name__}: "
            f"{err}); {need}, and {human_bytes(before)} were free on its disk when it began. "
            "Nothing that was there before is changed: free space and run the same command "
            "again",
        ) from err


def write_json_atomic(data: Mapping[str, Any], path: Path, *, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, flushed to disk before it replaces the old file."""
    text = json.dumps(data, indent=indent) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    with space_for(path, len(text.encode())), _removed_on_error(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)
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
    """``data`` at ``path``, written beside it and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with space_for(path, len(data)), _removed_on_error(tmp):
        tmp.write_bytes(data)
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_error(tmp: Path) -> Iterator[None]:
    """Remove the partial file or folder ``tmp`` when the block fails."""
    try:
        yield
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def replace_folder(new: Path, old: Path) -> None:
    """Put the finished folder ``new`` at ``old``, replacing what is there whole.

    What was at ``old`` is moved aside first and removed only once ``new`` is in its place.
    """
    aside = old.with_name(f".{old.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if old.exists():
        os.replace(old, aside)
    os.replace(new, old)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def part_folder(out_dir: Path, what: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A folder beside ``out_dir`` to write one part of a ``what`` step into, and its record.

    On success the record is written last, a finished part already at ``out_dir`` is
    replaced (anything else there is refused, naming it, before it is touched) and the folder
    is renamed into place whole; on an error it is removed (a full disk is reported as
    :class:`DiskFull`). So the old part stays until the new one is complete, and a folder with
    a record is always a finished part.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / PART_RECORD).exists():
        raise ValueError(f"{out_dir} exists and is not a {what} part: not replacing it")
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict[str, Any] = {}
    try:
        with space_for(out_dir):
            yield tmp, record
            write_json_atomic(record, tmp / PART_RECORD)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_part_records(
    part_dirs: Sequence[Path], what: str, shared: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The records of the finished ``what`` parts in ``part_dirs``, in part order.

    The folders may be given in any order; each record gains ``dir`` (its folder). They must
    be all the parts ``0..parts - 1`` of one whole and agree on ``parts`` and on each key in
    ``shared``; otherwise this raises, naming the folder, before anything is gathered.
    """
    records = []
    for folder in part_dirs:
        path = Path(folder) / PART_RECORD
        if not path.exists():
            raise FileNotFoundError(
                f"{folder}: not a finished {what} part (no {PART_RECORD}): it is incomplete"
            )
        records.append({**json.loads(path.read_text()), "dir": Path(folder)})
    records.sort(key=lambda record: record["part"])
    first = records[0]
    if [r["part"] for r in records] != list(range(first["parts"])):
        got = [r["part"] for r in records]
        raise ValueError(f"{what} parts {got} given, expected all of 0..{first['parts'] - 1}")
    for record in records[1:]:
        for key in ("parts", *shared):
            if record.get(key) != first.get(key):
                raise ValueError(
                    f"{record['dir']}: {key} {record.get(key)!r} differs from part 0's "
                    f"{first.get(key)!r}"
                )
    return records


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
