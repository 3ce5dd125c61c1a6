"""Win rates against the base model, mean reward scores, their tables and plots.

Scores come in long format, one row per (model, prompt_set, prompt_id, seed, guidance,
reward). Every model is sampled from the same initial noise at each (prompt, seed,
guidance), so a method is compared with the baseline image of the same prompt and seed.
Confidence intervals are percentile bootstraps over prompts: seeds of one prompt share the
prompt and are not independent, so a prompt is resampled together with all its seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

SCORE_COLUMNS = (
    "model",
    "prompt_set",
    "prompt_id",
    "prompt",
    "seed",
    "guidance",
    "reward",
    "score",
)
_BLOCK = ["prompt_set", "guidance", "reward"]
_PAIR = ["prompt_id", "seed"]


def load_scores(paths: Sequence[Path]) -> pd.DataFrame:
    """Concatenate score parquet files, checking that each has every score column."""
    if not paths:
        raise ValueError("load_scores needs at least one parquet file")
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        _check_columns(frame, str(path))
        frames.append(frame[list(SCORE_COLUMNS)])
    return pd.concat(frames, ignore_index=True)


def win_rates(
    scores: pd.DataFrame,
    baseline: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Win rate of every other model against `baseline` per (prompt_set, guidance, reward).

    A sample wins (1) when its score beats the baseline's at the same prompt and seed, ties
    count 0.5. `win_rate`, `ci_low` and `ci_high` are fractions in [0, 1]; the interval
    resamples the group's prompts (sorted by id) with
    `np.random.default_rng(seed).integers(0, n_prompts, (n_boot, n_prompts))`.
    """
    _check_scores(scores)
    is_base = scores["model"] == baseline
    if not is_base.any():
        raise ValueError(f"no scores for the baseline model {baseline!r}")
    base = scores.loc[is_base, [*_BLOCK, *_PAIR, "score"]].rename(columns={"score": "base"})
    paired = scores.loc[~is_base, ["model", *_BLOCK, *_PAIR, "score"]].merge(
        base, on=[*_BLOCK, *_PAIR], how="left"
    )
    unmatched = paired["base"].isna()
    if unmatched.any():
        first = paired[unmatched].sort_values(["model", *_BLOCK, *_PAIR]).iloc[0]
        raise ValueError(
            f"baseline {baseline!r} lacks scores for {int(unmatched.sum())} rows, first for "
            f"model {first['model']!r}, prompt_set {first['prompt_set']!r}, guidance "
            f"{first['guidance']}, reward {first['reward']!r}, prompt_id "
            f"{first['prompt_id']}, seed {first['seed']}"
        )
    # sign() maps better/tie/worse to 1/0/-1, hence wins 1/0.5/0.
    paired["win"] = 0.5 + 0.5 * np.sign(paired["score"] - paired["base"])
    out = _bootstrap_groups(
        paired.rename(columns={"model": "method"}), "method", "win", n_boot, seed, ci
    )
    return out.rename(columns={"estimate": "win_rate"})


