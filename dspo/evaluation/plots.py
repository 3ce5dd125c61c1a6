"""Plots of the results (win rates, mean scores) and image grids."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.tables import labeller

# The methods take tab10's colours in both plots; the baseline, in the mean-score plot only,
# is black: tab10's own grey (a method's) would be hard to tell from a grey baseline.
BASELINE_COLOUR = "black"


def plot_win_rates(
    win_rates_df: pd.DataFrame,
    out_png: Path,
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    labels: Mapping[str, str] | None = None,
    baseline: str = "base",
) -> Path:
    """Grouped bars of win rate (%) per reward model, one panel per prompt set and guidance.

    Error bars are the bootstrap CI; the dashed line marks parity with the baseline. The note
    under the panels, also the PNG's ``Description`` text, says what the intervals resample.
    """
    name = labeller(labels)
    fig, axes, panels = _panel_grid(
        win_rates_df,
        ("prompt_set", prompt_sets),
        ["method", "reward"],
        name,
        ylabel=f"win rate vs {name(baseline)} (%)",
        panel_width=1.1 + 0.55 * len(rewards),
    )
    width = 0.8 / len(methods)
    x = np.arange(len(rewards))
    for ax, block in panels:
        for i, method in enumerate(methods):
            rate, low, high = (100 * v for v in _estimates(block, method, rewards, "win_rate"))
            ax.bar(
                _offsets(x, i, len(methods), width),
                rate,
                width,
                yerr=[rate - low, high - rate],
                capsize=2,
                error_kw={"elinewidth": 0.8},
                color=_colour(i),
                label=name(method),
            )
        ax.axhline(50, color="0.3", linestyle="--", linewidth=1, zorder=0)
        ax.set_ylim(0, 100)
        ax.set_xticks(x, [name(r) for r in rewards], rotation=25, ha="right")
    shown = win_rates_df[win_rates_df["method"].isin(methods)]
    note = f"{interval_sentence(shown.get('n_replicates', 1), 'Error bars')} Dashed: parity."
    return _save(fig, axes, out_png, len(methods), note)


def plot_mean_scores(
    mean_scores_df: pd.DataFrame,
    out_png: Path,
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    labels: Mapping[str, str] | None = None,
    baseline: str = "base",
) -> Path:
    """Mean score with bootstrap CI per model, one panel per reward model and guidance.

    Reward models have unrelated scales, so each gets its own panel and y axis; within a
    panel the groups are prompt sets and the baseline comes first. Points with error bars
    replace bars because the y axis does not start at zero. The note under the panels, also
    the PNG's ``Description`` text, says what the intervals resample.
    """
    name = labeller(labels)
    if baseline in methods:
        raise ValueError(f"methods include the baseline {baseline!r}: it is drawn first already")
    models = [baseline, *methods]
    fig, axes, panels = _panel_grid(
        mean_scores_df,
        ("reward", rewards),
        ["model", "prompt_set"],
        name,
        ylabel="mean score",
        panel_width=1.4 + 0.6 * len(prompt_sets),
    )
    step = 0.8 / len(models)
    x = np.arange(len(prompt_sets))
    for ax, block in panels:
        for i, model in enumerate(models):
            mean, low, high = _estimates(block, model, prompt_sets, "mean")
            ax.errorbar(
                _offsets(x, i, len(models), step),
                mean,
                yerr=[mean - low, high - mean],
                fmt="o",
                markersize=4,
                capsize=2,
                elinewidth=1,
                color=BASELINE_COLOUR if model == baseline else _colour(i - 1),
                label=name(model),
            )
        for boundary in x[:-1] + 0.5:
            ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.5, len(prompt_sets) - 0.5)
        ax.set_xticks(x, [name(p) for p in prompt_sets], rotation=25, ha="right")
    shown = mean_scores_df[mean_scores_df["model"].isin(models)]
    note = interval_sentence(shown.get("n_replicates", 1), "Error bars")
    return _save(fig, axes, out_png, len(models), note)


def _panel_grid(
    df: pd.DataFrame,
    panel: tuple[str, Sequence[str]],
    index: list[str],
    name: Callable[[str], str],
    ylabel: str,
    panel_width: float,
) -> tuple[Figure, np.ndarray, list[tuple[Axes, pd.DataFrame]]]:
    """The figure, its axes and each panel's (axes, rows of `df` indexed by `index`).

    `panel` is (column, values): a column of panels per value, a row per guidance scale of
    `df` (ascending). Each panel is titled with its value's name and guidance; the first
    column's y axis is labelled `ylabel`.
    """
    column, values = panel
    guidances = sorted(df["guidance"].unique())
    fig, axes = _grid(len(guidances), len(values), panel_width=panel_width)
    panels = []
    for row, guidance in enumerate(guidances):
        for col, value in enumerate(values):
            ax = axes[row][col]
            ax.set_title(f"{name(value)}\nguidance {float(guidance)}", fontsize=10)
            if col == 0:
                ax.set_ylabel(ylabel)
            block = df[(df["guidance"] == guidance) & (df[column] == value)].set_index(index)
            panels.append((ax, block))
    return fig, axes, panels


def _offsets(x: np.ndarray, i: int, n: int, width: float) -> np.ndarray:
    """Positions of the `i`-th of `n` side-by-side entries `width` apart, centred on `x`."""
    return x + (i - (n - 1) / 2) * width


def _estimates(
    block: pd.DataFrame, who: str, keys: Sequence[str], column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`column` and its interval (``ci_low``, ``ci_high``) for (who, key), keys in order."""
    value, low, high = (_lookup(block, who, keys, c) for c in (column, "ci_low", "ci_high"))
    return value, low, high


