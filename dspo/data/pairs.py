"""Load human preference pairs (Pick-a-Pic v2 schema) and normalise them to one canonical table.

Every later step (caching, training, the "nodup" ablation) reads the canonical table written by
:func:`write_pairs`, never the raw source, so the filtering rules live here only.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
OPTIONAL_COLUMNS = ("has_label", "are_different", "ranking_id")
CANONICAL_COLUMNS = ("pair_id", "prompt_id", "caption", "jpg_w", "jpg_l", "label_w", "source_row")
# DDSPO's rejected images have their own (degraded) prompt; human pairs share one caption.
REJECTED_CAPTION = "caption_l"

_SOURCE_KEYS = {
    "parquet": {"required": {"kind", "path"}, "optional": {"split"}},
    "hub": {"required": {"kind", "id"}, "optional": {"split", "revision", "streaming"}},
    "webdataset": {"required": {"kind", "path"}, "optional": {"split"}},
}
# Members of a webdataset sample that the loader reads (see _load_webdataset); others are skipped.
_WDS_MEMBERS = ("jpg_0", "jpg_1", "json")
_VALID_LABELS = {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
# Pairs per parquet row group of the canonical table: a cache part reads only the row groups of
# its own pairs (Pick-a-Pic images are ~0.5 MB, so a group is a few hundred MB at most).
ROW_GROUP_PAIRS = 512


def load_source(source: Mapping[str, Any]) -> pd.DataFrame:
    """Read the raw pair columns from a local parquet copy, webdataset shards or a hub dataset.

    ``source`` is ``{"kind": "parquet", "path": ..., "split": ...}``,
    ``{"kind": "webdataset", "path": ..., "split": ...}`` or
    ``{"kind": "hub", "id": ..., "split": ..., "revision": ..., "streaming": ...}``.
    Only the required and optional Pick-a-Pic columns are read.
    """
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
        return _load_parquet(str(source["path"]), source.get("split"))
    if kind == "webdataset":
        return _load_webdataset(str(source["path"]), source.get("split"))
    return _load_hub(
        source["id"],
        split=source.get("split") or "train",
        revision=source.get("revision"),
        streaming=bool(source.get("streaming", False)),
    )


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


def _load_parquet(path: str, split: str | None) -> pd.DataFrame:
    frames = []
    for file in _source_files(path, split, ".parquet"):
        names = pq.read_schema(file).names
        for col in REQUIRED_COLUMNS:
            if col not in names:
                raise ValueError(f"{file}: missing required column {col!r}")
        wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        frames.append(pq.read_table(file, columns=wanted).to_pandas())
    return pd.concat(frames, ignore_index=True)


def _load_webdataset(path: str, split: str | None) -> pd.DataFrame:
    """Read pairs from webdataset shards: tar files, selected by split as parquet files are.

    The layout (webdataset's convention: a sample is the run of consecutive members that share
    a key, the member name up to the first dot of its file name):

        KEY.jpg_0   the first image (JPEG, PNG or any format PIL reads)
        KEY.jpg_1   the second image
        KEY.json    {"caption": ..., "label_0": ..., "label_1": ...} and optionally
                    "has_label", "are_different", "ranking_id" (Pick-a-Pic's columns)

    Other members of a sample (e.g. ``KEY.txt``) are skipped.
    """
    rows = []
    for file in _source_files(path, split, ".tar"):
        rows.extend(_tar_rows(file))
    if not rows:
        raise ValueError(f"no webdataset sample in {path!r}")
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


def _load_hub(
    dataset_id: str, *, split: str, revision: str | None, streaming: bool
) -> pd.DataFrame:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "reading a hub dataset needs the 'datasets' package: pip install dspo[hub]"
        ) from exc
    ds = datasets.load_dataset(dataset_id, split=split, revision=revision, streaming=streaming)
    # Streaming datasets may not know their columns until iterated; then trust the schema.
    names = ds.column_names
    if names is not None:
        for col in REQUIRED_COLUMNS:
            if col not in names:
                raise ValueError(f"{dataset_id} ({split}): missing required column {col!r}")
        ds = ds.select_columns([c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names])
    # Copies that store images as an Image feature would otherwise be decoded to PIL objects.
    for col in ("jpg_0", "jpg_1"):
        if ds.features is not None and isinstance(ds.features.get(col), datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    df = pd.DataFrame.from_records(iter(ds)) if streaming else ds.to_pandas()
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            raise ValueError(f"{dataset_id} ({split}): missing required column {col!r}")
    return df


def prompt_id_of(caption: str) -> int:
    """Stable signed 64-bit id of a caption's exact text (same on every run and machine)."""
    digest = hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _image_bytes(value: Any) -> bytes | None:
    # Hub copies with an Image feature give {"bytes": ..., "path": ...} instead of raw bytes.
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    # Other code (training loops) may switch this global on; the check below relies on it off.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def image_is_readable(data: bytes | None) -> bool:
    """True if ``data`` decodes completely with PIL.

    ``Image.verify()`` is not enough: for JPEG it only parses the headers, so a file cut off
    inside the scan data passes. A full ``load()`` reads every entropy-coded byte and raises on
    truncation; ``draft`` lets libjpeg decode at 1/8 scale, which still walks the whole stream
    but is about twice as fast.
    """
    if not data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _as_bool(value: Any, default: bool) -> bool:
    # Nullable columns give None, NaN or pd.NA for a missing flag; only an explicit False drops.
    if value is None or pd.isna(value):
        return default
    return bool(value)


def normalise_pairs(
    df: pd.DataFrame,
    *,
    drop_ties: bool = True,
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Filter raw Pick-a-Pic rows and put the preferred image first.

    Each dropped row is counted once, in the first matching category, in this order:
    ``unlabelled`` (has_label false), ``invalid_label`` (labels not (1,0), (0,1) or (0.5,0.5)),
    ``identical`` (are_different false, or the same bytes), ``ties_dropped``, ``unreadable``
    (either image fails to decode), ``not_sampled`` (left out by ``max_pairs``).
    So ``input == kept + sum(dropped)``. Returns the canonical table and these counts.
    """
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            raise ValueError(f"input table: missing required column {col!r}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")

    stats = {
        "input": len(df),
        "kept": 0,
        "unlabelled": 0,
        "invalid_label": 0,
        "identical": 0,
        "ties_dropped": 0,
        "unreadable": 0,
        "not_sampled": 0,
    }
    has_label = df["has_label"].tolist() if "has_label" in df.columns else [True] * len(df)
    different = df["are_different"].tolist() if "are_different" in df.columns else [True] * len(df)
    label_0 = pd.to_numeric(df["label_0"], errors="coerce").to_numpy(dtype=float)
    label_1 = pd.to_numeric(df["label_1"], errors="coerce").to_numpy(dtype=float)
    jpg_0 = [_image_bytes(v) for v in df["jpg_0"].tolist()]
    jpg_1 = [_image_bytes(v) for v in df["jpg_1"].tolist()]
    captions = [c if isinstance(c, str) else "" for c in df["caption"].tolist()]

    # Cheap metadata filters first so that only surviving rows pay for image decoding.
    candidates = []
    for row in range(len(df)):
        labels = (float(label_0[row]), float(label_1[row]))
        if not _as_bool(has_label[row], default=True):
            stats["unlabelled"] += 1
        elif labels not in _VALID_LABELS:
            stats["invalid_label"] += 1
        elif not _as_bool(different[row], default=True) or (
            jpg_0[row] is not None and jpg_0[row] == jpg_1[row]
        ):
            stats["identical"] += 1
        elif labels == (0.5, 0.5) and drop_ties:
            stats["ties_dropped"] += 1
        else:
            candidates.append(row)

    # With max_pairs, visit candidates in a seeded random order and stop once enough readable
    # pairs are found: a uniform subset of readable pairs without decoding the whole source.
    order = np.asarray(candidates, dtype=np.int64)
    if max_pairs is not None:
        order = np.random.default_rng(seed).permutation(order)
    records = []
    with _strict_truncation():
        for position, row in enumerate(order.tolist()):
            if max_pairs is not None and len(records) == max_pairs:
                stats["not_sampled"] = len(order) - position
                break
            img_0, img_1 = jpg_0[row], jpg_1[row]
            if not (image_is_readable(img_0) and image_is_readable(img_1)):
                stats["unreadable"] += 1
                continue
            # Ties keep the source order; otherwise the image labelled 1 goes first.
            first_wins = label_0[row] >= label_1[row]
            caption = captions[row]
            records.append(
                {
                    "prompt_id": prompt_id_of(caption),
                    "caption": caption,
                    "jpg_w": img_0 if first_wins else img_1,
                    "jpg_l": img_1 if first_wins else img_0,
                    "label_w": float(max(label_0[row], label_1[row])),
                    "source_row": row,
                }
            )

    stats["kept"] = len(records)
    if not records:
        reasons = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("input", "kept"))
        raise ValueError(f"no preference pair left out of {stats['input']} rows ({reasons})")
    pairs = pd.DataFrame.from_records(records).sort_values("source_row", ignore_index=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int64))
    return _canonical_dtypes(pairs), stats


def drop_duplicate_prompts(pairs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Keep one pair per prompt_id, chosen uniformly at random with ``seed`` (the "nodup" run)."""
    _check_canonical(list(pairs.columns), "pairs table")
    order = np.random.default_rng(seed).permutation(len(pairs))
    # The first pair of each prompt in a random permutation is a uniform choice among its pairs.
    kept = pairs.iloc[order].drop_duplicates("prompt_id", keep="first")
    kept = kept.sort_values("pair_id", kind="stable").reset_index(drop=True)
    kept["pair_id"] = np.arange(len(kept), dtype=np.int64)
    return kept


def _check_canonical(names: list[str], where: str) -> None:
    for col in CANONICAL_COLUMNS:
        if col not in names:
            raise ValueError(f"{where}: missing canonical column {col!r}")


def _canonical_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(
        {
            "pair_id": "int64",
            "prompt_id": "int64",
            "caption": "object",
            "label_w": "float64",
            "source_row": "int64",
        }
    )


_PAIRS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.int64()),
        ("prompt_id", pa.int64()),
        ("caption", pa.string()),
        ("jpg_w", pa.binary()),
        ("jpg_l", pa.binary()),
        ("label_w", pa.float64()),
        ("source_row", pa.int64()),
    ]
)


