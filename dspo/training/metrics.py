"""A training run's metrics: metrics.jsonl and metrics.csv in its run folder.

A resumed run keeps the records of the steps it resumes after and appends the rest, so the
files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the training view reads metrics without loading torch
    from accelerate import Accelerator

METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"


def append_metrics(run_dir: Path, record: Mapping[str, float]) -> None:
    """One line of metrics.jsonl and one row of metrics.csv (columns from the file's header)."""
    with (run_dir / METRICS_JSONL).open("a") as f:
        f.write(json.dumps(record) + "\n")
    path = run_dir / METRICS_CSV
    new = not path.exists() or path.stat().st_size == 0
    if new:
        fields = list(record)
    else:
        with path.open(newline="") as f:
            fields = next(csv.reader(f))
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(record)


def restart_metrics(run_dir: Path, start_step: int) -> None:
    """Keep the metrics of the steps before ``start_step``; a resumed run appends the rest."""
    path = run_dir / METRICS_JSONL
    kept = []
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [r for r in records if r["step"] <= start_step]
    path.unlink(missing_ok=True)
    (run_dir / METRICS_CSV).unlink(missing_ok=True)
    for record in kept:
        append_metrics(run_dir, record)


def mean_over(accelerator: Accelerator, sums: Mapping[str, float]) -> dict[str, float]:
    """Metrics averaged over processes (each process saw its own share of the step's pairs)."""
    if accelerator.num_processes == 1:
        return dict(sums)
    import torch

    values = torch.tensor(list(sums.values()), device=accelerator.device)
    means = accelerator.reduce(values, reduction="mean").tolist()
    return dict(zip(sums, means, strict=True))
