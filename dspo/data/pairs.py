"""Normalise human preference pairs (Pick-a-Pic v2 columns) into one canonical table.

Every later step (caching, training, the "nodup" ablation) reads the canonical table, never
the raw source, so the filtering rules live here only.

Normalising is scattered: :func:`normalise_part` screens part k of N of the source's units
(:mod:`dspo.data.sources`) into a folder of its own, holding one unit in memory at a time, and
:func:`gather_pairs` streams the parts into the canonical table. Any N gives the same table,
byte for byte: pairs keep their place in the source, and the ``max_pairs`` sample takes the
readable pairs with the smallest seeded keys, drawn per (unit, row) and not per part. The
"nodup" table (:mod:`dspo.data.nodup`) is scattered the same way over row groups.

A table made from durable source files holds no image bytes: each pair refers to its images
in the source (:mod:`dspo.data.image_refs`), and :func:`read_pairs` and :func:`read_pair_rows`
read them from there, so readers always get ``jpg_w`` and ``jpg_l``. A table whose images live
nowhere else (a streamed hub source, DDSPO's generated pairs) holds the bytes themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile
from tqdm import tqdm

from dspo.core.content import content_key
from dspo.core.files import part_folder, read_part_records, write_json_atomic
from dspo.data.dedup import (
    CAPTION_BLANK,
    CAPTION_MISSING,
    CAPTION_UNREADABLE,
    GroupVisits,
    caption_text,
    first_of_groups,
    keys_digest,
    normalise_caption,
    pair_key,
)
from dspo.data.image_refs import (
    IMAGE_COLUMNS,
    REF_COLUMNS,
    has_refs,
    image_bytes,
    resolve_images,
)
from dspo.data.sources import SourceUnit, check_columns, source_units

# The columns a reader of a pair table gets (the images as bytes, wherever they are stored).
CANONICAL_COLUMNS = ("pair_id", "prompt_id", "caption", "jpg_w", "jpg_l", "label_w", "source_row")
# The columns every stored table has, beside either IMAGE_COLUMNS or REF_COLUMNS.
_ID_COLUMNS = tuple(c for c in CANONICAL_COLUMNS if c not in IMAGE_COLUMNS)
# DDSPO's rejected images have their own (degraded) prompt; human pairs share one caption.
REJECTED_CAPTION = "caption_l"
_VALID_LABELS = {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
# Why a source row is not kept, in the order the checks run (each row counts once, first match):
# the checks of its metadata (SCREEN_REASONS), then of its images among the rows visited.
SCREEN_REASONS = (
    CAPTION_MISSING,
    CAPTION_UNREADABLE,
    CAPTION_BLANK,
    "unlabelled",
    "invalid_label",
    "identical",
    "ties_dropped",
    "eval_prompt",
)
DROP_REASONS = (*SCREEN_REASONS, "duplicate", "unreadable")
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


@contextlib.contextmanager
def strict_truncation() -> Iterator[None]:
    """PIL refuses truncated images inside (:func:`image_is_readable` relies on it)."""
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
class UnitRows:
    """The columns of one source unit that screening and the part's rows read, parsed once.

    ``captions`` holds each row's decoded text ("" where ``caption_issues`` gives a reason).
    """

    captions: list[str]
    caption_issues: list[str | None]
    label_0: np.ndarray
    label_1: np.ndarray
    jpg_0: list[bytes | None]
    jpg_1: list[bytes | None]

    @classmethod
    def of(cls, df: pd.DataFrame) -> UnitRows:
        texts = [caption_text(c) for c in df["caption"].tolist()]
        return cls(
            captions=[text for text, _ in texts],
            caption_issues=[issue for _, issue in texts],
            label_0=pd.to_numeric(df["label_0"], errors="coerce").to_numpy(dtype=float),
            label_1=pd.to_numeric(df["label_1"], errors="coerce").to_numpy(dtype=float),
            jpg_0=[image_bytes(v) for v in df["jpg_0"].tolist()],
            jpg_1=[image_bytes(v) for v in df["jpg_1"].tolist()],
        )

    def first_wins(self, row: int) -> bool:
        """Whether ``jpg_0`` goes first: it is preferred, or the pair is a tie (source order)."""
        return bool(self.label_0[row] >= self.label_1[row])

    def ordered(self, row: int) -> tuple[bytes | None, bytes | None]:
        """The row's images, the preferred one first."""
        pair = (self.jpg_0[row], self.jpg_1[row])
        return pair if self.first_wins(row) else pair[::-1]

    def pair_key(self, row: int) -> int:
        """The row's :func:`~dspo.data.dedup.pair_key` (a missing image counts as empty)."""
        first, second = self.ordered(row)
        tie = bool(self.label_0[row] == self.label_1[row])
        return pair_key(self.captions[row], first or b"", second or b"", tie)


