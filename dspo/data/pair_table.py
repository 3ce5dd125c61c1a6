"""The canonical pair table: its columns and their types, its writer and its readers.

Every later step (caching, training, the "nodup" ablation) reads this table, never the raw
source; :mod:`dspo.data.pairs` makes it from a source, :mod:`dspo.data.nodup` and
:mod:`dspo.data.ddspo` make the others.

A table made from durable source files holds no image bytes: each pair refers to its images
in the source (:mod:`dspo.data.image_refs`), and :func:`read_pairs` and :func:`read_pair_rows`
read them from there, so readers always get ``jpg_w`` and ``jpg_l``. A table whose images live
nowhere else (a streamed hub source, DDSPO's generated pairs) holds the bytes themselves.

A table made in parts holds each part's rows in :data:`PART_TABLE` of the part's folder;
:func:`read_block_parts` checks that the parts belong together.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dspo.core.files import read_part_records
from dspo.data.image_refs import IMAGE_COLUMNS, REF_COLUMNS, has_refs, resolve_images

# The columns a reader of a pair table gets (the images as bytes, wherever they are stored).
CANONICAL_COLUMNS = ("pair_id", "prompt_id", "caption", "jpg_w", "jpg_l", "label_w", "source_row")
# The columns every stored table has, beside either IMAGE_COLUMNS or REF_COLUMNS.
_ID_COLUMNS = tuple(c for c in CANONICAL_COLUMNS if c not in IMAGE_COLUMNS)
# DDSPO's rejected images have their own (degraded) prompt; human pairs share one caption.
REJECTED_CAPTION = "caption_l"
# Pairs per parquet row group of the canonical table: a cache part reads only the row groups of
# its own pairs (Pick-a-Pic images are ~0.5 MB, so a group is a few hundred MB at most).
ROW_GROUP_PAIRS = 512
# The table of a part's rows in the part's folder.
PART_TABLE = "pairs.parquet"


# Every column a stored pair table may have; a table holds the images or their references.
_FIELDS = {
    "pair_id": pa.int64(),
    "prompt_id": pa.int64(),
    "caption": pa.string(),
    "jpg_w": pa.binary(),
    "jpg_l": pa.binary(),
    "image_root": pa.string(),
    "image_file": pa.string(),
    "image_key": pa.string(),
    "image_row": pa.int64(),
    "ref_w": pa.string(),
    "ref_l": pa.string(),
    "label_w": pa.float64(),
    "source_row": pa.int64(),
    REJECTED_CAPTION: pa.string(),
}


def stored_columns(referenced: bool, rejected_caption: bool = False) -> list[str]:
    """The columns of a stored pair table, in order: the ids and caption, the images' bytes
    or references, the label and source row, and the rejected image's caption if it has one."""
    images = REF_COLUMNS if referenced else IMAGE_COLUMNS
    return [*_ID_COLUMNS[:3], *images, *_ID_COLUMNS[3:], *([REJECTED_CAPTION] * rejected_caption)]


def pair_schema(names: Sequence[str]) -> pa.Schema:
    """The arrow schema of the stored pair columns ``names``, in their order."""
    return pa.schema([(name, _FIELDS[name]) for name in names])


def check_canonical(names: Sequence[str], where: str) -> None:
    """Fail naming ``where`` and the column unless ``names`` hold a pair table's columns: the
    ids, caption, label and source row, and the images (``jpg_w``, ``jpg_l``) or, in a
    table that refers to them, all of :data:`~dspo.data.image_refs.REF_COLUMNS`."""
    images = REF_COLUMNS if has_refs(names) else IMAGE_COLUMNS
    for col in (*_ID_COLUMNS[:3], *images, *_ID_COLUMNS[3:]):
        if col not in names:
            raise ValueError(f"{where}: missing canonical column {col!r}")


def _canonical_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    dtypes = {
        "pair_id": "int64",
        "prompt_id": "int64",
        "caption": "object",
        "label_w": "float64",
        "source_row": "int64",
        "image_row": "int64",
    }
    return df.astype({name: dtype for name, dtype in dtypes.items() if name in df.columns})


