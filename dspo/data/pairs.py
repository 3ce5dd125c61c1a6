"""Normalise human preference pairs (Pick-a-Pic v2 columns) into one canonical table.

Every later step (caching, training, the "nodup" ablation) reads the canonical table, never
the raw source, so the filtering rules live here only.

Normalising is scattered: :func:`normalise_part` screens part k of N of the source's units
(:mod:`dspo.data.sources`) into a folder of its own, holding one unit in memory at a time, and
:func:`gather_pairs` streams the parts into the canonical table. Any N gives the same table,
byte for byte: pairs keep their place in the source, and the ``max_pairs`` sample takes the
readable pairs with the smallest seeded keys, drawn per (unit, row) and not per part. The
"nodup" table is scattered the same way over row groups (:func:`nodup_part`,
:func:`gather_nodup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile
from tqdm import tqdm

from dspo.data.sources import check_columns, source_units
from dspo.files import PART_RECORD, part_folder

CANONICAL_COLUMNS = ("pair_id", "prompt_id", "caption", "jpg_w", "jpg_l", "label_w", "source_row")
# DDSPO's rejected images have their own (degraded) prompt; human pairs share one caption.
REJECTED_CAPTION = "caption_l"
_VALID_LABELS = {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
# Why a source row is not kept, in the order the checks run (each row counts once, first match).
DROP_REASONS = ("unlabelled", "invalid_label", "identical", "ties_dropped", "unreadable")
# Pairs per parquet row group of the canonical table: a cache part reads only the row groups of
# its own pairs (Pick-a-Pic images are ~0.5 MB, so a group is a few hundred MB at most).
ROW_GROUP_PAIRS = 512
PART_TABLE = "pairs.parquet"


@dataclass(frozen=True)
class PairSettings:
    """How a source becomes the canonical table (the workflow's ``pairs`` slice)."""

    source: dict[str, Any]
    drop_ties: bool = True
    max_pairs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {self.max_pairs}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: Mapping[str, Any]) -> PairSettings:
        """The settings of a ``pairs`` slice, with its source resolved to a readable one."""
        return cls(
            source=dict(source),
            drop_ties=params.get("drop_ties", True),
            max_pairs=params.get("max_pairs"),
            seed=params.get("nodup_seed", 0),
        )


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


def sample_keys(seed: int, unit: int, n_rows: int) -> np.ndarray:
    """Each row's key in the seeded random order in which ``max_pairs`` takes pairs.

    Drawn per unit, so a row's key depends on the seed and its place in the source only.
    """
    return np.random.default_rng([seed, unit]).random(n_rows)


@dataclass(frozen=True)
class _UnitRows:
    """The columns of one source unit that screening and the part's rows read, parsed once."""

    captions: list[str]
    label_0: np.ndarray
    label_1: np.ndarray
    jpg_0: list[bytes | None]
    jpg_1: list[bytes | None]

    @classmethod
    def of(cls, df: pd.DataFrame) -> _UnitRows:
        return cls(
            captions=[c if isinstance(c, str) else "" for c in df["caption"].tolist()],
            label_0=pd.to_numeric(df["label_0"], errors="coerce").to_numpy(dtype=float),
            label_1=pd.to_numeric(df["label_1"], errors="coerce").to_numpy(dtype=float),
            jpg_0=[_image_bytes(v) for v in df["jpg_0"].tolist()],
            jpg_1=[_image_bytes(v) for v in df["jpg_1"].tolist()],
        )


def _screen(
    df: pd.DataFrame, parsed: _UnitRows, drop_ties: bool
) -> tuple[list[int], dict[str, int]]:
    """Rows that pass the metadata checks, and counts of the others by reason."""
    counts = dict.fromkeys(DROP_REASONS[:-1], 0)
    n = len(df)
    has_label = df["has_label"].tolist() if "has_label" in df.columns else [True] * n
    different = df["are_different"].tolist() if "are_different" in df.columns else [True] * n
    label_0, label_1, jpg_0, jpg_1 = parsed.label_0, parsed.label_1, parsed.jpg_0, parsed.jpg_1
    candidates = []
    for row in range(n):
        labels = (float(label_0[row]), float(label_1[row]))
        if not _as_bool(has_label[row], default=True):
            counts["unlabelled"] += 1
        elif labels not in _VALID_LABELS:
            counts["invalid_label"] += 1
        elif not _as_bool(different[row], default=True) or (
            jpg_0[row] is not None and jpg_0[row] == jpg_1[row]
        ):
            counts["identical"] += 1
        elif labels == (0.5, 0.5) and drop_ties:
            counts["ties_dropped"] += 1
        else:
            candidates.append(row)
    return candidates, counts


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