def _lookup(block: pd.DataFrame, who: str, keys: Sequence[str], column: str) -> np.ndarray:
    """Values of `column` for (who, key) in order, NaN where absent (matplotlib skips NaN)."""
    return np.array(
        [block.at[(who, k), column] if (who, k) in block.index else np.nan for k in keys],
        dtype=float,
    )


def _colour(i: int) -> tuple[float, float, float, float]:
    return colormaps["tab10"](i % 10)


def _grid(n_rows: int, n_cols: int, panel_width: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_width * n_cols, 3.4 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _save(fig: Figure, axes: np.ndarray, out_png: Path, n_entries: int, note: str) -> Path:
    handles, names = axes[0][0].get_legend_handles_labels()
    # Legend columns and the note's lines fit the figure's width, so a one-panel figure
    # clips neither.
    width_in = fig.get_figwidth()
    ncol = max(1, min(n_entries, 6, int(width_in / 1.2)))
    fig.legend(handles, names, loc="outside upper center", ncol=ncol, frameon=False)
    wrapped = textwrap.fill(note, width=max(30, int(width_in * 13)))
    fig.supxlabel(wrapped, fontsize=8, color="0.3")  # in the layout: never over tick labels
    for ax in axes.flat:
        ax.grid(axis="y", color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # PNG's standard "Description" text keyword: the note, readable without the picture.
    fig.savefig(out_png, dpi=150, metadata={"Description": note})
    return out_png


def image_grid(
    manifests: Mapping[str, Path],
    out_png: Path,
    labels: Mapping[str, str] | None = None,
    n_prompts: int = 6,
    sources: pd.DataFrame | None = None,
) -> Path:
    """One prompt and seed per row, one model per column (like the paper's Figures 5 and 8).

    `manifests` maps each model (the baseline first) to its manifest parquet; images lie
    beside it. The rows are the first `n_prompts` prompts at the first seed, at every
    guidance scale, so every column shows the same prompts from the same initial noise; each
    row names its prompt (for edits: the instruction), seed and guidance. `sources` (the
    editing set: ``prompt_id`` and ``image`` bytes) adds a first column with the image each
    row's edits started from, so the edit itself can be seen.
    """
    import io

    from PIL import Image

    name = labeller(labels)
    tables = {model: pd.read_parquet(path) for model, path in manifests.items()}
    first = next(iter(tables.values()))
    seed = first["seed"].min()
    prompts = first.loc[first["seed"] == seed, "prompt_id"].drop_duplicates().head(n_prompts)
    rows = first[(first["seed"] == seed) & first["prompt_id"].isin(prompts)]
    rows = rows.sort_values(["guidance", "prompt_id"], kind="stable")
    keys = ["prompt_id", "seed", "guidance"]
    offset = 0 if sources is None else 1
    n_cols = len(tables) + offset
    fig = Figure(figsize=(1.3 * n_cols + 2.6, 1.3 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    if sources is not None:
        source_bytes = sources.set_index("prompt_id")["image"]
        for r, row in enumerate(rows.itertuples()):
            if row.prompt_id not in source_bytes.index:
                raise ValueError(
                    f"the editing set has no source image for prompt_id {row.prompt_id}"
                )
            ax = axes[r][0]
            ax.imshow(Image.open(io.BytesIO(source_bytes[row.prompt_id])), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("source", fontsize=9)
    for col, (model, table) in enumerate(tables.items(), start=offset):
        paths = table.set_index(keys)["path"]
        for r, row in enumerate(rows.itertuples()):
            key = (row.prompt_id, row.seed, row.guidance)
            if key not in paths.index:
                raise ValueError(
                    f"{manifests[model]} has no image for prompt_id, seed, guidance {key}"
                )
            ax = axes[r][col]
            ax.imshow(
                Image.open(Path(manifests[model]).parent / paths[key]), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name(model), fontsize=9)
    for r, row in enumerate(rows.itertuples()):
        text = "\n".join(textwrap.wrap(row.prompt, 28))
        axes[r][0].set_ylabel(
            f"{text}\nseed {row.seed}, guidance {row.guidance:g}",
            fontsize=7,
            rotation=0,
            ha="right",
            va="center",
        )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