class PairWriter:
    """Write a canonical pair table to parquet atomically, in row groups of ROW_GROUP_PAIRS.

    The table holds the images' references (``referenced``) or their bytes
    (:func:`stored_columns`). Rows go to a temp file beside the target, renamed over it on a
    clean exit and removed on an error, so a reader sees the old table or the whole new one.
    Whatever the sizes of the written batches, the groups are the same, so equal rows give
    the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rejected_caption: bool = False,
        referenced: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = stored_columns(referenced, rejected_caption)
        self.schema = pair_schema(self.columns)
        self._pending: list[pa.Table] = []

    def __enter__(self) -> PairWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder as the target so os.replace is a rename on one filesystem, never a copy.
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self._file = os.fdopen(fd, "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)
        return self

    def write(self, df: pd.DataFrame) -> None:
        check_canonical([c for c in df.columns if c in self.columns], str(self.path))
        batch = _canonical_dtypes(df)[self.columns]
        self._pending.append(pa.Table.from_pandas(batch, schema=self.schema, preserve_index=False))
        if sum(t.num_rows for t in self._pending) >= ROW_GROUP_PAIRS:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool) -> None:
        rows = pa.concat_tables(self._pending)
        cut = rows.num_rows
        if whole_groups_only:
            cut -= cut % ROW_GROUP_PAIRS
        for start in range(0, cut, ROW_GROUP_PAIRS):
            self._writer.write_table(rows.slice(start, min(ROW_GROUP_PAIRS, cut - start)))
        self._pending = [rows.slice(cut)] if cut < rows.num_rows else []

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                if self._pending:
                    self._flush(whole_groups_only=False)
                self._writer.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._tmp, self.path)
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def write_pairs(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a canonical table held in memory (e.g. DDSPO's pairs) with :class:`PairWriter`:
    with the images' bytes, or their references where ``df`` holds those."""
    check_canonical(list(df.columns), str(path))
    rejected, referenced = REJECTED_CAPTION in df.columns, has_refs(list(df.columns))
    with PairWriter(path, rejected_caption=rejected, referenced=referenced) as writer:
        # One row group at a time: the images are never all held twice (pandas, arrow).
        for start in range(0, len(df), ROW_GROUP_PAIRS):
            writer.write(df.iloc[start : start + ROW_GROUP_PAIRS])


def table_columns(names: Sequence[str], where: str) -> list[str]:
    """The stored pair columns of a table whose columns are ``names`` (checked), in order."""
    check_canonical(names, where)
    return stored_columns(has_refs(names), REJECTED_CAPTION in names)


def read_pairs(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a canonical pair table, checking its columns, with its images read from the
    source where it refers to them (:func:`~dspo.data.image_refs.resolve_images`)."""
    columns = table_columns(pq.read_schema(path).names, str(path))
    table = _canonical_dtypes(pq.read_table(path, columns=columns).to_pandas())
    return resolve_images(table, str(path))


def read_pair_texts(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The caption columns of a canonical pair table (no images), in pair order."""
    names = pq.read_schema(path).names
    check_canonical(names, str(path))
    columns = ["caption", *([REJECTED_CAPTION] if REJECTED_CAPTION in names else [])]
    return pq.read_table(path, columns=columns).to_pandas()


def read_pair_rows(path: str | os.PathLike[str], start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of a canonical pair table, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if offset < stop and offset + size > start:
            groups.append(group)
            first = offset if first is None else first
        offset += size
    if not groups:
        raise ValueError(f"{path}: rows {start}:{stop} are beyond its {offset} rows")
    columns = table_columns(file.schema_arrow.names, str(path))
    table = file.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
    return resolve_images(_canonical_dtypes(table.to_pandas()), str(path))


def read_block_parts(part_dirs: Sequence[Path], what: str = "pairs") -> list[dict[str, Any]]:
    """The parts' records (:func:`~dspo.core.files.read_part_records`), checked to cover blocks.

    A part covers the blocks (source units, or row groups of a pair table) ``blocks[0]`` to
    ``blocks[1]`` of ``n_blocks``; together the parts cover each block once, in order, under
    one setting.
    """
    records = read_part_records(part_dirs, what, ("settings", "exclude", "n_blocks"))
    expected_block = 0
    for record in records:
        if record["blocks"][0] != expected_block:
            raise ValueError(
                f"{record['dir']}: starts at block {record['blocks'][0]}, not {expected_block}"
            )
        expected_block = record["blocks"][1]
    if expected_block != records[0]["n_blocks"]:
        raise ValueError(f"the parts cover {expected_block} of {records[0]['n_blocks']} blocks")
    return records
