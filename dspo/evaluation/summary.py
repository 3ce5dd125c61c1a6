"""The run's own summary, and the README block written from it.

A figure in the README must come from a run, not from a hand: the workflow writes
``results/summary.json`` (the headline win rates with their intervals, the machine, the time
each stage took), and ``dspo readme-results`` writes the README's results block from such a
file. A test checks that the README's block is what that command writes for the summary kept
in the repository, so the two cannot drift apart.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import dspo
from dspo.core.content import source_key
from dspo.evaluation.intervals import interval_sentence

START = "<!-- results: written by `make readme-results` from docs/run_summary.json -->"
END = "<!-- results: end -->"
_CELL_COLUMNS = ["win_rate", "ci_low", "ci_high", "n_prompts", "n_replicates", "replicate_sd"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on: they are bit-reproducible only there."""
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "dspo": dspo.__version__,
        "source_key": source_key(),
    }


def stage_times(benchmarks: Sequence[Path]) -> dict[str, dict[str, float]]:
    """Per stage (the folder above each Snakemake benchmark file): jobs, total and longest
    job in wall seconds, and, where the files have Snakemake's ``cpu_time`` column, the CPU
    seconds of its jobs (``cpu_seconds``): wall times grow with whatever else the machine
    runs, CPU times much less."""
    stages: dict[str, dict[str, float]] = {}
    for path in sorted(benchmarks):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no column 's')")
        seconds = float(rows[-1]["s"])
        stage = path.parent.name
        entry = stages.setdefault(stage, {"jobs": 0, "seconds": 0.0, "longest": 0.0})
        entry["jobs"] += 1
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        entry["longest"] = round(max(entry["longest"], seconds), 1)
        if rows[-1].get("cpu_time") not in (None, "", "NA", "-"):
            cpu = entry.get("cpu_seconds", 0.0) + float(rows[-1]["cpu_time"])
            entry["cpu_seconds"] = round(cpu, 1)
    return stages


def wall_seconds(benchmarks: Sequence[Path]) -> float | None:
    """The run's wall time: from the start of its first job to the end of its last. A
    benchmark file is written when its job ends, after the job's ``s`` seconds."""
    spans = []
    for path in benchmarks:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        end = path.stat().st_mtime
        spans.append((end - float(rows[-1]["s"]), end))
    if not spans:
        return None
    return round(max(e for _, e in spans) - min(s for s, _ in spans), 1)


def build_summary(
    win_rates_csv: Path,
    *,
    preset: str,
    method: str,
    reward: str,
    labels: Mapping[str, str],
    benchmarks: Sequence[Path] = (),
) -> dict[str, Any]:
    """The headline (``method`` against the base model under ``reward``, every prompt set and
    guidance), the machine and the stage times."""
    wins = pd.read_csv(win_rates_csv)
    rows = wins[(wins["method"] == method) & (wins["reward"] == reward)]
    if rows.empty:
        raise ValueError(f"{win_rates_csv} has no rows for method {method!r} and reward {reward!r}")
    cells = [
        {
            "prompt_set": r["prompt_set"],
            "guidance": float(r["guidance"]),
            **{c: (None if pd.isna(r[c]) else float(r[c])) for c in _CELL_COLUMNS if c in r},
        }
        for _, r in rows.iterrows()
    ]
    return {
        "preset": preset,
        "method": method,
        "reward": reward,
        "labels": dict(labels),
        "headline": cells,
        "machine": machine(),
        "stages": stage_times(benchmarks),
        "wall_seconds": wall_seconds(benchmarks),
    }


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def render_block(summary: Mapping[str, Any]) -> str:
    """The README's results block for ``summary``: deterministic text, markers included."""
    name = summary["labels"]
    label = lambda key: name.get(key, key)  # noqa: E731
    guidances = sorted({c["guidance"] for c in summary["headline"]})
    sets = list(dict.fromkeys(c["prompt_set"] for c in summary["headline"]))
    cell = {(c["prompt_set"], c["guidance"]): c for c in summary["headline"]}
    replicates = [int(c.get("n_replicates") or 1) for c in summary["headline"]]
    lines = [
        START,
        f"{label(summary['method'])} against the base model under the "
        f"{label(summary['reward'])} reward, preset `{summary['preset']}`: win rate (%) with its "
        f"95 % interval in brackets. {interval_sentence(replicates)}",
        "",
        "| prompt set | " + " | ".join(f"guidance {g:g}" for g in guidances) + " |",
        "|---|" + "---|" * len(guidances),
    ]
    for prompt_set in sets:
        values = []
        for g in guidances:
            c = cell.get((prompt_set, g))
            if c is None:
                values.append("–")
                continue
            low, high = _percent(c["ci_low"]), _percent(c["ci_high"])
            values.append(f"{_percent(c['win_rate'])} [{low}, {high}]")
        lines.append(f"| {label(prompt_set)} | " + " | ".join(values) + " |")
    m = summary["machine"]
    stages = summary["stages"]
    lines += [
        "",
        f"Measured on {m['cpu']} ({m['cores']} cores, torch {m['torch']}), dspo {m['dspo']} "
        f"(source {m['source_key']}).",
    ]
    if stages:
        lines.append(_stage_line(stages))
    if summary.get("wall_seconds"):
        wall = summary["wall_seconds"]
        lines.append(f"Wall time of the workflow: {int(wall // 60)} min {wall % 60:.0f} s.")
    if summary.get("rerun"):
        lines += ["", *_rerun_lines(summary, label, guidances, sets, cell)]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _stage_line(stages: Mapping[str, Mapping[str, float]]) -> str:
    """The job time of each stage, longest first, with its CPU time where every stage has it."""
    total = sum(s["seconds"] for s in stages.values())
    with_cpu = all("cpu_seconds" in s for s in stages.values())
    parts = []
    for stage, s in sorted(stages.items(), key=lambda kv: -kv[1]["seconds"]):
        jobs = f"{s['jobs']:.0f} job{'s' if s['jobs'] != 1 else ''}"
        cpu = f"CPU {s['cpu_seconds']:.0f} s, " if with_cpu else ""
        parts.append(f"{stage} {s['seconds']:.0f} s ({cpu}{jobs})")
    if not with_cpu:
        return f"Job time by stage ({total / 60:.1f} min in all): " + ", ".join(parts) + "."
    cpu_total = sum(s["cpu_seconds"] for s in stages.values())
    return (
        f"Job time by stage, wall and CPU ({total / 60:.1f} and {cpu_total / 60:.1f} min in all; "
        "wall times grow with the machine's other load, CPU times much less): "
        + ", ".join(parts)
        + "."
    )


