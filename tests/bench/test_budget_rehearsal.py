"""``dspo budget`` held against the disk of the sd15 rehearsal at the stand-ins' real widths.

`docs/measurements/disk_rehearsal_2026-12-06.csv` is what `dspo disk` measured at the end of
a rehearsal of config/presets/sd15.yaml with rehearsal.yaml on `dspo standins` at their real
widths (docs/cluster.md: the data steps, the caches, all ten trainings and their kept steps;
stopped before the last sampling and scoring jobs). The `_counts.json` beside it holds the
counts the run's pair steps kept. The budget estimates those counts from the config (at full
scale: Pick-a-Pic's published rows and unique prompts); the rehearsal's 16 pairs repeat
captions, so the test gives the budget the run's own counts and holds what it predicts per
item: every other figure comes from the config as `dspo budget` reads it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dspo.bench import budget as budget_module
from dspo.bench.budget import stages
from dspo.config.step import workflow_config

MEASURED = Path("docs/measurements/disk_rehearsal_2026-12-06.csv")
COUNTS = MEASURED.with_name(MEASURED.stem + "_counts.json")
CONFIGS = [Path("config/presets/sd15.yaml"), Path("config/presets/rehearsal.yaml")]
NOISE = (
    "the stand-ins' random weights draw noise, which no image format compresses; the budget "
    "states a real image's size instead (docs/cluster.md)"
)
SCORES = (
    "the run was stopped before its last scoring jobs, and at 10 rows a file the parquet "
    "footer (5 kB) outweighs the budget's 300 bytes a row"
)
# The stages the rehearsal cannot hold the budget to, and why.
NOT_COMPARED = {
    "source": "a local source is measured by the budget itself, not estimated",
    "training checkpoints": (
        "a finished run drops its checkpoints, and the budget counts what a run holds while "
        "it trains"
    ),
    "pair tables": (
        "16 rows of the stand-in's short, repeated captions are mostly the parquet footer; the "
        "budget's figure a row (150-byte captions, as Pick-a-Pic's) is held at 400 rows by "
        "tests/bench/test_budget.py"
    ),
    "scores": SCORES,
    "B-VQA scores": SCORES,
    "ddspo pairs (generated)": NOISE,
    "evaluation images": NOISE,
    "attribute-binding images": NOISE,
}


def measured() -> dict[str, int]:
    with open(MEASURED, newline="") as handle:
        return {row["stage"]: int(row["bytes"]) for row in csv.DictReader(handle)}


def test_every_stage_the_rehearsal_measured_is_within_ten_percent_of_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = json.loads(COUNTS.read_text())
    monkeypatch.setattr(budget_module, "pair_counts", lambda config: counts["pair_counts"])
    predicted = {row["stage"]: row["disk_bytes"] for row in stages(workflow_config(CONFIGS))}
    disk = measured()
    compared = {stage: size for stage, size in disk.items() if stage not in NOT_COMPARED}
    assert set(disk) <= set(predicted), "a measured stage the budget does not name"
    far = {
        stage: (predicted[stage], size)
        for stage, size in compared.items()
        if abs(predicted[stage] - size) > 0.1 * size
    }
    assert not far, far
    # What is held: the base model, every cache and the trained models with their kept steps,
    # each of which wrote something.
    caches = {f"cache of {name}" for name in ("pairs", "pairs_nodup", "pairs_ddspo")}
    assert set(compared) == {"base model", "trained models", *caches}
    assert all(size > 0 for size in compared.values())


def test_the_counts_are_the_runs_and_every_exception_has_its_reason() -> None:
    counts = json.loads(COUNTS.read_text())
    # The run kept fewer unique prompts than pairs: the budget's own count (one a pair when
    # max_pairs cuts the source) would be too high here, which is why the test passes them.
    assert counts["pair_counts"]["prompts"] < counts["pair_counts"]["pairs"]
    assert set(NOT_COMPARED) <= set(measured())