def write_pairs(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the canonical table to parquet atomically: a temp file beside it, then os.replace."""
    path = Path(path)
    _check_canonical(list(df.columns), str(path))
    columns, schema = list(CANONICAL_COLUMNS), _PAIRS_SCHEMA
    if REJECTED_CAPTION in df.columns:
        columns.append(REJECTED_CAPTION)
        schema = schema.append(pa.field(REJECTED_CAPTION, pa.string()))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so os.replace is a rename on one filesystem, never a copy.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with pq.ParquetWriter(fh, schema) as writer:
                # One row group at a time: the images are never all held twice (pandas, arrow).
                for start in range(0, len(df), ROW_GROUP_PAIRS):
                    batch = df.iloc[start : start + ROW_GROUP_PAIRS][columns]
                    writer.write_table(
                        pa.Table.from_pandas(batch, schema=schema, preserve_index=False)
                    )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_pairs(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a canonical pair table written by :func:`write_pairs`, checking its columns."""
    names = pq.read_schema(path).names
    _check_canonical(names, str(path))
    columns = [*CANONICAL_COLUMNS, *([REJECTED_CAPTION] if REJECTED_CAPTION in names else [])]
    return _canonical_dtypes(pq.read_table(path, columns=columns).to_pandas())


def read_pair_texts(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The caption columns of a canonical pair table (no images), in pair order."""
    names = pq.read_schema(path).names
    _check_canonical(names, str(path))
    columns = ["caption", *([REJECTED_CAPTION] if REJECTED_CAPTION in names else [])]
    return pq.read_table(path, columns=columns).to_pandas()


def read_pair_rows(path: str | os.PathLike[str], start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of a canonical pair table, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    _check_canonical(file.schema_arrow.names, str(path))
    groups, first, offset = [], None, 0
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if offset < stop and offset + size > start:
            groups.append(group)
            first = offset if first is None else first
        offset += size
    if not groups:
        raise ValueError(f"{path}: rows {start}:{stop} are beyond its {offset} rows")
    columns = [c for c in file.schema_arrow.names if c in (*CANONICAL_COLUMNS, REJECTED_CAPTION)]
    table = file.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
    return _canonical_dtypes(table.to_pandas())
