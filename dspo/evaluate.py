"""Win rates against the base model, mean reward scores, their tables and plots.

Scores come in long format, one row per (model, prompt_set, prompt_id, seed, guidance,
reward). Every model is sampled from the same initial noise at each (prompt, seed,
guidance), so a method is compared with the baseline image of the same prompt and seed.
Confidence intervals are percentile bootstraps over prompts: seeds of one prompt share the
prompt and are not independent, so a prompt is resampled together with all its seeds.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    paired = _paired_with_baseline(scores, baseline)
    # sign() maps better/tie/worse to 1/0/-1, hence wins 1/0.5/0.
    paired["win"] = 0.5 + 0.5 * np.sign(paired["score"] - paired["base"])
    out = _bootstrap_groups(
        paired.rename(columns={"model": "method"}), "method", "win", n_boot, seed, ci
    )
    return out.rename(columns={"estimate": "win_rate"})


def _paired_with_baseline(scores: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every other model's rows with the baseline's score of the same sample as `base`."""
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
    return paired


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


def sign_test(scores: pd.DataFrame, baseline: str = "base") -> pd.DataFrame:
    """Two-sided exact sign test of every other model against `baseline`, over prompts.

    Seeds of one prompt are not independent, so each prompt contributes one sign: that of
    its mean score difference over seeds. Prompts with no difference are left out, as the
    sign test does. Columns: prompt_set, guidance, reward, method, n_better, n_worse, p_value.
    """
    paired = _paired_with_baseline(scores, baseline)
    paired["diff"] = paired["score"] - paired["base"]
    per_prompt = paired.groupby(["model", *_BLOCK, "prompt_id"], sort=True)["diff"].mean()
    levels = ["model", *_BLOCK]
    out = pd.DataFrame(
        {
            "n_better": (per_prompt > 0).groupby(level=levels).sum(),
            "n_worse": (per_prompt < 0).groupby(level=levels).sum(),
        }
    ).reset_index()
    out["p_value"] = [
        binomial_two_sided(int(b), int(b + w))
        for b, w in zip(out["n_better"], out["n_worse"], strict=True)
    ]
    return out.rename(columns={"model": "method"})[
        [*_BLOCK, "method", "n_better", "n_worse", "p_value"]
    ]


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (1.0 when n == 0)."""
    if n == 0:
        return 1.0
    tail = min(k, n - k)
    # Sum the smaller tail in log space: C(n, i) / 2^n underflows for large n.
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(tail + 1)
    ]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2)
    return min(1.0, 2.0 * math.exp(log_tail))


def head_to_head(
    scores: pd.DataFrame,
    models: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Win rate of every model against every other, per (prompt_set, guidance, reward).

    Columns: prompt_set, guidance, reward, model, opponent, win_rate, ci_low, ci_high,
    p_value (sign test); the intervals are the prompt bootstraps of `win_rates`.
    """
    frames = []
    for opponent in models:
        subset = scores[scores["model"].isin(models)]
        wins = win_rates(subset, opponent, n_boot, seed, ci).merge(
            sign_test(subset, opponent), on=[*_BLOCK, "method"], how="left"
        )
        frames.append(wins.assign(opponent=opponent))
    out = pd.concat(frames, ignore_index=True).rename(columns={"method": "model"})
    columns = [*_BLOCK, "model", "opponent", "win_rate", "ci_low", "ci_high", "p_value"]
    return _order(out[columns], {"model": list(models), "opponent": list(models)})


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
    paper_tables: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write the result tables to `out_dir` as CSV and Markdown; return their paths.

    win_rates (every method against `baseline`, with a sign test), mean_scores, head_to_head
    (every model against every other), and one table per entry of `paper_tables` in the
    layout of a paper table (keys: title, methods, optional prompt_sets and paper, the id of
    the paper table whose published numbers are shown beside the reproduced ones).
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
    wins = win_rates(scores, baseline, n_boot, seed, ci).merge(
        sign_test(scores, baseline), on=[*_BLOCK, "method"], how="left"
    )
    wins = _order(wins, {**orders, "method": methods})
    means = _order(mean_scores(scores, n_boot, seed, ci), {**orders, "model": [baseline, *methods]})
    layout = _Layout(
        baseline=baseline,
        baseline_scores=scores[scores["model"] == baseline],
        rewards=list(rewards),
        prompt_sets=list(prompt_sets),
        name=name,
        ci_text=f"{ci * 100:g} % percentile bootstrap CI over prompts ({n_boot} resamples)",
    )

    win_md = _win_table(
        wins, {"title": f"Win rate against {name(baseline)}", "methods": methods}, layout
    )[1]
    mean_md = _markdown(
        means,
        "model",
        [baseline, *methods],
        layout,
        title="# Mean reward score",
        intro=(
            f"Mean reward score of each model, with the {layout.ci_text} in brackets. "
            "Highest per prompt set and reward in **bold**."
        ),
        value="mean",
        cell={r: _score_cell(means.loc[means["reward"] == r, "mean"]) for r in rewards},
    )

    models = [baseline, *methods]
    matrix = _order(
        head_to_head(scores, models, n_boot, seed, ci),
        {**orders, "model": models, "opponent": models},
    )
    tables = {
        "win_rates": (wins, win_md),
        "mean_scores": (means, mean_md),
        "head_to_head": (matrix, _matrix_markdown(matrix, models, name, layout.ci_text)),
    }
    for table, spec in (paper_tables or {}).items():
        sets = [p for p in spec.get("prompt_sets", prompt_sets) if p in prompt_sets]
        tables[table] = _win_table(wins, spec, replace(layout, prompt_sets=sets))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # Rounding keeps the files byte-identical even if float sums differ in the last bit.
    stats = dict.fromkeys(["win_rate", "mean", "ci_low", "ci_high", "p_value"], 6)
    for table, (frame, markdown) in tables.items():
        csv, md = out_dir / f"{table}.csv", out_dir / f"{table}.md"
        frame.round(stats).to_csv(csv, index=False, lineterminator="\n")
        md.write_text(markdown)
        paths += [csv, md]
    return paths


