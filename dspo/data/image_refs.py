"""References from a pair table to its images in the source, and the one reader of them.

A pair table made from a source of durable files (a local or hub parquet copy, a webdataset,
the toy world's pairs) holds no image bytes: each pair names where its two images are, and
every job that needs pixels reads them from there through :func:`resolve_images`. The
reference columns (:data:`REF_COLUMNS`):

- ``image_root``: the source's root folder, as an absolute path (so any job, wherever it
  runs, finds it; a moved source is a missing file);
- ``image_file``: the pair's file, relative to the root (both images of a pair share it);
- ``image_key``: the file's content key (:func:`dspo.core.content.content_key`: its name and
  SHA-256), so a reference never stands for a path alone;
- ``image_row``: the pair's row in the file (a parquet row; a tar's sample, in tar order);
- ``ref_w``, ``ref_l``: where the preferred and the rejected image are in that row: the column
  (``jpg_0`` or ``jpg_1``) of a parquet file, the member name (``KEY.jpg_0.jpg``) of a tar.

A file whose content key differs from the reference's (changed or replaced since the table
was made) is refused, naming the file; so is a missing file or member. Where the source is
not a durable file (a streamed hub dataset) or the table is the images' only home (DDSPO's
generated pairs), the table keeps the bytes in ``jpg_w``, ``jpg_l`` instead
(:data:`IMAGE_COLUMNS`).
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dspo.core.content import content_key

REF_COLUMNS = ("image_root", "image_file", "image_key", "image_row", "ref_w", "ref_l")
IMAGE_COLUMNS = ("jpg_w", "jpg_l")
SIDES = ("w", "l")


def image_bytes(value: Any) -> bytes | None:
    """The bytes of one image cell: raw bytes, or a hub Image feature's ``{"bytes": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def has_refs(names: Sequence[str]) -> bool:
    """Whether a table with the columns ``names`` holds references rather than image bytes."""
    return any(name in REF_COLUMNS for name in names)


def resolve_images(rows: pd.DataFrame, table: str = "the pair table") -> pd.DataFrame:
    """``rows`` with ``jpg_w``, ``jpg_l`` read from the source in place of the references.

    Each referenced file is checked against its content key and read once (the row groups of
    a parquet file holding the rows, one pass over a tar). Rows that already hold bytes are
    returned as they are. Raises FileNotFoundError or ValueError naming the file (and
    ``table``, where the reference came from).
    """
    if not has_refs(list(rows.columns)):
        return rows
    images: dict[str, list[bytes | None]] = {side: [None] * len(rows) for side in SIDES}
    located = rows.reset_index(drop=True)
    for (root, name, key), group in located.groupby(
        ["image_root", "image_file", "image_key"], sort=False
    ):
        path = _checked(Path(root) / name, key, table)
        found = _read_file(path, group)
        for side in SIDES:
            for position, ref, row in zip(
                group.index, group[f"ref_{side}"], group["image_row"], strict=True
            ):
                images[side][position] = found[(int(row), ref)]
    out = located.drop(columns=list(REF_COLUMNS))
    position = list(out.columns).index("caption") + 1
    for offset, side in enumerate(SIDES):
        out.insert(position + offset, f"jpg_{side}", images[side])
    out.index = rows.index
    return out


def _checked(path: Path, key: str, table: str) -> Path:
    """``path`` when it exists and its content key is ``key``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the image source file that {table} refers to is missing; "
            "restore it or rebuild the pair table"
        )
    now = content_key(path)
    if now != key:
        raise ValueError(
            f"{path}: its content changed since {table} referred to it (content key {key}, "
            f"now {now}); restore the file or rebuild the pair table"
        )
    return path


def _read_file(path: Path, refs: pd.DataFrame) -> dict[tuple[int, str], bytes | None]:
    """The images ``refs`` name in one file, by (row, column or member)."""
    if path.suffix == ".tar":
        return _read_tar(path, refs)
    return _read_parquet(path, refs)


def _read_parquet(path: Path, refs: pd.DataFrame) -> dict[tuple[int, str], bytes | None]:
    file = pq.ParquetFile(path)
    sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    wanted = refs["image_row"].to_numpy(np.int64)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= starts[-1]):
        raise ValueError(f"{path}: a pair refers to row {wanted.max()}, beyond its rows")
    columns = sorted({*refs["ref_w"], *refs["ref_l"]})
    missing = [c for c in columns if c not in file.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: has no column {', '.join(map(repr, missing))}")
    found = {}
    for group in np.unique(np.searchsorted(starts, wanted, side="right") - 1):
        table = file.read_row_group(int(group), columns=columns)
        rows = wanted[(wanted >= starts[group]) & (wanted < starts[group + 1])]
        for column in columns:
            cells = table.column(column)
            for row in rows:
                found[(int(row), column)] = image_bytes(cells[int(row - starts[group])].as_py())
    return found


def _read_tar(path: Path, refs: pd.DataFrame) -> dict[tuple[int, str], bytes | None]:
    wanted = {
        member: int(row)
        for side in SIDES
        for member, row in zip(refs[f"ref_{side}"], refs["image_row"], strict=True)
    }
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[(wanted[member.name], member.name)] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a readable tar file ({exc})") from exc
    missing = sorted(set(wanted) - {name for _, name in found})
    if missing:
        raise ValueError(f"{path}: has no member {', '.join(missing[:5])}")
    return found
