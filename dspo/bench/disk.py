"""Disk per stage of a workflow run, measured, under the stage names of ``dspo budget``.

`dspo disk` (run by ``make rehearse`` at its end) sums the files each stage leaves in the
working directory (:func:`stage_paths`) and writes ``stage,bytes,paths`` rows, so the
rehearsal's sizes sit beside the budget's (:func:`dspo.bench.budget.stages`). Temporary
outputs (the parts of a scattered step) and the training checkpoints, which a run drops
once its model is saved, are gone when the run ends: those stages measure what is left.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.config.experiments import method_config, trained_models

DATA = "results/data"


def stage_paths(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The files and folders of each stage, relative to the working directory, by the
    budget's stage names (a stage the config does not run is left out)."""
    models = trained_models(config)
    datasets = sorted({method_config(config, m)["data"] for m in models.values()})
    source = config["pairs"]["source"]
    paths = {
        "source": [str(source["path"])] if source.get("path") else [],
        "base model": [str(config["base_model"]["path"])],
        "pair tables": [f"{DATA}/pairs.parquet"],
    }
    if "pairs_nodup" in datasets:
        paths["pair tables"].append(f"{DATA}/pairs_nodup.parquet")
    if "pairs_ddspo" in datasets:
        paths["ddspo pairs (generated)"] = [f"{DATA}/pairs_ddspo.parquet"]
    for data in datasets:
        paths[f"cache of {data}"] = [f"results/cache/{data}"]
    paths["training checkpoints"] = [f"results/train/{name}/checkpoints" for name in models]
    paths["trained models"] = [f"results/models/{name}" for name in models]
    paths["evaluation images"] = ["results/images"]
    paths["scores"] = ["results/scores"]
    return paths


def disk_bytes(path: Path) -> int:
    """The bytes of the files at ``path`` (a file, or a folder's files; 0 when absent).
    A hard-linked file counts once, as the disk holds it once."""
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for folder, _, names in os.walk(path):
        for name in names:
            stat = (Path(folder) / name).stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def measure(config: Mapping[str, Any], root: Path = Path(".")) -> list[dict[str, Any]]:
    """Each stage's measured bytes in the working directory ``root``."""
    return [
        {"stage": stage, "bytes": sum(disk_bytes(root / p) for p in paths), "paths": paths}
        for stage, paths in stage_paths(config).items()
    ]


def write_disk_csv(rows: list[dict[str, Any]], out: Path) -> None:
    """Write the measured stages as ``stage,bytes,paths`` (paths joined by spaces)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "bytes", "paths"])
        for row in rows:
            writer.writerow([row["stage"], row["bytes"], " ".join(row["paths"])])
    os.replace(tmp, out)
