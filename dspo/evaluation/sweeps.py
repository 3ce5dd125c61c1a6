"""Sensitivity sweeps: win rate against the base model over the values of one hyper-parameter.

Each sweep point is a model of its own (dspo/config/experiments.py); its win rates are those of the
main tables (mean over replicates, hierarchical bootstrap interval, sign test over prompts),
Holm-adjusted over the sweep's own table. The plot draws win rate against the value (log
axis when every value is positive), one panel per prompt set, one line per guidance scale,
with the compared methods (e.g. SFT) as horizontal reference bands.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.statistics import (
    BLOCK,
    REPLICATE,
    order_rows,
    sign_test,
    win_rates,
)
from dspo.evaluation.tables import labeller, with_holm


def relabel_groups(scores: pd.DataFrame, groups: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Scores with each trained model's rows under its group and replicate.

    ``groups`` maps a model name (``dspo-r1``, ``dspo_lam-0.1``) to ``[group, replicate]``;
    models it does not name (the base model) keep their name and replicate.
    """
    if not groups:
        return scores
    scores = scores.copy()
    names = scores["model"].map(lambda m: groups[m][0] if m in groups else m)
    replicates = scores["model"].map(lambda m: groups[m][1] if m in groups else None)
    if REPLICATE in scores.columns:
        replicates = replicates.fillna(scores[REPLICATE])
    scores["model"] = names
    scores[REPLICATE] = replicates.fillna(0).astype(int)
    return scores


def sweep_table(
    scores: pd.DataFrame,
    spec: Mapping[str, Any],
    baseline: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """One sweep's win rates against ``baseline``: a row per point, prompt set, guidance and
    reward, with the swept ``value``; compared methods' rows have no value."""
    points: Mapping[str, float] = spec["points"]
    groups = [*points, *spec.get("compare", [])]
    kept = scores[scores["model"].isin([baseline, *groups])]
    wins = win_rates(kept, baseline, n_boot, seed, ci).merge(
        sign_test(kept, baseline), on=[*BLOCK, "method"], how="left"
    )
    wins = order_rows(wins, {"method": groups})
    wins.insert(wins.columns.get_loc("method") + 1, "value", wins["method"].map(points))
    return with_holm(wins)


def write_sweep(
    scores: pd.DataFrame,
    name: str,
    spec: Mapping[str, Any],
    tables_dir: Path,
    plots_dir: Path,
    reward: str,
    labels: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Path]:
    """``sweep_{name}.csv``/``.md`` in ``tables_dir`` and ``sweep_{name}.png`` in ``plots_dir``."""
    table = sweep_table(scores, spec, n_boot=n_boot, seed=seed)
    tables_dir.mkdir(parents=True, exist_ok=True)
    csv, md = tables_dir / f"sweep_{name}.csv", tables_dir / f"sweep_{name}.md"
    stats = dict.fromkeys(["win_rate", "ci_low", "ci_high", "p_value", "p_holm", "replicate_sd"], 6)
    table.round(stats).to_csv(csv, index=False, lineterminator="\n")
    md.write_text(_markdown(table, name, spec, labels, n_boot))
    png = plot_sweep(table, name, spec, plots_dir / f"sweep_{name}.png", reward, labels)
    return [csv, md, png]


def _interval(table: pd.DataFrame, subject: str, n_boot: int | None = None) -> str:
    return interval_sentence(table["n_replicates"], subject, n_boot=n_boot)


def _markdown(
    table: pd.DataFrame,
    name: str,
    spec: Mapping[str, Any],
    labels: Mapping[str, str] | None,
    n_boot: int,
) -> str:
    label = labeller(labels)
    keys = ", ".join(spec["keys"])
    lines = [
        f"# Sweep {name}: {label(spec['method'])} over {keys}",
        "",
        "Win rate against the base model (%), with its 95 % interval. "
        f"{_interval(table, 'Intervals', n_boot)} p: sign test over prompts, Holm-adjusted "
        "over this table.",
        "",
        "| prompt set | guidance | reward | model | value | win rate | 95 % CI | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        value = "" if pd.isna(row.value) else f"{row.value:g}"
        lines.append(
            f"| {label(row.prompt_set)} | {row.guidance:g} | {label(row.reward)} | "
            f"{label(row.method)} | {value} | {100 * row.win_rate:.1f} | "
            f"[{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}] | {row.p_holm:.3g} |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(
    table: pd.DataFrame,
    name: str,
    spec: Mapping[str, Any],
    out_png: Path,
    reward: str,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Win rate (%) against the swept value for ``reward``: a panel per prompt set, a line per
    guidance scale with its 95 % interval as a band; compared methods as dashed lines."""
    label = labeller(labels)
    rows = table[table["reward"] == reward]
    if rows.empty:
        raise ValueError(f"sweep {name}: no win rates for reward {reward!r}")
    prompt_sets = list(dict.fromkeys(rows["prompt_set"]))
    guidances = sorted(rows["guidance"].unique())
    fig = Figure(figsize=(3.2 * len(prompt_sets) + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(prompt_sets), squeeze=False, sharey=True)[0]
    points = rows[rows["value"].notna()]
    log_axis = bool((points["value"] > 0).all())
    for ax, prompt_set in zip(axes, prompt_sets, strict=True):
        for i, guidance in enumerate(guidances):
            colour = f"C{i}"
            line = points[(points["prompt_set"] == prompt_set) & (points["guidance"] == guidance)]
            line = line.sort_values("value")
            ax.plot(
                line["value"],
                100 * line["win_rate"],
                "o-",
                color=colour,
                label=f"guidance {guidance:g}",
            )
            ax.fill_between(
                line["value"],
                100 * line["ci_low"],
                100 * line["ci_high"],
                color=colour,
                alpha=0.15,
                linewidth=0,
            )
            for j, other in enumerate(spec.get("compare", [])):
                ref = rows[
                    (rows["method"] == other)
                    & (rows["prompt_set"] == prompt_set)
                    & (rows["guidance"] == guidance)
                ]
                if not ref.empty:
                    ax.axhline(
                        100 * ref["win_rate"].iloc[0],
                        color=colour,
                        linestyle=(0, (4, 2 + 2 * j)),
                        linewidth=1,
                        label=f"{label(other)}, guidance {guidance:g}",
                    )
        ax.axhline(50, color="0.3", linestyle=":", linewidth=1, zorder=0)
        if log_axis:
            ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_title(label(prompt_set), fontsize=10)
        ax.set_xlabel(", ".join(spec["keys"]))
        ax.grid(color="0.9", linewidth=0.8)
    axes[0].set_ylabel(f"win rate vs base (%), {label(reward)}")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside upper center",
        ncol=min(4, len(names)),
        frameon=False,
        fontsize=8,
    )
    note = (
        f"{label(spec['method'])} sweep {name}. {_interval(rows, 'Bands')} Dotted line: parity "
        "with the base model."
    )
    wrapped = textwrap.fill(note, width=max(30, int(fig.get_figwidth() * 13)))
    fig.supxlabel(wrapped, fontsize=8, color="0.3")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # PNG's standard "Description" text keyword: the note, readable without the picture.
    fig.savefig(out_png, dpi=130, metadata={"Description": note})
    return out_png


def reward_of(spec: Mapping[str, Any], rewards: Sequence[str]) -> str:
    """The reward a sweep's plot shows: its own ``reward``, else the first configured one."""
    return spec.get("reward") or rewards[0]