def screen(
    df: pd.DataFrame, parsed: UnitRows, drop_ties: bool, exclude: frozenset[str]
) -> tuple[list[int], dict[str, int]]:
    """Rows that pass the metadata checks, and counts of the others by reason.

    ``exclude`` holds the normalised evaluation prompts: a caption among them is dropped.
    """
    counts = dict.fromkeys(SCREEN_REASONS, 0)
    n = len(df)
    has_label = df["has_label"].tolist() if "has_label" in df.columns else [True] * n
    different = df["are_different"].tolist() if "are_different" in df.columns else [True] * n
    label_0, label_1, jpg_0, jpg_1 = parsed.label_0, parsed.label_1, parsed.jpg_0, parsed.jpg_1
    candidates = []
    for row in range(n):
        labels = (float(label_0[row]), float(label_1[row]))
        if parsed.caption_issues[row] is not None:
            counts[parsed.caption_issues[row]] += 1
        elif not _as_bool(has_label[row], default=True):
            counts["unlabelled"] += 1
        elif labels not in _VALID_LABELS:
            counts["invalid_label"] += 1
        elif not _as_bool(different[row], default=True) or (
            jpg_0[row] is not None and jpg_0[row] == jpg_1[row]
        ):
            counts["identical"] += 1
        elif labels == (0.5, 0.5) and drop_ties:
            counts["ties_dropped"] += 1
        elif exclude and normalise_caption(parsed.captions[row]) in exclude:
            counts["eval_prompt"] += 1
        else:
            candidates.append(row)
    return candidates, counts


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


def _part_schema(referenced: bool) -> pa.Schema:
    """A part's rows: the canonical pair columns that it knows, where each pair stands in the
    source (its unit and row there) with its sample key, and its duplicate group (pair_key);
    the gather turns these into ids and keeps one pair per group."""
    known = [c for c in stored_columns(referenced) if c not in ("pair_id", "source_row")]
    position = pa.schema([("unit", pa.int64()), ("unit_row", pa.int64())])
    sample = pa.schema([("key", pa.float64()), ("group", pa.int64())])
    return pa.unify_schemas([position, sample, pair_schema(known)])


