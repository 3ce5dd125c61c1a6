"""Statistics of scores: win rates against a baseline, mean scores, sign tests, head to head.

Scores come in long format, one row per (model, prompt_set, prompt_id, seed, guidance,
reward). Every model is sampled from the same initial noise at each (prompt, seed,
guidance), so a method is compared with the baseline image of the same prompt and seed.
Confidence intervals are percentile bootstraps over prompts: seeds of one prompt share the
prompt and are not independent, so a prompt is resampled together with all its seeds.

A trained model can come in several training replicates (the same method trained with other
seeds), told apart by an optional ``replicate`` column. Its estimate is then the mean over
replicates, and the bootstrap is hierarchical: each draw resamples the replicates and, crossed
with them, the prompts (seeds nested), so the interval covers the randomness of training as
well as that of the prompts. With one replicate it is exactly the prompt bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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


BLOCK = ["prompt_set", "guidance", "reward"]


PAIR = ["prompt_id", "seed"]


REPLICATE = "replicate"


def load_scores(paths: Sequence[Path]) -> pd.DataFrame:
    """Concatenate score parquet files, checking that each has every score column.

    The ``replicate`` column is kept where a file has it, and is 0 elsewhere.
    """
    if not paths:
        raise ValueError("load_scores needs at least one parquet file")
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        check_columns(frame, str(path))
        replicate = frame[REPLICATE] if REPLICATE in frame.columns else 0
        frames.append(frame[list(SCORE_COLUMNS)].assign(**{REPLICATE: replicate}))
    return pd.concat(frames, ignore_index=True)


def with_replicates(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with a ``replicate`` column (0 for all rows where it has none)."""
    return scores if REPLICATE in scores.columns else scores.assign(**{REPLICATE: 0})


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject where adjusted < alpha keeps the
    family-wise error rate at alpha over all the given tests, for any dependence."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


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
    scores = with_replicates(scores)
    _check_scores(scores)
    is_base = scores["model"] == baseline
    if not is_base.any():
        raise ValueError(f"no scores for the baseline model {baseline!r}")
    others = scores.loc[~is_base, ["model", REPLICATE, *BLOCK, *PAIR, "score"]]
    base_replicates = sorted(scores.loc[is_base, REPLICATE].unique())
    on = [*BLOCK, *PAIR]
    if len(base_replicates) > 1:
        # A baseline trained several times (a method in the head-to-head matrix): replicate r
        # of a model meets replicate r of the baseline (both trained with seed offset r); a
        # model trained once meets every replicate of it.
        on = [REPLICATE, *on]
        counts = others.groupby("model")[REPLICATE].nunique()
        once = others["model"].isin(counts.index[counts == 1])
        spread = pd.concat(
            [others[once].assign(**{REPLICATE: r}) for r in base_replicates], ignore_index=True
        )
        others = pd.concat([others[~once], spread], ignore_index=True)
        for model, reps in others.groupby("model")[REPLICATE].unique().items():
            if sorted(reps) != base_replicates:
                raise ValueError(
                    f"model {model!r} has replicates {sorted(reps)} and the baseline "
                    f"{baseline!r} {base_replicates}: several replicates pair only one to one"
                )
    base = scores.loc[is_base, [*on, "score"]].rename(columns={"score": "base"})
    paired = others.merge(base, on=on, how="left")
    unmatched = paired["base"].isna()
    if unmatched.any():
        first = paired[unmatched].sort_values(["model", *BLOCK, *PAIR]).iloc[0]
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
    scores = with_replicates(scores)
    _check_scores(scores)
    out = _bootstrap_groups(scores, "model", "score", n_boot, seed, ci)
    return out.rename(columns={"estimate": "mean"})


def sign_test(scores: pd.DataFrame, baseline: str = "base") -> pd.DataFrame:
    """Two-sided exact sign test of every other model against `baseline`, over prompts.

    Seeds of one prompt are not independent, so each prompt contributes one sign: that of
    its mean score difference over seeds and training replicates. Prompts with no difference
    are left out, as the sign test does. Columns: prompt_set, guidance, reward, method,
    n_better, n_worse, p_value.
    """
    paired = _paired_with_baseline(scores, baseline)
    paired["diff"] = paired["score"] - paired["base"]
    per_prompt = paired.groupby(["model", *BLOCK, "prompt_id"], sort=True)["diff"].mean()
    levels = ["model", *BLOCK]
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
        [*BLOCK, "method", "n_better", "n_worse", "p_value"]
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
            sign_test(subset, opponent), on=[*BLOCK, "method"], how="left"
        )
        frames.append(wins.assign(opponent=opponent))
    out = pd.concat(frames, ignore_index=True).rename(columns={"method": "model"})
    columns = [*BLOCK, "model", "opponent", "win_rate", "ci_low", "ci_high", "p_value"]
    return order_rows(out[columns], {"model": list(models), "opponent": list(models)})


def check_columns(frame: pd.DataFrame, source: str) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks column(s) {', '.join(missing)}")


def _check_scores(scores: pd.DataFrame) -> None:
    # Win rates and means silently go wrong on missing or double-counted scores, so refuse them.
    check_columns(scores, "scores")
    if scores["score"].isna().any():
        raise ValueError(f"scores has {int(scores['score'].isna().sum())} NaN scores")
    key = ["model", REPLICATE, *BLOCK, *PAIR]
    duplicated = scores.duplicated(key)
    if duplicated.any():
        first = scores[duplicated].iloc[0]
        raise ValueError(
            f"scores has {int(duplicated.sum())} duplicated rows, first: "
            + ", ".join(f"{c}={first[c]!r}" for c in key)
        )


