"""Disk per stage of a workflow run, measured, under the stage names of ``dspo budget``.

`dspo disk` (run by ``make rehearse`` at its end) sums the files each stage leaves in the
working directory (:func:`stage_paths`; a path may be a glob) and writes ``stage,bytes,paths``
rows, so the rehearsal's sizes sit beside the budget's (:func:`dspo.bench.budget.stages`). Temporary
outputs (the parts of a scattered step) and the training checkpoints, which a run drops
once its model is saved, are gone when the run ends: those stages measure what is left.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.config.experiments import method_config, step_models, trained_models
from dspo.config.names import entries

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
    if source["kind"] == "generated":  # every sampled model's images and labels
        paths["AI-feedback images (generated pair source)"] = [f"{DATA}/generated"]
    if "pairs_ddspo" in datasets:
        paths["ddspo pairs (generated)"] = [f"{DATA}/pairs_ddspo.parquet"]
    for data in datasets:
        paths[f"cache of {data}"] = [f"results/cache/{data}"]
    paths["training checkpoints"] = [f"results/train/{name}/checkpoints" for name in models]
    # Each trained model and its kept steps (training.evaluate_steps), as the budget counts.
    kept = step_models(config, models)
    paths["trained models"] = [f"results/models/{name}" for name in [*models, *kept]]
    # Each model's images sit in one folder per prompt set (results/images/MODEL/SET).
    ev = config["evaluation"]
    sets = [*entries(ev["prompt_sets"]), *(["editing"] if ev.get("editing") else [])]
    paths["evaluation images"] = [f"results/images/*/{name}" for name in sets]
    paths["scores"] = ["results/scores"]
    binding = entries((ev.get("attribute_binding") or {}).get("prompt_sets"))
    if binding:
        paths["attribute-binding images"] = [f"results/images/*/{name}" for name in binding]
        paths["B-VQA scores"] = ["results/scores_binding"]
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


def _matches(root: Path, paths: list[str]) -> list[Path]:
    """The files and folders ``paths`` name under ``root``: a path with ``*`` is a glob (its
    matches), any other is taken as it is (absent: measured as 0)."""
    found = []
    for path in paths:
        if "*" in path:
            found += sorted(Path(f) for f in glob.glob(os.path.join(glob.escape(str(root)), path)))
        else:
            found.append(root / path)
    return found


def measure(config: Mapping[str, Any], root: Path = Path(".")) -> list[dict[str, Any]]:
    """Each stage's measured bytes in the working directory ``root``."""
    return [
        {"stage": stage, "bytes": sum(map(disk_bytes, _matches(root, paths))), "paths": paths}
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
