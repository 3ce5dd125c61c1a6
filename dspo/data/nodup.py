"""The one pair per prompt table of the "nodup" ablation, scattered over row groups.

Pairs share a prompt when their captions normalise alike
(:func:`~dspo.data.dedup.caption_group`); one pair of each prompt is chosen uniformly at
random with a seed (:func:`nodup_rows`). :func:`nodup_part` copies the chosen pairs of a
block of the canonical table's row groups, :func:`gather_nodup` joins the parts; any number
of parts gives the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from dspo.core.files import part_folder, write_json_atomic
from dspo.data.dedup import caption_group
from dspo.data.image_refs import has_refs
from dspo.data.pair_table import (
    PART_TABLE,
    REJECTED_CAPTION,
    PairWriter,
    read_block_parts,
    table_columns,
)


def nodup_rows(prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    """Positions of one pair per prompt, chosen uniformly at random with ``seed``, in order.

    ``prompt_ids`` say which pairs share a prompt (:func:`~dspo.data.dedup.caption_group`).
    """
    order = np.random.default_rng(seed).permutation(len(prompt_ids))
    # The first pair of each prompt in a random permutation is a uniform choice among its pairs.
    _, first = np.unique(np.asarray(prompt_ids)[order], return_index=True)
    return np.sort(order[first])


def _writer(path: Path, names: list[str]) -> PairWriter:
    """A writer of a table with the same form as one with the columns ``names``: the images'
    references copied as they are (never the images), or their bytes."""
    return PairWriter(path, rejected_caption=REJECTED_CAPTION in names, referenced=has_refs(names))


def nodup_part(src: Path, part: int, parts: int, seed: int, out_dir: Path) -> dict[str, Any]:
    """Copy the pairs that :func:`nodup_rows` keeps from part ``part`` of ``parts`` of ``src``.

    Pairs share a prompt when their captions normalise alike
    (:func:`~dspo.data.dedup.caption_group`). Every part decides from the captions of the
    whole table (no images), so all parts agree; each then copies the kept pairs of its
    contiguous block of row groups, one group at a time, into the folder ``out_dir``
    (renamed into place whole).
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    table = pq.ParquetFile(src)
    names = table.schema_arrow.names
    columns = table_columns(names, str(src))
    captions = table.read(columns=["caption"])["caption"].to_pylist()
    prompt_ids = np.array([caption_group(c) for c in captions], dtype=np.int64)
    keep = np.zeros(len(prompt_ids), dtype=bool)
    keep[nodup_rows(prompt_ids, seed)] = True
    groups = table.num_row_groups
    first, stop = part * groups // parts, (part + 1) * groups // parts
    offset = sum(table.metadata.row_group(g).num_rows for g in range(first))
    kept = 0
    with part_folder(Path(out_dir), "pairs") as (tmp, record):
        with _writer(tmp / PART_TABLE, names) as writer:
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
            "captions": len(set(captions)),
            "n_blocks": groups,
            "blocks": [first, stop],
            "kept": kept,
        }
    return record


def gather_nodup(
    part_dirs: Sequence[Path], out: Path, report: Path | None = None
) -> dict[str, int]:
    """Join the parts of :func:`nodup_part` into one table, pair ids renumbered from 0.

    Returns (and writes to ``report``, JSON) the pairs read, those kept (one per prompt),
    and the distinct caption strings they had before normalisation merged them into prompts.
    """
    records = read_block_parts(part_dirs)
    names = pq.read_schema(records[0]["dir"] / PART_TABLE).names
    next_id = 0
    with _writer(out, names) as writer:
        for folder in (record["dir"] for record in records):
            table = pq.ParquetFile(folder / PART_TABLE)
            for group in range(table.num_row_groups):
                rows = table.read_row_group(group).to_pandas()
                rows["pair_id"] = np.arange(next_id, next_id + len(rows), dtype=np.int64)
                next_id += len(rows)
                writer.write(rows)
    stats = {
        "input": records[0]["settings"]["pairs"],
        "kept": next_id,
        "prompts": next_id,
        "captions": records[0]["captions"],
    }
    if report is not None:
        write_json_atomic({"counts": stats}, Path(report))
    return stats
