"""Raw pair sources in the Pick-a-Pic v2 columns, read one unit at a time.

A source is a local parquet copy, webdataset tar shards or a hub dataset. :func:`source_units`
lists it as units, the blocks a scattered job reads one after the other:

- parquet: one row group of one file (files sorted by path);
- webdataset: one tar file;
- hub: one shard file when streaming, else one block of ``HUB_BLOCK_ROWS`` rows.

The list is the same in every job, so part k of N is a contiguous range of units, and a row's
identity (its unit and its row in the unit) does not depend on N. A job holds one unit at a
time in memory, never the whole source.
"""

from __future__ import annotations

import glob
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
OPTIONAL_COLUMNS = ("has_label", "are_different", "ranking_id")
# Rows per unit of a non-streaming hub dataset (Pick-a-Pic's train split: ~240 units).
HUB_BLOCK_ROWS = 4096

_SOURCE_KEYS = {
    "parquet": {"required": {"kind", "path"}, "optional": {"split"}},
    "hub": {"required": {"kind", "id"}, "optional": {"split", "revision", "streaming"}},
    "webdataset": {"required": {"kind", "path"}, "optional": {"split"}},
}
# Members of a webdataset sample that the loader reads (see _tar_frame); others are skipped.
_WDS_MEMBERS = ("jpg_0", "jpg_1", "json")


@dataclass(frozen=True)
class SourceUnit:
    """One block of a source: ``read()`` returns its rows with the Pick-a-Pic columns."""

    name: str
    read: Callable[[], pd.DataFrame]


def source_units(source: Mapping[str, Any]) -> list[SourceUnit]:
    """The units of a source, in source order.

    ``source`` is ``{"kind": "parquet", "path": ..., "split": ...}``,
    ``{"kind": "webdataset", "path": ..., "split": ...}`` or
    ``{"kind": "hub", "id": ..., "split": ..., "revision": ..., "streaming": ...}``.
    Only the required and optional Pick-a-Pic columns are read. A key set to null counts as
    absent, so a preset merged over another can drop a key of the other's source kind.
    """
    source = {key: value for key, value in source.items() if value is not None}
    kind = source.get("kind")
    if kind not in _SOURCE_KEYS:
        raise ValueError(f"source key 'kind' must be one of {sorted(_SOURCE_KEYS)}, got {kind!r}")
    spec = _SOURCE_KEYS[kind]
    for key in source:
        if key not in spec["required"] | spec["optional"]:
            raise ValueError(f"unknown key {key!r} for a {kind!r} source")
    for key in sorted(spec["required"]):
        if source.get(key) in (None, ""):
            raise ValueError(f"a {kind!r} source needs the key {key!r}")
    if kind == "parquet":
        return _parquet_units(str(source["path"]), source.get("split"))
    if kind == "webdataset":
        files = _source_files(str(source["path"]), source.get("split"), ".tar")
        return [SourceUnit(str(file), partial(_tar_frame, file)) for file in files]
    return _hub_units(
        source["id"],
        split=source.get("split") or "train",
        revision=source.get("revision"),
        streaming=bool(source.get("streaming", False)),
    )


def load_source(source: Mapping[str, Any]) -> pd.DataFrame:
    """All rows of a source in one table (for small sources; the workflow reads units)."""
    frames = [unit.read() for unit in source_units(source)]
    return pd.concat(frames, ignore_index=True)


def check_columns(names: Iterable[str], where: str) -> None:
    """Fail naming the file or unit if a required Pick-a-Pic column is not in ``names``."""
    names = set(names)
    for col in REQUIRED_COLUMNS:
        if col not in names:
            raise ValueError(f"{where}: missing required column {col!r}")


def _matches_split(file: Path, split: str, folders: tuple[str, ...]) -> bool:
    # Pick-a-Pic shards are named "<split>-00000-of-00010[-hash].parquet" (webdataset copies
    # "<split>-000000.tar"); the "-" matters so that "validation" does not also pick up
    # "validation_unique-...". A split sub-folder ("train/0000.parquet") is the other common
    # layout of copies.
    name = file.name
    return name.startswith(f"{split}-") or name == f"{split}{file.suffix}" or split in folders


def _source_files(path: str, split: str | None, suffix: str) -> list[Path]:
    """The ``suffix`` files of a file, folder (searched recursively) or glob, of one split."""
    p = Path(path)
    if p.is_file():
        # An explicitly named file is taken as the caller's choice of split.
        return [p]
    if p.is_dir():
        files = sorted(p.rglob(f"*{suffix}"))
        # Only folders below the given one may name the split, not its ancestors.
        folders = {f: f.relative_to(p).parts[:-1] for f in files}
        where = f"folder {p}"
    else:
        files = sorted(Path(f) for f in glob.glob(path, recursive=True))
        files = [f for f in files if f.is_file() and f.suffix == suffix]
        folders = {f: () for f in files}
        where = f"glob {path!r}"
    if split:
        files = [f for f in files if _matches_split(f, split, folders[f])]
    if not files:
        pattern = f"{split}-*{suffix}" if split else f"*{suffix}"
        raise FileNotFoundError(f"no {suffix} file matching {pattern!r} in {where}")
    return files