def _bootstrap_groups(
    rows: pd.DataFrame, who: str, value: str, n_boot: int, seed: int, ci: float
) -> pd.DataFrame:
    """Mean of `value` per (prompt_set, guidance, reward, who) with its bootstrap CI.

    Columns: the group, estimate, ci_low, ci_high, n_prompts, n_samples, n_replicates and
    replicate_sd (the standard deviation of the replicates' own estimates; empty for one).
    """
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    keys = [*BLOCK, who, REPLICATE, "prompt_id"]
    per_prompt = rows.groupby(keys, sort=True)[value].agg(["sum", "count"])
    # One column per group; rows are (replicate, prompt id) over the union of both, with
    # 0 samples where a group lacks one.
    wide = per_prompt.unstack([REPLICATE, "prompt_id"], fill_value=0).sort_index(axis=1)
    replicates = wide["sum"].columns.get_level_values(REPLICATE).unique()
    prompts = wide["sum"].columns.get_level_values("prompt_id").unique()
    full = pd.MultiIndex.from_product([replicates, prompts], names=[REPLICATE, "prompt_id"])
    shape = (len(replicates), len(prompts), len(wide))
    sums = wide["sum"].reindex(columns=full, fill_value=0).to_numpy(dtype=float).T.reshape(shape)
    counts = wide["count"].reindex(columns=full, fill_value=0).to_numpy(dtype=float)
    counts = counts.T.reshape(shape)
    estimate, low, high = _bootstrap_ratio(sums, counts, n_boot, seed, ci)
    out = wide.index.to_frame(index=False)
    out["estimate"] = estimate
    out["ci_low"] = low
    out["ci_high"] = high
    out["n_prompts"] = (counts.sum(axis=0) > 0).sum(axis=0)
    out["n_samples"] = counts.sum(axis=(0, 1)).astype(int)
    has = counts.sum(axis=1) > 0  # (replicates, groups)
    out["n_replicates"] = has.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        each = np.where(has, sums.sum(axis=1) / counts.sum(axis=1), np.nan)
    spread = np.full(len(out), np.nan)
    several = out["n_replicates"].to_numpy() > 1
    spread[several] = np.nanstd(each[:, several], axis=0, ddof=1)
    out["replicate_sd"] = spread
    return out


def _times_drawn(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each of n units is drawn in each of n_boot resamples of n."""
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = n * np.arange(n_boot)[:, None]
    times = np.bincount((draws + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return times.astype(float)


def _bootstrap_ratio(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, ci: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (last axis), sum(sums) / sum(counts) and its percentile bootstrap.

    ``sums`` and ``counts`` have shape (replicates, prompts, groups). Each resample draws the
    group's prompts with `default_rng(seed)` and, when it has several replicates, its
    replicates with `default_rng([seed, 1])`, crossed. Groups covering the same replicates
    and prompts share one draw, so each group's interval is exactly that of resampling its
    own replicates and prompts alone; with one replicate it is the plain prompt bootstrap.
    """
    estimate = sums.sum(axis=(0, 1)) / counts.sum(axis=(0, 1))
    low = np.empty_like(estimate)
    high = np.empty_like(estimate)
    n_reps, n_prompts = counts.shape[:2]
    has_rep = (counts.sum(axis=1) > 0).T  # (groups, replicates)
    has_prompt = (counts.sum(axis=0) > 0).T  # (groups, prompts)
    coverage, which = np.unique(
        np.concatenate([has_rep, has_prompt], axis=1), axis=0, return_inverse=True
    )
    which = which.ravel()
    for k, covered in enumerate(coverage):
        cols = np.flatnonzero(which == k)
        reps, prompts = covered[:n_reps], covered[n_reps:]
        s = sums[reps][:, prompts][:, :, cols]
        c = counts[reps][:, prompts][:, :, cols]
        # How often each prompt is drawn, so the resampled sums become matrix products.
        by_prompt = _times_drawn(np.random.default_rng(seed), int(prompts.sum()), n_boot)
        if reps.sum() == 1:
            boot = (by_prompt @ s[0]) / (by_prompt @ c[0])
        else:
            by_rep = _times_drawn(np.random.default_rng([seed, 1]), int(reps.sum()), n_boot)
            # Replicates weight the prompts' sums first: (boot, prompts, groups), then prompts.
            boot = np.einsum("bp,bpg->bg", by_prompt, np.einsum("br,rpg->bpg", by_rep, s))
            boot /= np.einsum("bp,bpg->bg", by_prompt, np.einsum("br,rpg->bpg", by_rep, c))
        low[cols], high[cols] = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return estimate, low, high


def order_rows(frame: pd.DataFrame, orders: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Keep rows whose names are listed; sort by guidance, then in the listed orders."""
    keep = np.logical_and.reduce([frame[c].isin(order) for c, order in orders.items()])
    frame = frame[keep]
    rank = {c: frame[c].map({v: i for i, v in enumerate(o)}) for c, o in orders.items()}
    keys = pd.DataFrame(rank).assign(guidance=frame["guidance"])
    by = ["guidance", *orders]
    return frame.loc[keys.sort_values(by, kind="stable").index].reset_index(drop=True)