_SIGNIFICANT = "†"


def _significance(prompt_set: str, method: str, reward: str, entry: pd.Series) -> str:
    return f" {_SIGNIFICANT}" if entry["p_value"] < 0.05 else ""


def published_results() -> pd.DataFrame:
    """The win rates (%) the DSPO paper publishes, one row per (table, prompt set, method,
    reward), as shipped in dspo/resources/paper_results.csv."""
    return pd.read_csv(Path(__file__).parent / "resources" / "paper_results.csv")


@dataclass(frozen=True)
class _Layout:
    """What the Markdown tables of one run share: the baseline and its scores (for the sample
    sizes), the rewards and prompt sets in order, display names and the interval's wording."""

    baseline: str
    baseline_scores: pd.DataFrame
    rewards: list[str]
    prompt_sets: list[str]
    name: Callable[[str], str]
    ci_text: str

    def sample_sizes(self) -> dict[float, str]:
        """Per guidance, a line giving prompts x seeds of each prompt set."""
        lines = {}
        for guidance, block in self.baseline_scores.groupby("guidance", sort=True):
            parts = []
            for prompt_set in self.prompt_sets:
                pairs = block.loc[block["prompt_set"] == prompt_set, _PAIR].drop_duplicates()
                n_prompts, n_seeds = pairs["prompt_id"].nunique(), pairs["seed"].nunique()
                label = self.name(prompt_set)
                if len(pairs) == n_prompts * n_seeds:
                    parts.append(f"{label} {n_prompts} × {n_seeds}")
                else:
                    parts.append(f"{label} {len(pairs)} samples of {n_prompts} prompts")
            lines[guidance] = "Prompts × seeds: " + ", ".join(parts) + "."
        return lines