def _rerun_lines(summary, label, guidances, sets, cell) -> list[str]:
    """The same cells from another run of the same config (another floating-point path):
    its estimate, how far it moved, and whether this run's interval covers it."""
    rerun = summary["rerun"]
    other = {(c["prompt_set"], c["guidance"]): c for c in rerun["summary"]["headline"]}
    lines = [
        f"The same run {rerun['label']} ({rerun['summary']['machine']['cpu']}): its estimate "
        "per cell, the move from the table above in points, and whether the interval above "
        "covers it.",
        "",
        "| prompt set | " + " | ".join(f"guidance {g:g}" for g in guidances) + " |",
        "|---|" + "---|" * len(guidances),
    ]
    moves, covered, total = [], 0, 0
    for prompt_set in sets:
        values = []
        for g in guidances:
            here, there = cell.get((prompt_set, g)), other.get((prompt_set, g))
            if here is None or there is None:
                values.append("–")
                continue
            move = 100 * (there["win_rate"] - here["win_rate"])
            inside = here["ci_low"] <= there["win_rate"] <= here["ci_high"]
            moves.append(abs(move))
            covered, total = covered + inside, total + 1
            mark = "inside" if inside else "**outside**"
            values.append(f"{_percent(there['win_rate'])} ({move:+.1f}, {mark})")
        lines.append(f"| {label(prompt_set)} | " + " | ".join(values) + " |")
    if total:
        lines += [
            "",
            f"Largest move {max(moves):.1f} points; {covered} of {total} cells inside the "
            "intervals above.",
        ]
    return lines


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """``text`` with the part between the results markers replaced by ``block``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{where} needs exactly one results block between {START!r} and {END!r}")
    return pattern.sub(lambda _: block, text)


def write_readme(
    summary_json: Path,
    readme: Path,
    rerun_json: Path | None = None,
    rerun_label: str = "",
) -> bool:
    """Rewrite ``readme``'s results block from ``summary_json``; True if it changed.

    ``rerun_json``: the summary of the same config run another way (other thread counts,
    another machine), kept inside ``summary_json`` under ``rerun`` with ``rerun_label``
    saying how it differed, so that the block stays a function of that one file.
    """
    summary = json.loads(Path(summary_json).read_text())
    if rerun_json is not None:
        other = json.loads(Path(rerun_json).read_text())
        other.pop("rerun", None)
        if (other["preset"], other["method"], other["reward"]) != (
            summary["preset"],
            summary["method"],
            summary["reward"],
        ):
            raise ValueError(f"{rerun_json} is not a run of {summary_json}'s preset and headline")
        summary["rerun"] = {"label": rerun_label, "summary": other}
        Path(summary_json).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    old = readme.read_text()
    new = replace_block(old, render_block(summary), str(readme))
    if new != old:
        readme.write_text(new)
    return new != old