def mean_scores(
    scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Mean score per (prompt_set, guidance, reward, model) with a prompt bootstrap CI.

    Columns: prompt_set, guidance, reward, model, mean, ci_low, ci_high, n_prompts,
    n_samples; the bootstrap draws are those described in `win_rates`.
    """
    _check_scores(scores)
    out = _bootstrap_groups(scores, "model", "score", n_boot, seed, ci)
    return out.rename(columns={"estimate": "mean"})


def write_tables(
    scores: pd.DataFrame,
    out_dir: Path,
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    labels: Mapping[str, str] | None = None,
    baseline: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> list[Path]:
    """Write win_rates.{csv,md} and mean_scores.{csv,md} to `out_dir`; return their paths.

    Only the given methods, rewards and prompt sets are kept, in the given order. CSVs use
    internal names and fractions; Markdown uses `labels` and per cent for win rates.
    """
    _check_columns(scores, "scores")
    for column, wanted in (
        ("model", [baseline, *methods]),
        ("reward", rewards),
        ("prompt_set", prompt_sets),
    ):
        absent = sorted(set(wanted) - set(scores[column].unique()))
        if absent:
            raise ValueError(f"no scores with {column} in {absent}")
    scores = scores[
        scores["model"].isin([baseline, *methods])
        & scores["reward"].isin(rewards)
        & scores["prompt_set"].isin(prompt_sets)
    ]
    name = _labeller(labels)
    orders = {"prompt_set": prompt_sets, "reward": rewards}
    wins = _order(win_rates(scores, baseline, n_boot, seed, ci), {**orders, "method": methods})
    means = _order(mean_scores(scores, n_boot, seed, ci), {**orders, "model": [baseline, *methods]})
    sizes = _sample_sizes(scores[scores["model"] == baseline], prompt_sets, name)
    ci_text = f"{ci * 100:g} % percentile bootstrap CI over prompts ({n_boot} resamples)"

    win_md = _markdown(
        wins,
        "method",
        methods,
        rewards,
        prompt_sets,
        name,
        sizes,
        title=f"# Win rate against {name(baseline)}",
        intro=(
            f"Win rate (%) of each method against {name(baseline)} on the same prompt, seed "
            f"and initial noise (ties count half), with the {ci_text} in brackets. "
            "Best per prompt set and reward in **bold**."
        ),
        value="win_rate",
        cell={r: _percent_cell for r in rewards},
    )
    mean_md = _markdown(
        means,
        "model",
        [baseline, *methods],
        rewards,
        prompt_sets,
        name,
        sizes,
        title="# Mean reward score",
        intro=(
            f"Mean reward score of each model, with the {ci_text} in brackets. "
            "Highest per prompt set and reward in **bold**."
        ),
        value="mean",
        cell={r: _score_cell(means.loc[means["reward"] == r, "mean"]) for r in rewards},
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("win_rates.csv", "win_rates.md")]
    paths += [out_dir / n for n in ("mean_scores.csv", "mean_scores.md")]
    # Rounding keeps the files byte-identical even if float sums differ in the last bit.
    stats = ["win_rate", "mean", "ci_low", "ci_high"]
    wins.round(dict.fromkeys(stats, 6)).to_csv(paths[0], index=False, lineterminator="\n")
    paths[1].write_text(win_md)
    means.round(dict.fromkeys(stats, 6)).to_csv(paths[2], index=False, lineterminator="\n")
    paths[3].write_text(mean_md)
    return paths


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

    Error bars are the bootstrap CI; the dashed line marks parity with the baseline.
    """
    name = _labeller(labels)
    guidances = sorted(win_rates_df["guidance"].unique())
    fig, axes = _grid(len(guidances), len(prompt_sets), panel_width=1.1 + 0.55 * len(rewards))
    width = 0.8 / len(methods)
    x = np.arange(len(rewards))
    for row, guidance in enumerate(guidances):
        for col, prompt_set in enumerate(prompt_sets):
            ax = axes[row][col]
            block = win_rates_df[
                (win_rates_df["guidance"] == guidance) & (win_rates_df["prompt_set"] == prompt_set)
            ].set_index(["method", "reward"])
            for i, method in enumerate(methods):
                rate, low, high = (
                    100 * _lookup(block, method, rewards, c)
                    for c in ("win_rate", "ci_low", "ci_high")
                )
                ax.bar(
                    x + (i - (len(methods) - 1) / 2) * width,
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
            ax.set_title(f"{name(prompt_set)}, guidance {float(guidance)}")
            if col == 0:
                ax.set_ylabel(f"win rate vs {name(baseline)} (%)")
    return _save(fig, axes, out_png, len(methods))


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
    replace bars because the y axis does not start at zero.
    """
    name = _labeller(labels)
    models = [baseline, *methods]
    guidances = sorted(mean_scores_df["guidance"].unique())
    fig, axes = _grid(len(guidances), len(rewards), panel_width=1.4 + 0.6 * len(prompt_sets))
    step = 0.8 / len(models)
    x = np.arange(len(prompt_sets))
    for row, guidance in enumerate(guidances):
        for col, reward in enumerate(rewards):
            ax = axes[row][col]
            block = mean_scores_df[
                (mean_scores_df["guidance"] == guidance) & (mean_scores_df["reward"] == reward)
            ].set_index(["model", "prompt_set"])
            for i, model in enumerate(models):
                mean, low, high = (
                    _lookup(block, model, prompt_sets, c) for c in ("mean", "ci_low", "ci_high")
                )
                ax.errorbar(
                    x + (i - (len(models) - 1) / 2) * step,
                    mean,
                    yerr=[mean - low, high - mean],
                    fmt="o",
                    markersize=4,
                    capsize=2,
                    elinewidth=1,
                    color="0.35" if model == baseline else _colour(i - 1),
                    label=name(model),
                )
            for boundary in x[:-1] + 0.5:
                ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
            ax.set_xlim(-0.5, len(prompt_sets) - 0.5)
            ax.set_xticks(x, [name(p) for p in prompt_sets], rotation=25, ha="right")
            ax.set_title(f"{name(reward)}, guidance {float(guidance)}")
            if col == 0:
                ax.set_ylabel("mean score")
    return _save(fig, axes, out_png, len(models))


def _check_columns(frame: pd.DataFrame, source: str) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks column(s) {', '.join(missing)}")


def _check_scores(scores: pd.DataFrame) -> None:
    # Win rates and means silently go wrong on missing or double-counted scores, so refuse them.
    _check_columns(scores, "scores")
    if scores["score"].isna().any():
        raise ValueError(f"scores has {int(scores['score'].isna().sum())} NaN scores")
    duplicated = scores.duplicated(["model", *_BLOCK, *_PAIR])
    if duplicated.any():
        first = scores[duplicated].iloc[0]
        raise ValueError(
            f"scores has {int(duplicated.sum())} duplicated rows, first: "
            + ", ".join(f"{c}={first[c]!r}" for c in ["model", *_BLOCK, *_PAIR])
        )


def _bootstrap_groups(
    rows: pd.DataFrame, who: str, value: str, n_boot: int, seed: int, ci: float
) -> pd.DataFrame:
    """Mean of `value` per (prompt_set, guidance, reward, who) with its prompt bootstrap CI."""
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    per_prompt = rows.groupby([*_BLOCK, who, "prompt_id"], sort=True)[value].agg(["sum", "count"])
    # One row per group, one column per prompt id (union over prompt sets; absent = 0 samples).
    wide = per_prompt.unstack("prompt_id", fill_value=0)
    sums = wide["sum"].to_numpy(dtype=float).T
    counts = wide["count"].to_numpy(dtype=float).T
    estimate, low, high = _bootstrap_ratio(sums, counts, n_boot, seed, ci)
    out = wide.index.to_frame(index=False)
    out["estimate"] = estimate
    out["ci_low"] = low
    out["ci_high"] = high
    out["n_prompts"] = (counts > 0).sum(axis=0)
    out["n_samples"] = counts.sum(axis=0).astype(int)
    return out


def _bootstrap_ratio(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, ci: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column, sum(sums) / sum(counts) and its percentile bootstrap over rows (prompts).

    Columns covering the same prompts share one draw made with a fresh `default_rng(seed)`,
    so each column's interval is exactly that of resampling its own prompts alone.
    """
    estimate = sums.sum(axis=0) / counts.sum(axis=0)
    low = np.empty_like(estimate)
    high = np.empty_like(estimate)
    coverage, which = np.unique((counts > 0).T, axis=0, return_inverse=True)
    which = which.ravel()
    for k, covered in enumerate(coverage):
        cols = np.flatnonzero(which == k)
        n = int(covered.sum())
        draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        # How often each prompt is drawn, so the resampled sums become one matrix product.
        offsets = n * np.arange(n_boot)[:, None]
        times = np.bincount((draws + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)
        times = times.astype(float)
        boot = (times @ sums[covered][:, cols]) / (times @ counts[covered][:, cols])
        low[cols], high[cols] = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return estimate, low, high


def _labeller(labels: Mapping[str, str] | None) -> Callable[[str], str]:
    labels = dict(labels or {})
    return lambda key: labels.get(key, key)


def _order(frame: pd.DataFrame, orders: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Keep rows whose names are listed; sort by guidance, then in the listed orders."""
    keep = np.logical_and.reduce([frame[c].isin(order) for c, order in orders.items()])
    frame = frame[keep]
    rank = {c: frame[c].map({v: i for i, v in enumerate(o)}) for c, o in orders.items()}
    keys = pd.DataFrame(rank).assign(guidance=frame["guidance"])
    by = ["guidance", *orders]
    return frame.loc[keys.sort_values(by, kind="stable").index].reset_index(drop=True)


def _sample_sizes(
    base: pd.DataFrame, prompt_sets: Sequence[str], name: Callable[[str], str]
) -> dict[float, str]:
    """Per guidance, a line giving prompts x seeds of each prompt set."""
    lines = {}
    for guidance, block in base.groupby("guidance", sort=True):
        parts = []
        for prompt_set in prompt_sets:
            pairs = block.loc[block["prompt_set"] == prompt_set, _PAIR].drop_duplicates()
            n_prompts, n_seeds = pairs["prompt_id"].nunique(), pairs["seed"].nunique()
            if len(pairs) == n_prompts * n_seeds:
                parts.append(f"{name(prompt_set)} {n_prompts} × {n_seeds}")
            else:
                parts.append(f"{name(prompt_set)} {len(pairs)} samples of {n_prompts} prompts")
        lines[guidance] = "Prompts × seeds: " + ", ".join(parts) + "."
    return lines


def _percent_cell(value: float, low: float, high: float) -> tuple[str, str]:
    return f"{100 * value:.1f}", f"[{100 * low:.1f}, {100 * high:.1f}]"


def _score_cell(values: pd.Series) -> Callable[[float, float, float], tuple[str, str]]:
    """Cell formatter showing four significant digits of the largest mean of one reward."""
    largest = float(values.abs().max()) if len(values) else 0.0
    digits = max(0, 3 - int(np.floor(np.log10(largest)))) if largest > 0 else 3
    return lambda v, lo, hi: (f"{v:.{digits}f}", f"[{lo:.{digits}f}, {hi:.{digits}f}]")


def _markdown(
    frame: pd.DataFrame,
    who: str,
    rows: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    name: Callable[[str], str],
    sizes: Mapping[float, str],
    *,
    title: str,
    intro: str,
    value: str,
    cell: Mapping[str, Callable[[float, float, float], tuple[str, str]]],
) -> str:
    """Paper-style tables, one per guidance: rows prompt set x `who`, columns reward models."""
    header = ["Prompt set", who.capitalize(), *(name(r) for r in rewards)]
    lines = [title, "", intro]
    for guidance in sorted(frame["guidance"].unique()):
        lines += ["", f"## guidance {float(guidance)}", "", sizes.get(guidance, ""), ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * len(rewards))
        block = frame[frame["guidance"] == guidance].set_index(["prompt_set", who, "reward"])
        best = block.groupby(level=["prompt_set", "reward"])[value].max()
        for prompt_set in prompt_sets:
            for i, row in enumerate(rows):
                cells = [name(prompt_set) if i == 0 else "", name(row)]
                for reward in rewards:
                    key = (prompt_set, row, reward)
                    if key not in block.index:
                        cells.append("–")
                        continue
                    entry = block.loc[key]
                    point, interval = cell[reward](entry[value], entry["ci_low"], entry["ci_high"])
                    bold = entry[value] == best[(prompt_set, reward)]
                    cells.append(f"**{point}** {interval}" if bold else f"{point} {interval}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _save(fig: Figure, axes: np.ndarray, out_png: Path, n_entries: int) -> Path:
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncol=min(n_entries, 6), frameon=False)
    for ax in axes.flat:
        ax.grid(axis="y", color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return out_png