# A part's rows: the canonical pair columns that it knows, and where each pair stands in the
# source (its unit and row there) with its sample key; the gather turns these into ids.
_PART_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("unit_row", pa.int64()),
        ("key", pa.float64()),
        *(_PAIRS_SCHEMA.field(name) for name in CANONICAL_COLUMNS[1:-1]),
    ]
)


def normalise_part(settings: PairSettings, part: int, parts: int, out_dir: Path) -> dict[str, Any]:
    """Screen part ``part`` of ``parts`` of the source into the folder ``out_dir``.

    The part is a contiguous range of the source's units. Rows failing a metadata check
    (has_label false, labels not (1,0), (0,1) or (0.5,0.5), identical images, ties when
    dropped) are counted; the others are decoded in full and kept if both images are readable,
    winner first. With ``max_pairs`` the candidates are visited by key and the part stops
    decoding a unit at the first key above its ``max_pairs`` smallest readable ones so far:
    such a pair cannot be in the sample. The folder (``pairs.parquet`` + ``part.json``) is
    written beside its target and renamed into place whole.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    units = source_units(settings.source)
    first, stop = part * len(units) // parts, (part + 1) * len(units) // parts
    counts = dict.fromkeys(("input", *DROP_REASONS[:-1], "candidates", "written"), 0)
    unit_rows, unreadable_keys = [], []
    best: list[float] = []  # the max_pairs smallest readable keys so far, negated (a max-heap)
    with (
        part_folder(Path(out_dir), "pairs") as (tmp, record),
        pq.ParquetWriter(tmp / PART_TABLE, _PART_SCHEMA) as writer,
        _strict_truncation(),
    ):
        for unit in tqdm(range(first, stop), desc=f"pairs part {part}", mininterval=5):
            df = units[unit].read()
            check_columns(df.columns, units[unit].name)
            unit_rows.append(len(df))
            counts["input"] += len(df)
            parsed = _UnitRows.of(df)
            candidates, screened = _screen(df, parsed, settings.drop_ties)
            for reason, n in screened.items():
                counts[reason] += n
            counts["candidates"] += len(candidates)
            keys = sample_keys(settings.seed, unit, len(df))
            if settings.max_pairs is not None:
                candidates = sorted(candidates, key=lambda row: keys[row])
            kept = []
            for row in candidates:
                sample_full = settings.max_pairs is not None and len(best) == settings.max_pairs
                if sample_full and keys[row] > -best[0]:
                    break
                if image_is_readable(parsed.jpg_0[row]) and image_is_readable(parsed.jpg_1[row]):
                    kept.append(row)
                    if settings.max_pairs is not None:
                        heapq.heappush(best, -keys[row])
                        if len(best) > settings.max_pairs:
                            heapq.heappop(best)
                else:
                    unreadable_keys.append(float(keys[row]))
            writer.write_table(_part_rows(parsed, unit, sorted(kept), keys))
            counts["written"] += len(kept)
        record |= {
            "part": part,
            "parts": parts,
            "settings": asdict(settings),
            "n_blocks": len(units),
            "blocks": [first, stop],
            "unit_rows": unit_rows,
            "counts": counts,
            "unreadable_keys": unreadable_keys,
        }
    return record


def _part_rows(parsed: _UnitRows, unit: int, rows: list[int], keys: np.ndarray) -> pa.Table:
    """The kept ``rows`` of one unit in the part's schema, the preferred image first."""
    captions, label_0, label_1 = parsed.captions, parsed.label_0, parsed.label_1
    jpg_0, jpg_1 = parsed.jpg_0, parsed.jpg_1
    # Ties keep the source order; otherwise the image labelled 1 goes first.
    first_wins = [bool(label_0[r] >= label_1[r]) for r in rows]
    columns = {
        "unit": [unit] * len(rows),
        "unit_row": rows,
        "key": [float(keys[r]) for r in rows],
        "prompt_id": [prompt_id_of(captions[r]) for r in rows],
        "caption": [captions[r] for r in rows],
        "jpg_w": [jpg_0[r] if w else jpg_1[r] for r, w in zip(rows, first_wins, strict=True)],
        "jpg_l": [jpg_1[r] if w else jpg_0[r] for r, w in zip(rows, first_wins, strict=True)],
        "label_w": [float(max(label_0[r], label_1[r])) for r in rows],
    }
    return pa.Table.from_pydict(columns, schema=_PART_SCHEMA)


