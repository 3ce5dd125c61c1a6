"""Raw pair sources in the Pick-a-Pic v2 columns, read one unit at a time.

A source is a local parquet copy, webdataset tar shards or a hub dataset. :func:`source_units`
lists it as units, the blocks a scattered job reads one after the other:

- parquet: one row group of one file (files sorted by path): a local folder, file or glob,
  of one split chosen by file name (:mod:`dspo.data.split_files`);
- webdataset: one tar file, its members read with a member mapping (:mod:`dspo.data.tar_source`);
- hub: the split's parquet files (or webdataset tars) alone, downloaded to the hub cache (or
  found there offline) and read as a parquet folder (or a webdataset); when streaming, one
  shard file read over the network.

Every key a source kind does not read is refused (:func:`key_problems`), and a local
source's layout is checked from its first file (:func:`layout_problems`); the workflow runs
both when it plans (dspo/config/check.py), before any job.

A unit of a local or downloaded file names that file, so a pair table can refer to its
images there instead of copying them (:mod:`dspo.data.image_refs`); a streamed unit cannot.

The list is the same in every job, so part k of N is a contiguous range of units, and a row's
identity (its unit and its row in the unit) does not depend on N. A job holds one unit at a
time in memory, never the whole source.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from dspo.data.split_files import (
    HUB_PAIR_SUFFIXES,
    PAIR_SUFFIXES,
    hub_split_files,
    listing,
    split_files,
)
from dspo.data.tar_source import (
    KEY,
    describe_layouts,
    first_sample,
    mapping_problems,
    recognise,
    tar_frame,
)

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
OPTIONAL_COLUMNS = ("has_label", "are_different", "ranking_id")

# Keys of each source kind; every other key is refused (by the loader and at plan time).
SOURCE_KEYS = {
    "parquet": {"required": {"kind", "path"}, "optional": {"split"}},
    "hub": {"required": {"kind", "id"}, "optional": {"split", "revision", "streaming"}},
    "webdataset": {"required": {"kind", "path"}, "optional": {"split", "members"}},
}


@dataclass(frozen=True)
class SourceUnit:
    """One block of a source: ``read()`` returns its rows with the Pick-a-Pic columns.

    A unit of a durable file names it (``file``, under the source's ``root``) and where its
    rows start there (``first_row``); a tar's unit also its member mapping (``members``).
    A streamed unit has no file: its images live nowhere else once read.
    """

    name: str
    read: Callable[[], pd.DataFrame]
    file: Path | None = None
    root: Path | None = None
    first_row: int = 0
    members: Mapping[str, str] | None = None

    def locations(self, df: pd.DataFrame) -> tuple[list[int], list[str], list[str]]:
        """Where the images of the rows ``df`` (this unit's, as read) are in ``file``: each
        row's place in the file, and the column (parquet) or member (tar) of ``jpg_0`` and
        of ``jpg_1`` (:mod:`dspo.data.image_refs`)."""
        if self.file is None:
            raise ValueError(f"{self.name}: a streamed unit has no file to refer to")
        rows = list(range(self.first_row, self.first_row + len(df)))
        if self.members is None:
            return rows, ["jpg_0"] * len(df), ["jpg_1"] * len(df)
        keys = df[KEY].tolist()
        first, second = self.members["jpg_0"], self.members["jpg_1"]
        return rows, [f"{key}.{first}" for key in keys], [f"{key}.{second}" for key in keys]


def key_problems(source: Mapping[str, Any]) -> list[str]:
    """Why the keys of a pair source are unusable, each message naming its key (empty when
    they are usable). A key set to null counts as absent, so a preset merged over another can
    drop a key of the other's source kind. Reads no file."""
    source = _present(source)
    kind = source.get("kind")
    if kind not in SOURCE_KEYS:
        return [f"kind: must be one of {sorted(SOURCE_KEYS)}, got {kind!r}"]
    spec = SOURCE_KEYS[kind]
    allowed = spec["required"] | spec["optional"]
    problems = [
        f"{key}: unknown key for a {kind!r} source (its keys: {', '.join(sorted(allowed))})"
        for key in source
        if key not in allowed
    ]
    problems += [
        f"{key}: a {kind!r} source needs it"
        for key in sorted(spec["required"])
        if source.get(key) in (None, "")
    ]
    if "members" in source:
        problems += [f"members: {p}" for p in mapping_problems(source["members"])]
    return problems


def layout_problems(source: Mapping[str, Any], root: Path | str = ".") -> list[str]:
    """Why a local pair source's files do not hold pairs (empty when they do; a hub source is
    not looked at). Reads only the first file's schema or the first tar's first sample, so
    it is cheap enough for the plan; ``path`` is relative to ``root``."""
    source = _present(source)
    if key_problems(source) or source["kind"] == "hub":
        return []
    path = str(Path(root) / str(source["path"]))
    try:
        if source["kind"] == "parquet":
            files = split_files(path, source.get("split"), PAIR_SUFFIXES)
            check_columns(pq.read_schema(files[0]).names, str(files[0]))
        else:
            files = split_files(path, source.get("split"), (".tar",))
            _tar_members(files, f"webdataset {path}", Path(path), source.get("members"))
    except (OSError, ValueError) as exc:
        return [str(exc)]
    return []


def source_units(source: Mapping[str, Any]) -> list[SourceUnit]:
    """The units of a source, in source order.

    ``source`` is ``{"kind": "parquet", "path": ..., "split": ...}``,
    ``{"kind": "webdataset", "path": ..., "split": ..., "members": ...}`` or
    ``{"kind": "hub", "id": ..., "split": ..., "revision": ..., "streaming": ...}``
    (:data:`SOURCE_KEYS`; a source :func:`key_problems` refuses raises ValueError).
    Only the required and optional Pick-a-Pic columns are read. A non-streaming hub source
    downloads only its split's files and reads them: parquet files as a parquet folder, a
    split held in webdataset tars (the public copy's layout) as a webdataset source.
    """
    problems = key_problems(source)
    if problems:
        raise ValueError("pair source: " + "; ".join(problems))
    source = _present(source)
    kind = source["kind"]
    if kind == "parquet":
        path = str(source["path"])
        files = split_files(path, source.get("split"), PAIR_SUFFIXES)
        return _parquet_units(files, source_root(path, files))
    if kind == "webdataset":
        path = str(source["path"])
        files = split_files(path, source.get("split"), (".tar",))
        where = f"webdataset {path}"
        return _tar_units(files, where, source_root(path, files), source.get("members"))
    split = source.get("split") or "train"
    if source.get("streaming"):
        return _streamed_units(source["id"], split=split, revision=source.get("revision"))
    files = hub_split_files(source["id"], split, source.get("revision"), HUB_PAIR_SUFFIXES)
    parquet = [f for f in files if f.suffix in PAIR_SUFFIXES]
    if parquet:
        return _parquet_units(parquet, source_root(None, parquet))
    # A hub copy in webdataset tars (sayakpaul/pickapic_v2_webdataset): its layout recognised.
    return _tar_units(files, f"hub dataset {source['id']}", source_root(None, files), None)


def source_root(path: str | None, files: list[Path]) -> Path:
    """The folder a source's files are named relative to: the folder given as ``path``, else
    the deepest folder holding all of ``files`` (a file or glob, a hub snapshot)."""
    if path is not None and Path(path).is_dir():
        return Path(path)
    return Path(os.path.commonpath([str(f.parent) for f in files]))


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


def _present(source: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in source.items() if value is not None}


def _tar_units(
    files: list[Path], where: str, root: Path, members: Mapping[str, str] | None
) -> list[SourceUnit]:
    """One unit per tar file, read with :func:`_tar_members`' mapping."""
    mapping = _tar_members(files, where, root, members)
    return [
        SourceUnit(str(file), partial(tar_frame, file, mapping), file, root, members=mapping)
        for file in files
    ]


def _tar_members(
    files: list[Path], where: str, root: Path, members: Mapping[str, str] | None
) -> dict[str, str]:
    """The member mapping of a webdataset's tar ``files``: ``members`` when given, else the
    known layout its first tar's first sample has (ValueError naming what it found)."""
    key, suffixes = first_sample(files[0])
    found = (
        f"{where}: found {listing(files, root)}; the first sample "
        f"{key!r} of {files[0].name} has members {suffixes}"
    )
    if members is None:
        members = recognise(suffixes)
        if members is None:
            raise ValueError(
                f"{found}, which match no known layout ({describe_layouts()}); name the "
                "members of each column with the source's `members` key"
            )
    missing = [suffix for suffix in members.values() if suffix not in suffixes]
    if missing:
        raise ValueError(f"{found}; expected {', '.join(missing)} (members: {dict(members)})")
    return dict(members)


def _parquet_units(files: list[Path], root: Path) -> list[SourceUnit]:
    units = []
    for file in files:
        meta = pq.ParquetFile(file)
        names = meta.schema_arrow.names
        check_columns(names, str(file))
        wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        first_row = 0
        for group in range(meta.num_row_groups):
            read = partial(_read_row_group, file, group, wanted)
            name = f"{file} (row group {group})"
            units.append(SourceUnit(name, read, file, root, first_row))
            first_row += meta.metadata.row_group(group).num_rows
    return units


def _read_row_group(file: Path, group: int, columns: list[str]) -> pd.DataFrame:
    return pq.ParquetFile(file).read_row_group(group, columns=columns).to_pandas()


def _streamed_units(dataset_id: str, *, split: str, revision: str | None) -> list[SourceUnit]:
    """A hub dataset read shard file by shard file over the network (needs ``datasets``)."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "streaming a hub dataset needs the 'datasets' package: pip install dspo[hub]"
        ) from exc
    ds = datasets.load_dataset(dataset_id, split=split, revision=revision, streaming=True)
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
    n = ds.num_shards
    return [
        SourceUnit(f"{where} shard {i} of {n}", partial(_hub_shard, ds, n, i)) for i in range(n)
    ]


def _hub_shard(ds: Any, num_shards: int, index: int) -> pd.DataFrame:
    rows = list(ds.shard(num_shards=num_shards, index=index))
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
