"""The cost of each round of AI feedback, as ``dspo budget`` prints it below its stages.

With a generated pair source, every method trained on its pairs (``data`` unset or ``pairs``)
is in round 1; ``rounds: N`` trains it N times, round r on pairs sampled from round r-1's
model. Round r's cost is the budget (:func:`dspo.bench.budget.stages`) with those methods
trained to round r less the budget to round r-1, stage by stage, so every figure comes from
the same arithmetic as the stages above it. Round 0 is the config without those methods; the
base model's samples, which the budget counts whenever the source is generated, are round 1's
(its pairs). A round's cost is thus: the images sampled for its pairs and their labelling,
the pairs' caches, its training runs (checkpoints and models) and its models' evaluation
(images, scores, attribute binding, image quality).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.bench.budget import format_size, stages
from dspo.config.experiments import released_models, rounds, trained_models
from dspo.config.names import entries

# The budget's stages by the part of a round they belong to (stage names start so).
PARTS = {
    "sampling": ("AI-feedback images",),
    "caching": ("cache of",),
    "training": ("training checkpoints", "trained models"),
    "evaluation": (
        "evaluation images",
        "scores",
        "attribute-binding images",
        "B-VQA scores",
        "image quality",
    ),
}
SAMPLING = PARTS["sampling"][0]


def round_methods(config: Mapping[str, Any]) -> dict[str, int]:
    """The methods trained on a generated pair source's pairs, with their number of rounds
    (none for another source)."""
    if config["pairs"]["source"]["kind"] != "generated":
        return {}
    released = released_models(config)
    return {
        name: rounds(config, name)
        for name, entry in entries(config["methods"]).items()
        if name not in released and entry.get("data", "pairs") == "pairs"
    }


def _to_round(config: Mapping[str, Any], methods: Mapping[str, int], r: int) -> dict[str, Any]:
    """``config`` with each of ``methods`` trained to round ``r`` (at most its own rounds);
    round 0 drops them."""
    changed = dict(config["methods"])
    for name, n in methods.items():
        changed[name] = {**config["methods"][name], "rounds": min(r, n)} if r else None
    return {**config, "methods": changed}


def _parts(rows: list[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """(disk bytes, FLOPs) of each part of a round, and of every stage together (``total``)."""
    out = {}
    for part, names in {**PARTS, "total": ("",)}.items():
        chosen = [r for r in rows if r["stage"].startswith(names)]
        out[part] = (sum(r["disk_bytes"] for r in chosen), sum(r["flops"] for r in chosen))
    return out


def round_costs(
    config: Mapping[str, Any], peak_tflops: float, utilisation: float, root: Path = Path(".")
) -> list[dict[str, Any]]:
    """Each round's added disk bytes, FLOPs and GPU-hours (in all and per part), and what it
    samples, caches, trains and evaluates; empty without a generated pair source."""
    methods = round_methods(config)
    if not methods:
        return []
    per_hour = peak_tflops * 1e12 * utilisation * 3600
    last = max(methods.values())
    before = _parts(stages(_to_round(config, methods, 0), root))
    # Round 0 trains nothing on the generated pairs: the base's samples are round 1's.
    sampled = before["sampling"]
    before["total"] = (before["total"][0] - sampled[0], before["total"][1] - sampled[1])
    before["sampling"] = (0.0, 0.0)
    out = []
    for r in range(1, last + 1):
        config_r = _to_round(config, methods, r)
        after = _parts(stages(config_r, root))
        models = [m for m in trained_models(config_r).values() if m.method in methods]
        runs = sum(1 for m in models if m.round == r)
        data = 1 if r == 1 else runs  # round 1 trains every method on the base's pairs
        row: dict[str, Any] = {
            "round": r,
            "items": f"{data} sampled, {data} cached, {runs} trained and evaluated",
        }
        for part, (disk, flops) in after.items():
            added = flops - before[part][1]
            row[f"{part}_gpu_hours"] = added / per_hour
            if part == "total":
                row.update(
                    disk_bytes=disk - before[part][0], flops=added, gpu_hours=added / per_hour
                )
        out.append(row)
        before = after
    return out


def format_rounds(rows: list[Mapping[str, Any]]) -> str:
    """The Markdown table of :func:`round_costs` (empty when there are no rounds)."""
    if not rows:
        return ""
    lines = [
        "Cost per round of AI feedback (models sampled for the round's pairs, caches, models "
        "trained and evaluated; GPU-hours by part):",
        "",
        "| round | models | sampling | caching | training | evaluation | disk | GPU-hours |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = " | ".join(f"{r[f'{p}_gpu_hours']:,.1f}" for p in PARTS)
        lines.append(
            f"| {r['round']} | {r['items']} | {parts} | {format_size(r['disk_bytes'])} | "
            f"{r['gpu_hours']:,.1f} |"
        )
    return "\n".join(lines)
