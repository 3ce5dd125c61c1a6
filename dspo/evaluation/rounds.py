"""What rounds of AI feedback achieved, judged by a reward that did not label: the run's
summary of it, and the README block written from that summary.

Each later round of a method (``dspo@round2``) is compared with the base model and with the
round before it (``dspo``), per prompt set and guidance, from the run's head-to-head table:
its win rate with its interval. The verdict says what the interval says, whatever it is:
the round beats the other model when the whole interval is above 50 %, loses when it is
below, and does not clearly differ otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd

from dspo.evaluation.intervals import interval_sentence

START = "<!-- ai-feedback results: written by `dspo readme-results --rounds` from a run summary -->"
END = "<!-- ai-feedback results: end -->"
_COLUMNS = ["win_rate", "ci_low", "ci_high"]


def verdict(low: float, high: float) -> str:
    """What a win rate's interval says: ``beats``, ``loses to`` or ``does not clearly differ
    from`` the opponent."""
    if low > 0.5:
        return "beats"
    if high < 0.5:
        return "loses to"
    return "does not clearly differ from"


def rounds_summary(
    head_to_head: pd.DataFrame,
    rounds: Mapping[str, Sequence[str]],
    reward: str,
    labelling: Sequence[str],
    replicates: Sequence[int] = (1,),
    baseline: str = "base",
) -> dict[str, Any]:
    """Each later round against ``baseline`` and the round before, under the held-out
    ``reward`` and under each evaluated ``labelling`` reward, per prompt set and guidance.

    ``rounds`` maps a method to its rows in round order (``[dspo, dspo@round2, ...]``);
    ``replicates`` are the training replicates of the rows (for the intervals' sentence).
    """
    comparisons = []
    for method, rows in rounds.items():
        for previous, row in pairwise(rows):
            for opponent in (baseline, previous):
                for judge in (reward, *labelling):
                    cells = _cells(head_to_head, row, opponent, judge)
                    comparisons.append(
                        {
                            "method": method,
                            "model": row,
                            "opponent": opponent,
                            "reward": judge,
                            "cells": cells,
                        }  # fmt: skip
                    )
    return {
        "reward": reward,
        "labelling": list(labelling),
        "replicates": [int(n) for n in replicates],
        "comparisons": comparisons,
    }


def _cells(frame: pd.DataFrame, model: str, opponent: str, reward: str) -> list[dict[str, Any]]:
    rows = frame[
        (frame["model"] == model) & (frame["opponent"] == opponent) & (frame["reward"] == reward)
    ]
    if rows.empty:
        raise ValueError(f"head-to-head table has no {model} against {opponent} under {reward}")
    return [
        {
            "prompt_set": r["prompt_set"],
            "guidance": float(r["guidance"]),
            **{c: float(r[c]) for c in _COLUMNS},
        }  # fmt: skip
        for _, r in rows.iterrows()
    ]


def _percent(cell: Mapping[str, float]) -> str:
    return f"{100 * cell['win_rate']:.1f} [{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}]"


def render_block(summary: Mapping[str, Any], preset: str, labels: Mapping[str, str]) -> str:
    """The README's AI-feedback block for a run summary's ``rounds``: markers included."""
    label = lambda key: labels.get(key, key)  # noqa: E731
    rounds = summary
    judge = rounds["reward"]
    labelling = ", ".join(label(r) for r in rounds["labelling"]) or "a reward not evaluated"
    lines = [
        START,
        f"AI feedback, preset `{preset}`: pairs labelled by {labelling}; judged by the held-out "
        f"{label(judge)} reward (and by the labelling reward, where it is evaluated, to show "
        f"reward hacking). Win rate (%) with its 95 % interval in brackets. "
        f"{interval_sentence(rounds.get('replicates') or [1])}",
        "",
        "| model | against | reward | prompt set | guidance | win rate | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    sentences = []
    for comparison in rounds["comparisons"]:
        for cell in comparison["cells"]:
            said = verdict(cell["ci_low"], cell["ci_high"])
            lines.append(
                f"| {label(comparison['model'])} | {label(comparison['opponent'])} "
                f"| {label(comparison['reward'])} | {label(cell['prompt_set'])} "
                f"| {cell['guidance']:g} | {_percent(cell)} | {said} |"
            )
            if comparison["reward"] == judge:
                sentences.append(
                    f"{label(comparison['model'])} {said} {label(comparison['opponent'])} "
                    f"under {label(judge)} ({label(cell['prompt_set'])}, guidance "
                    f"{cell['guidance']:g}: {_percent(cell)})."
                )
    lines += ["", *sentences, END]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """``text`` with the part between the AI-feedback markers replaced by ``block``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(
            f"{where} needs exactly one AI-feedback block between {START!r} and {END!r}"
        )
    return pattern.sub(lambda _: block, text)


def write_readme(summary: Mapping[str, Any], readme: Path) -> bool:
    """Rewrite ``readme``'s AI-feedback block from a run summary; True if it changed."""
    if not summary.get("rounds"):
        raise ValueError("the run summary has no rounds: run a preset with methods' rounds")
    old = readme.read_text()
    block = render_block(summary["rounds"], summary["preset"], summary.get("labels", {}))
    new = replace_block(old, block, str(readme))
    if new != old:
        readme.write_text(new)
    return new != old