def _parquet_units(path: str, split: str | None) -> list[SourceUnit]:
    units = []
    for file in _source_files(path, split, ".parquet"):
        meta = pq.ParquetFile(file)
        names = meta.schema_arrow.names
        check_columns(names, str(file))
        wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        for group in range(meta.num_row_groups):
            read = partial(_read_row_group, file, group, wanted)
            units.append(SourceUnit(f"{file} (row group {group})", read))
    return units


def _read_row_group(file: Path, group: int, columns: list[str]) -> pd.DataFrame:
    return pq.ParquetFile(file).read_row_group(group, columns=columns).to_pandas()


def _tar_frame(file: Path) -> pd.DataFrame:
    """The pairs of one webdataset tar file.

    The layout (webdataset's convention: a sample is the run of consecutive members that share
    a key, the member name up to the first dot of its file name):

        KEY.jpg_0   the first image (JPEG, PNG or any format PIL reads)
        KEY.jpg_1   the second image
        KEY.json    {"caption": ..., "label_0": ..., "label_1": ...} and optionally
                    "has_label", "are_different", "ranking_id" (Pick-a-Pic's columns)

    Other members of a sample (e.g. ``KEY.txt``) are skipped.
    """
    rows = list(_tar_rows(file))
    if not rows:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    return pd.DataFrame.from_records(rows)


def _tar_rows(file: Path) -> Iterator[dict[str, Any]]:
    """The pair rows of one tar file, read in one sequential pass (stream mode, no index)."""
    key, members = None, {}
    with tarfile.open(file, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, _, extension = name.partition(".")
            sample = f"{folder}/{stem}" if folder else stem
            if sample != key:
                if key is not None:
                    yield _wds_row(file, key, members)
                key, members = sample, {}
            if extension in _WDS_MEMBERS:
                members[extension] = tar.extractfile(member).read()
    if key is not None:
        yield _wds_row(file, key, members)


def _wds_row(file: Path, key: str, members: dict[str, bytes]) -> dict[str, Any]:
    missing = [m for m in _WDS_MEMBERS if m not in members]
    if missing:
        raise ValueError(f"{file}: sample {key!r} has no {', '.join(missing)} member")
    try:
        meta = json.loads(members["json"])
    except ValueError as exc:
        raise ValueError(f"{file}: {key}.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: {key}.json must hold an object")
    for field in ("caption", "label_0", "label_1"):
        if field not in meta:
            raise ValueError(f"{file}: {key}.json lacks the key {field!r}")
    row = {"jpg_0": members["jpg_0"], "jpg_1": members["jpg_1"]}
    for col in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        if col in meta:
            row[col] = meta[col]
    return row


def _hub_units(
    dataset_id: str, *, split: str, revision: str | None, streaming: bool
) -> list[SourceUnit]:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "reading a hub dataset needs the 'datasets' package: pip install dspo[hub]"
        ) from exc
    ds = datasets.load_dataset(dataset_id, split=split, revision=revision, streaming=streaming)
    where = f"{dataset_id} ({split})"
    # Streaming datasets may not know their columns until iterated; then each unit is checked.
    names = ds.column_names
    if names is not None:
        check_columns(names, where)
        ds = ds.select_columns([c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names])
    # Copies that store images as an Image feature would otherwise be decoded to PIL objects.
    for col in ("jpg_0", "jpg_1"):
        if ds.features is not None and isinstance(ds.features.get(col), datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    if streaming:
        n = ds.num_shards
        return [
            SourceUnit(f"{where} shard {i} of {n}", partial(_hub_shard, ds, n, i)) for i in range(n)
        ]
    blocks = range(0, len(ds), HUB_BLOCK_ROWS)
    return [
        SourceUnit(f"{where} rows {start}-{start + HUB_BLOCK_ROWS}", partial(_hub_block, ds, start))
        for start in blocks
    ]


def _hub_shard(ds: Any, num_shards: int, index: int) -> pd.DataFrame:
    rows = list(ds.shard(num_shards=num_shards, index=index))
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(REQUIRED_COLUMNS))


def _hub_block(ds: Any, start: int) -> pd.DataFrame:
    return ds.select(range(start, min(start + HUB_BLOCK_ROWS, len(ds)))).to_pandas()