def _win_table(
    wins: pd.DataFrame, spec: Mapping[str, Any], layout: _Layout
) -> tuple[pd.DataFrame, str]:
    """A paper-layout table of win rates for `spec` (title, methods, optional paper), with
    the published figure beside each cell when `spec` names a paper table."""
    methods = list(spec["methods"])
    prompt_sets = layout.prompt_sets
    frame = wins[wins["method"].isin(methods) & wins["prompt_set"].isin(prompt_sets)]
    frame = _order(frame, {"prompt_set": prompt_sets, "reward": layout.rewards, "method": methods})
    baseline = layout.name(layout.baseline)
    intro = (
        f"Win rate (%) of each method against {baseline} on the same prompt, seed and initial "
        f"noise (ties count half), with the {layout.ci_text} in brackets. Best per prompt set and "
        f"reward in **bold**. {_SIGNIFICANT} marks a sign test over prompts with p < 0.05."
    )
    note = _significance
    if spec.get("paper"):
        paper = published_results()
        paper = paper[paper["table"] == spec["paper"]].set_index(["prompt_set", "method", "reward"])
        frame = frame.merge(
            paper["win_rate"].div(100).rename("paper_win_rate").reset_index(),
            on=["prompt_set", "method", "reward"],
            how="left",
        )
        intro += f" In parentheses: the figure published in the paper's {spec['paper']}."

        def note(prompt_set: str, method: str, reward: str, entry: pd.Series) -> str:
            key = (prompt_set, method, reward)
            published = f" ({paper.at[key, 'win_rate']:.1f})" if key in paper.index else ""
            return _significance(prompt_set, method, reward, entry) + published

    markdown = _markdown(
        frame,
        "method",
        methods,
        layout,
        title=f"# {spec['title']}",
        intro=intro,
        value="win_rate",
        cell={r: _percent_cell for r in layout.rewards},
        note=note,
    )
    return frame, markdown


def _matrix_markdown(
    matrix: pd.DataFrame, models: Sequence[str], name: Callable[[str], str], ci_text: str
) -> str:
    """One square table per (prompt set, guidance, reward): row model's win rate vs column's."""
    lines = [
        "# Head to head",
        "",
        f"Win rate (%) of the row model against the column model on the same prompt, seed and "
        f"initial noise (ties count half); {_SIGNIFICANT} marks a sign test over prompts with "
        f"p < 0.05. Intervals ({ci_text}) are in head_to_head.csv.",
    ]
    for (prompt_set, guidance, reward), block in matrix.groupby(_BLOCK, sort=False):
        cells = block.set_index(["model", "opponent"])
        lines += ["", f"## {name(prompt_set)}, guidance {float(guidance)}, {name(reward)}", ""]
        lines.append("| | " + " | ".join(name(m) for m in models) + " |")
        lines.append("|---|" + "---:|" * len(models))
        for row in models:
            values = []
            for column in models:
                if (row, column) not in cells.index:
                    values.append("–")
                    continue
                entry = cells.loc[(row, column)]
                mark = f" {_SIGNIFICANT}" if entry["p_value"] < 0.05 else ""
                values.append(f"{100 * entry['win_rate']:.1f}{mark}")
            lines.append(f"| {name(row)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


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
            ax.set_title(f"{name(prompt_set)}\nguidance {float(guidance)}", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"win rate vs {name(baseline)} (%)")
    note = "Error bars: 95 % bootstrap intervals over prompts (seeds nested); dashed: parity."
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
    replace bars because the y axis does not start at zero.
    """
    name = _labeller(labels)
    if baseline in methods:
        raise ValueError(f"methods include the baseline {baseline!r}: it is drawn first already")
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
            ax.set_title(f"{name(reward)}\nguidance {float(guidance)}", fontsize=10)
            if col == 0:
                ax.set_ylabel("mean score")
    note = "Error bars: 95 % bootstrap intervals over prompts (seeds nested)."
    return _save(fig, axes, out_png, len(models), note)


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
    layout: _Layout,
    *,
    title: str,
    intro: str,
    value: str,
    cell: Mapping[str, Callable[[float, float, float], tuple[str, str]]],
    note: Callable[[str, str, str, pd.Series], str] | None = None,
) -> str:
    """Paper-style tables, one per guidance: rows prompt set x `who`, columns reward models."""
    name, rewards, sizes = layout.name, layout.rewards, layout.sample_sizes()
    header = ["Prompt set", who.capitalize(), *(name(r) for r in rewards)]
    lines = [title, "", intro]
    for guidance in sorted(frame["guidance"].unique()):
        lines += ["", f"## guidance {float(guidance)}", "", sizes.get(guidance, ""), ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * len(rewards))
        block = frame[frame["guidance"] == guidance].set_index(["prompt_set", who, "reward"])
        best = block.groupby(level=["prompt_set", "reward"])[value].max()
        for prompt_set in layout.prompt_sets:
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
                    text = f"**{point}** {interval}" if bold else f"{point} {interval}"
                    if note is not None:
                        text += note(prompt_set, row, reward, entry)
                    cells.append(text)
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
    fig.savefig(out_png, dpi=150)
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

    name = _labeller(labels)
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