def normalise_part(
    settings: PairSettings,
    part: int,
    parts: int,
    out_dir: Path,
    exclude: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Screen part ``part`` of ``parts`` of the source into the folder ``out_dir``.

    The part is a contiguous range of the source's units. Rows failing a metadata check (no
    readable or a blank caption, has_label false, labels not (1,0), (0,1) or (0.5,0.5),
    identical images, ties when dropped, a caption whose key is in ``exclude``: the
    evaluation prompts) are counted; the others are visited, in key order with
    ``max_pairs``. A visited row of a duplicate group (:func:`~dspo.data.dedup.pair_key`)
    already met in this part with a smaller key is recorded as a duplicate; otherwise its
    images are decoded in full (once per group) and it is kept if both are readable, winner
    first. With ``max_pairs`` the part stops decoding a unit at the first key above the
    ``max_pairs`` smallest of its readable groups so far: such a pair cannot be in the
    sample. The folder (``pairs.parquet`` + ``part.json``) is written beside its target and
    renamed into place whole.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    units = source_units(settings.source)
    first, stop = part * len(units) // parts, (part + 1) * len(units) // parts
    counts = dict.fromkeys(("input", *SCREEN_REASONS, "candidates", "written"), 0)
    unit_rows: list[int] = []
    visited = GroupVisits()
    # Durable files are referred to; a streamed source's images are kept (nowhere else).
    referenced = all(unit.file is not None for unit in units)
    with (
        part_folder(Path(out_dir), "pairs") as (tmp, record),
        pq.ParquetWriter(tmp / PART_TABLE, _part_schema(referenced)) as writer,
        strict_truncation(),
    ):
        for unit in tqdm(range(first, stop), desc=f"pairs part {part}", mininterval=5):
            df = units[unit].read()
            check_columns(df.columns, units[unit].name)
            unit_rows.append(len(df))
            counts["input"] += len(df)
            parsed = UnitRows.of(df)
            candidates, screened = screen(df, parsed, settings.drop_ties, exclude)
            for reason, n in screened.items():
                counts[reason] += n
            counts["candidates"] += len(candidates)
            keys = sample_keys(settings.seed, unit, len(df))
            if settings.max_pairs is not None:
                candidates = sorted(candidates, key=lambda row: keys[row])
            groups = {row: parsed.pair_key(row) for row in candidates}
            kept = []
            for row in candidates:
                if visited.sample_full(settings.max_pairs) and keys[row] > visited.cut():
                    break
                if visited.visit(float(keys[row]), groups[row], partial(_readable, parsed, row)):
                    kept.append(row)
            rows = _part_rows(parsed, unit, sorted(kept), keys, groups)
            if referenced:
                rows = {k: v for k, v in rows.items() if k not in IMAGE_COLUMNS}
                rows |= _references(units[unit], df, parsed, sorted(kept))
            writer.write_table(pa.Table.from_pydict(rows, schema=_part_schema(referenced)))
            counts["written"] += len(kept)
        record |= {
            "part": part,
            "parts": parts,
            "settings": asdict(settings),
            "exclude": keys_digest(exclude),
            "n_exclude": len(exclude),
            "n_blocks": len(units),
            "blocks": [first, stop],
            "unit_rows": unit_rows,
            "counts": counts,
            "unreadable": visited.unreadable,
            "duplicate_keys": visited.duplicate_keys,
        }
    return record


def _readable(parsed: UnitRows, row: int) -> bool:
    return image_is_readable(parsed.jpg_0[row]) and image_is_readable(parsed.jpg_1[row])


def _part_rows(
    parsed: UnitRows, unit: int, rows: list[int], keys: np.ndarray, groups: Mapping[int, int]
) -> dict[str, list]:
    """The part's columns of the kept ``rows`` of one unit, the preferred image first."""
    label_0, label_1 = parsed.label_0, parsed.label_1
    ordered = [parsed.ordered(r) for r in rows]
    columns = {
        "unit": [unit] * len(rows),
        "unit_row": rows,
        "key": [float(keys[r]) for r in rows],
        "group": [groups[r] for r in rows],
        "prompt_id": [prompt_id_of(parsed.captions[r]) for r in rows],
        "caption": [parsed.captions[r] for r in rows],
        "jpg_w": [w for w, _ in ordered],
        "jpg_l": [lo for _, lo in ordered],
        "label_w": [float(max(label_0[r], label_1[r])) for r in rows],
    }
    return columns


def _references(
    unit: SourceUnit, df: pd.DataFrame, parsed: UnitRows, rows: list[int]
) -> dict[str, list]:
    """The reference columns of the kept ``rows`` of a unit of a durable file (in place of the
    image bytes), the preferred image first."""
    assert unit.file is not None and unit.root is not None
    places, first, second = unit.locations(df)
    ordered = [(first[r], second[r])[:: 1 if parsed.first_wins(r) else -1] for r in rows]
    return {
        "image_root": [str(unit.root.absolute())] * len(rows),
        "image_file": [unit.file.relative_to(unit.root).as_posix()] * len(rows),
        "image_key": [content_key(unit.file)] * len(rows),
        "image_row": [places[r] for r in rows],
        "ref_w": [w for w, _ in ordered],
        "ref_l": [lo for _, lo in ordered],
    }


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


