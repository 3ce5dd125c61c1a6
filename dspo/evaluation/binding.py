"""The attribute-binding table: each model's mean B-VQA per prompt set, beside its win rate.

B-VQA scores (reward ``bvqa``, `dspo score` with the ``evaluation.attribute_binding`` scorer)
of T2I-CompBench's colour, shape and texture sets, or the toy world's binding set. Means and
win rates use :mod:`dspo.evaluation.statistics`: the mean over training replicates with a
bootstrap over prompts (seeds nested) crossed with replicates, and the win rate against the
base model at the same prompt and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.statistics import BLOCK, mean_scores, order_rows, win_rates
from dspo.evaluation.tables import labeller

COLUMNS = [
    "prompt_set", "guidance", "model", "mean", "ci_low", "ci_high", "win_rate", "win_ci_low",
    "win_ci_high", "n_prompts", "n_samples", "n_replicates",
]  # fmt: skip


def binding_table(
    scores: pd.DataFrame,
    models: Sequence[str],
    prompt_sets: Sequence[str],
    baseline: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """One row per (prompt set, guidance, model): mean B-VQA with its interval, and the win
    rate against `baseline` with its interval (empty for the baseline itself).

    ``scores`` holds one reward only (the B-VQA scores); a second one is an error.
    """
    rewards = scores["reward"].unique()
    if len(rewards) != 1:
        raise ValueError(f"the binding table reads one reward's scores, got {sorted(rewards)}")
    absent = sorted(set(prompt_sets) - set(scores["prompt_set"]))
    if absent:
        raise ValueError(f"no B-VQA scores of prompt set(s) {absent}")
    keep = scores["model"].isin([baseline, *models]) & scores["prompt_set"].isin(prompt_sets)
    scores = scores[keep]
    means = mean_scores(scores, n_boot, seed, ci)
    wins = win_rates(scores, baseline, n_boot, seed, ci).rename(
        columns={"method": "model", "ci_low": "win_ci_low", "ci_high": "win_ci_high"}
    )
    wins = wins[[*BLOCK, "model", "win_rate", "win_ci_low", "win_ci_high"]]
    table = means.merge(wins, on=[*BLOCK, "model"], how="left")
    ordered = order_rows(table, {"prompt_set": prompt_sets, "model": [baseline, *models]})
    return ordered[COLUMNS]


def binding_markdown(
    table: pd.DataFrame,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
    ci: float = 0.95,
    n_boot: int = 1000,
) -> str:
    """The table as Markdown under `title` (or a default): per guidance, one row per model
    and, per prompt set, the mean B-VQA [interval] and the win rate against the base model
    in per cent [interval]."""
    name = labeller(labels)
    sets = list(dict.fromkeys(table["prompt_set"]))
    lines = [
        f"# {title or 'Attribute binding (B-VQA)'}",
        "",
        "Mean B-VQA (T2I-CompBench's score: the product, over the prompt's noun phrases, of the "
        f"probability that the answer to '<phrase>?' is yes) with its {ci * 100:g} % interval, "
        "and the win rate (%) against the base model. "
        + interval_sentence(table["n_replicates"], ci=ci, n_boot=n_boot),
    ]
    for guidance, block in table.groupby("guidance", sort=True):
        header = ["Model", *(f"{name(s)} B-VQA | {name(s)} win %" for s in sets)]
        lines += ["", f"## Guidance {guidance:g}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * (1 + 2 * len(sets)))
        for model in dict.fromkeys(block["model"]):
            cells = [name(model)]
            for prompt_set in sets:
                row = block[(block["model"] == model) & (block["prompt_set"] == prompt_set)]
                cells += _cells(row.iloc[0]) if len(row) else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def interval_cell(mean: float, low: float, high: float) -> str:
    """A mean B-VQA with its interval as the tables show it: ``0.412 [0.380, 0.445]``; a dash
    where there is none (a model without binding scores)."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _cells(row: pd.Series) -> list[str]:
    mean = interval_cell(row["mean"], row["ci_low"], row["ci_high"])
    if pd.isna(row["win_rate"]):
        return [mean, ""]
    low, high = 100 * row["win_ci_low"], 100 * row["win_ci_high"]
    return [mean, f"{100 * row['win_rate']:.1f} [{low:.1f}, {high:.1f}]"]