def _read_part_records(part_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each part's record, in part order, checked to form one whole.

    A part covers the blocks (source units, or row groups of a pair table) ``blocks[0]`` to
    ``blocks[1]`` of ``n_blocks``; together the parts cover each block once, in order, under
    one setting.
    """
    records = []
    for folder in part_dirs:
        manifest = Path(folder) / PART_RECORD
        if not manifest.exists():
            raise FileNotFoundError(f"{folder}: not a finished pairs part (no {PART_RECORD})")
        records.append(json.loads(manifest.read_text()))
    parts = len(records)
    expected_block = 0
    for index, (folder, record) in enumerate(zip(part_dirs, records, strict=True)):
        if (record["part"], record["parts"]) != (index, parts):
            raise ValueError(
                f"{folder}: part {record['part']} of {record['parts']}, expected {index} of {parts}"
            )
        for key in ("settings", "n_blocks"):
            if record[key] != records[0][key]:
                raise ValueError(f"{folder}: {key} differ from those of {part_dirs[0]}")
        if record["blocks"][0] != expected_block:
            raise ValueError(
                f"{folder}: starts at block {record['blocks'][0]}, not {expected_block}"
            )
        expected_block = record["blocks"][1]
    if expected_block != records[0]["n_blocks"]:
        raise ValueError(f"the parts cover {expected_block} of {records[0]['n_blocks']} blocks")
    return records


def gather_pairs(part_dirs: Sequence[Path], out: Path) -> dict[str, int]:
    """Join the parts of :func:`normalise_part` into the canonical table ``out``.

    Returns the counts of the whole source, each source row counted once, as one job visiting
    the candidates in key order would count them: ``input == kept + sum(dropped)``, where
    ``unreadable`` counts the candidates below the sample's largest key that failed to decode
    and ``not_sampled`` the candidates past it. Raises before writing anything if no pair is
    left.
    """
    records = _read_part_records(part_dirs)
    max_pairs = records[0]["settings"]["max_pairs"]
    unit_rows = np.array([n for r in records for n in r["unit_rows"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(unit_rows)[:-1]]).astype(np.int64)
    keys = np.concatenate(
        [pq.read_table(Path(d) / PART_TABLE, columns=["key"])["key"].to_numpy() for d in part_dirs]
    )
    threshold = np.inf
    if max_pairs is not None and len(keys) > max_pairs:
        threshold = float(np.partition(keys, max_pairs - 1)[max_pairs - 1])
    stats = {"input": 0, "kept": int((keys <= threshold).sum())}
    stats |= dict.fromkeys((*DROP_REASONS, "not_sampled"), 0)
    candidates = 0
    for record in records:
        for reason in ("input", *DROP_REASONS[:-1]):
            stats[reason] += record["counts"][reason]
        candidates += record["counts"]["candidates"]
        # Unreadable pairs past the threshold would not have been visited by one job either.
        stats["unreadable"] += sum(k < threshold for k in record["unreadable_keys"])
    stats["not_sampled"] = candidates - stats["kept"] - stats["unreadable"]
    if stats["kept"] == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("input", "kept"))
        raise ValueError(f"no preference pair left out of {stats['input']} rows ({reasons})")
    next_id = 0
    with PairWriter(out) as writer:
        for folder in part_dirs:
            table = pq.ParquetFile(Path(folder) / PART_TABLE)
            for group in range(table.num_row_groups):
                rows = table.read_row_group(group).to_pandas()
                rows = rows[rows["key"] <= threshold].reset_index(drop=True)
                rows["source_row"] = offsets[rows["unit"].to_numpy()] + rows["unit_row"]
                rows["pair_id"] = np.arange(next_id, next_id + len(rows), dtype=np.int64)
                next_id += len(rows)
                writer.write(rows)
    return stats


def nodup_rows(prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    """Positions of one pair per prompt, chosen uniformly at random with ``seed``, in order."""
    order = np.random.default_rng(seed).permutation(len(prompt_ids))
    # The first pair of each prompt in a random permutation is a uniform choice among its pairs.
    _, first = np.unique(np.asarray(prompt_ids)[order], return_index=True)
    return np.sort(order[first])


def nodup_part(src: Path, part: int, parts: int, seed: int, out_dir: Path) -> dict[str, Any]:
    """Copy the pairs that :func:`nodup_rows` keeps from part ``part`` of ``parts`` of ``src``.

    Every part decides from the prompt ids of the whole table (8 bytes a pair), so all parts
    agree; each then copies the kept pairs of its contiguous block of row groups, one group
    at a time, into the folder ``out_dir`` (renamed into place whole).
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    table = pq.ParquetFile(src)
    names = table.schema_arrow.names
    _check_canonical(names, str(src))
    columns = [*CANONICAL_COLUMNS, *([REJECTED_CAPTION] if REJECTED_CAPTION in names else [])]
    prompt_ids = table.read(columns=["prompt_id"])["prompt_id"].to_numpy()
    keep = np.zeros(len(prompt_ids), dtype=bool)
    keep[nodup_rows(prompt_ids, seed)] = True
    groups = table.num_row_groups
    first, stop = part * groups // parts, (part + 1) * groups // parts
    offset = sum(table.metadata.row_group(g).num_rows for g in range(first))
    kept = 0
    with part_folder(Path(out_dir), "pairs") as (tmp, record):
        with PairWriter(tmp / PART_TABLE, rejected_caption=REJECTED_CAPTION in names) as writer:
            for group in tqdm(range(first, stop), desc=f"nodup part {part}", mininterval=5):
                size = table.metadata.row_group(group).num_rows
                mask = keep[offset : offset + size]
                offset += size
                if mask.any():
                    rows = table.read_row_group(group, columns=columns).to_pandas()
                    writer.write(rows[mask])
                    kept += int(mask.sum())
        record |= {
            "part": part,
            "parts": parts,
            "settings": {"pairs": len(prompt_ids), "seed": seed},
            "n_blocks": groups,
            "blocks": [first, stop],
            "kept": kept,
        }
    return record


def gather_nodup(part_dirs: Sequence[Path], out: Path) -> dict[str, int]:
    """Join the parts of :func:`nodup_part` into one table, pair ids renumbered from 0."""
    records = _read_part_records(part_dirs)
    names = pq.read_schema(Path(part_dirs[0]) / PART_TABLE).names
    next_id = 0
    with PairWriter(out, rejected_caption=REJECTED_CAPTION in names) as writer:
        for folder in part_dirs:
            table = pq.ParquetFile(Path(folder) / PART_TABLE)
            for group in range(table.num_row_groups):
                rows = table.read_row_group(group).to_pandas()
                rows["pair_id"] = np.arange(next_id, next_id + len(rows), dtype=np.int64)
                next_id += len(rows)
                writer.write(rows)
    return {"input": records[0]["settings"]["pairs"], "kept": next_id, "prompts": next_id}


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


class PairWriter:
    """Write a canonical pair table to parquet atomically, in row groups of ROW_GROUP_PAIRS.

    Rows go to a temp file beside the target, renamed over it on a clean exit and removed on
    an error, so a reader sees the old table or the whole new one. Whatever the sizes of the
    written batches, the groups are the same, so equal rows give the same file.
    """

    def __init__(self, path: str | os.PathLike[str], rejected_caption: bool = False) -> None:
        self.path = Path(path)
        self.columns = [*CANONICAL_COLUMNS, *([REJECTED_CAPTION] if rejected_caption else [])]
        self.schema = _PAIRS_SCHEMA
        if rejected_caption:
            self.schema = self.schema.append(pa.field(REJECTED_CAPTION, pa.string()))
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
        _check_canonical(list(df.columns), str(self.path))
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
    """Write a canonical table held in memory (e.g. DDSPO's pairs) with :class:`PairWriter`."""
    _check_canonical(list(df.columns), str(path))
    with PairWriter(path, rejected_caption=REJECTED_CAPTION in df.columns) as writer:
        # One row group at a time: the images are never all held twice (pandas, arrow).
        for start in range(0, len(df), ROW_GROUP_PAIRS):
            writer.write(df.iloc[start : start + ROW_GROUP_PAIRS])


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
