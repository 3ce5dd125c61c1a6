"""Normalise human preference pairs (Pick-a-Pic v2 columns) into one canonical table.

Every later step (caching, training, the "nodup" ablation) reads the canonical table
(:mod:`dspo.data.pair_table`), never the raw source, so the filtering rules live here only
(a row's own checks in :mod:`dspo.data.screening`).

Normalising is scattered: :func:`normalise_part` screens part k of N of the source's units
(:mod:`dspo.data.sources`) into a folder of its own, holding one unit in memory at a time, and
:func:`gather_pairs` streams the parts into the canonical table. Any N gives the same table,
byte for byte: pairs keep their place in the source, and the ``max_pairs`` sample takes the
readable pairs with the smallest seeded keys, drawn per (unit, row) and not per part. The
"nodup" table (:mod:`dspo.data.nodup`) is scattered the same way over row groups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from dspo.core.content import content_key
from dspo.core.files import part_folder, write_json_atomic
from dspo.data.dedup import GroupVisits, first_of_groups, keys_digest
from dspo.data.image_refs import IMAGE_COLUMNS, has_refs
from dspo.data.pair_table import (
    PART_TABLE,
    PairWriter,
    pair_schema,
    read_block_parts,
    stored_columns,
)
from dspo.data.screening import (
    SCREEN_REASONS,
    UnitRows,
    image_is_readable,
    screen,
    strict_truncation,
)
from dspo.data.sources import SourceUnit, check_columns, source_units

# Why a source row is not kept: the screening's reasons, then those of its images among
# the rows visited.
DROP_REASONS = (*SCREEN_REASONS, "duplicate", "unreadable")


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


def sample_keys(seed: int, unit: int, n_rows: int) -> np.ndarray:
    """Each row's key in the seeded random order in which ``max_pairs`` takes pairs.

    Drawn per unit, so a row's key depends on the seed and its place in the source only.
    """
    return np.random.default_rng([seed, unit]).random(n_rows)


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