def gather_pairs(
    part_dirs: Sequence[Path], out: Path, report: Path | None = None
) -> dict[str, int]:
    """Join the parts of :func:`normalise_part` into the canonical table ``out``.

    Of each duplicate group the row with the smallest sample key stays, so which row stays
    does not depend on the parts. Returns the counts of the whole source, each source row
    counted once, as one job visiting the candidates in key order would count them:
    ``input == kept + sum(dropped)``, where ``duplicate`` and ``unreadable`` count the
    candidates up to the sample's largest key that repeat a group met before or fail to
    decode, and ``not_sampled`` the candidates past it. The counts are also written to
    ``report`` (JSON) once the table is in place. Raises before writing anything if no pair
    is left.
    """
    records = read_block_parts(part_dirs)
    folders = [record["dir"] for record in records]
    max_pairs = records[0]["settings"]["max_pairs"]
    unit_rows = np.array([n for r in records for n in r["unit_rows"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(unit_rows)[:-1]]).astype(np.int64)
    written = [pq.read_table(d / PART_TABLE, columns=["key", "group"]) for d in folders]
    w_keys = np.concatenate([t["key"].to_numpy() for t in written])
    w_groups = np.concatenate([t["group"].to_numpy() for t in written]).astype(np.int64)
    unreadable = np.array([v for r in records for v in r["unreadable"]], dtype=object)
    u_keys = unreadable[:, 0].astype(float) if len(unreadable) else np.zeros(0)
    u_groups = unreadable[:, 1].astype(np.int64) if len(unreadable) else np.zeros(0, np.int64)
    keys = np.concatenate([w_keys, u_keys])
    first = first_of_groups(keys, np.concatenate([w_groups, u_groups]))
    readable = np.arange(len(keys)) < len(w_keys)
    threshold = np.inf
    sampled_keys = keys[first & readable]
    if max_pairs is not None and len(sampled_keys) > max_pairs:
        threshold = float(np.partition(sampled_keys, max_pairs - 1)[max_pairs - 1])
    visited = keys <= threshold
    duplicate_keys = np.array([k for r in records for k in r["duplicate_keys"]], dtype=float)
    stats = {"input": 0, "kept": int((first & readable & visited).sum())}
    stats |= dict.fromkeys((*DROP_REASONS, "not_sampled"), 0)
    stats["duplicate"] = int((~first & visited).sum() + (duplicate_keys <= threshold).sum())
    stats["unreadable"] = int((first & ~readable & visited).sum())
    candidates = 0
    for record in records:
        for reason in ("input", *SCREEN_REASONS):
            stats[reason] += record["counts"][reason]
        candidates += record["counts"]["candidates"]
    stats["not_sampled"] = candidates - stats["kept"] - stats["duplicate"] - stats["unreadable"]
    if stats["kept"] == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("input", "kept"))
        raise ValueError(f"no preference pair left out of {stats['input']} rows ({reasons})")
    keep = (first & visited)[: len(w_keys)]
    next_id = start = 0
    referenced = has_refs(pq.read_schema(folders[0] / PART_TABLE).names)
    with PairWriter(out, referenced=referenced) as writer:
        for folder in folders:
            table = pq.ParquetFile(folder / PART_TABLE)
            for group in range(table.num_row_groups):
                rows = table.read_row_group(group).to_pandas()
                rows = rows[keep[start : start + len(rows)]].reset_index(drop=True)
                start += table.metadata.row_group(group).num_rows
                rows["source_row"] = offsets[rows["unit"].to_numpy()] + rows["unit_row"]
                rows["pair_id"] = np.arange(next_id, next_id + len(rows), dtype=np.int64)
                next_id += len(rows)
                writer.write(rows)
    if report is not None:
        evaluation = {"evaluation_prompts": records[0].get("n_exclude", 0)}
        write_json_atomic({"counts": stats, **evaluation}, Path(report))
    return stats


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
