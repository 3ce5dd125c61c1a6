"""Training replicates in the statistics: hierarchical bootstrap, spread, Holm-corrected marks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.evaluation.statistics import holm, mean_scores, sign_test, win_rates
from dspo.evaluation.tables import write_tables


def replicate_scores(shifts: list[float], n_prompts: int = 12, n_seeds: int = 2) -> pd.DataFrame:
    """One baseline and one method trained len(shifts) times, each replicate shifted."""
    rng = np.random.default_rng(3)
    prompt_id = np.repeat(np.arange(n_prompts), n_seeds)
    seed = np.tile(np.arange(n_seeds), n_prompts)
    effect = rng.normal(0, 1, n_prompts)[prompt_id]
    common = {"prompt_set": "p", "prompt_id": prompt_id, "prompt": "x", "seed": seed}
    common |= {"guidance": 2.0, "reward": "r"}
    frames = [pd.DataFrame({"model": "base", "replicate": 0, **common, "score": effect})]
    for k, shift in enumerate(shifts):
        score = effect + rng.normal(0, 1, len(prompt_id)) + shift
        frames.append(pd.DataFrame({"model": "m", "replicate": k, **common, "score": score}))
    return pd.concat(frames, ignore_index=True)


def brute_force_interval(scores: pd.DataFrame, n_boot: int, seed: int) -> tuple[float, float]:
    """The crossed replicate x prompt bootstrap written out as loops, with the same draws."""
    base = scores[scores["model"] == "base"].set_index(["prompt_id", "seed"])["score"]
    method = scores[scores["model"] == "m"].copy()
    method["win"] = 0.5 + 0.5 * np.sign(
        method["score"].to_numpy()
        - base.loc[list(zip(method.prompt_id, method.seed, strict=True))].to_numpy()
    )
    reps = sorted(method["replicate"].unique())
    prompts = sorted(method["prompt_id"].unique())
    prompt_draws = np.random.default_rng(seed).integers(0, len(prompts), (n_boot, len(prompts)))
    rep_draws = np.random.default_rng([seed, 1]).integers(0, len(reps), (n_boot, len(reps)))
    cells = method.groupby(["replicate", "prompt_id"])["win"].agg(["sum", "count"])
    boots = []
    for b in range(n_boot):
        total = count = 0.0
        for r in rep_draws[b]:
            for p in prompt_draws[b]:
                total += cells.at[(reps[r], prompts[p]), "sum"]
                count += cells.at[(reps[r], prompts[p]), "count"]
        boots.append(total / count)
    return tuple(np.quantile(boots, [0.025, 0.975]))


def test_hierarchical_bootstrap_equals_its_definition() -> None:
    scores = replicate_scores([0.0, 0.8, 1.6])
    row = win_rates(scores, n_boot=200, seed=5).iloc[0]
    low, high = brute_force_interval(scores, n_boot=200, seed=5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)


def test_replicates_widen_the_interval_and_report_their_spread() -> None:
    apart = replicate_scores([-1.0, 0.0, 1.0])
    # The same images taken as more seeds of one model: the base image repeated per seed.
    base = apart[apart["model"] == "base"]
    method = apart[apart["model"] == "m"]
    pooled = pd.concat(
        [base.assign(seed=base["seed"] + 10 * k) for k in range(3)]
        + [method.assign(replicate=0, seed=method["seed"] + 10 * method["replicate"])]
    )
    hierarchical = win_rates(apart, n_boot=500).iloc[0]
    as_one = win_rates(pooled, n_boot=500).iloc[0]
    assert hierarchical["win_rate"] == pytest.approx(as_one["win_rate"])
    width = hierarchical["ci_high"] - hierarchical["ci_low"]
    assert width > 1.3 * (as_one["ci_high"] - as_one["ci_low"])
    each = [
        win_rates(
            apart[apart["replicate"].isin([0, k])].query(f"model == 'base' or replicate == {k}"),
            n_boot=10,
        ).iloc[0]["win_rate"]
        for k in range(3)
    ]
    assert hierarchical["n_replicates"] == 3
    assert hierarchical["replicate_sd"] == pytest.approx(np.std(each, ddof=1))
    assert np.isnan(as_one["replicate_sd"]) and as_one["n_replicates"] == 1
    means = mean_scores(apart, n_boot=50).set_index("model")
    assert means.at["base", "n_replicates"] == 1 and means.at["m", "n_replicates"] == 3


def test_sign_test_uses_the_replicate_averaged_difference() -> None:
    scores = replicate_scores([0.0, 0.0])
    base = scores[scores["model"] == "base"]
    method = scores[scores["model"] == "m"].copy()
    # Replicate 0 better by 1 on every prompt, replicate 1 worse by 3: the average is worse.
    method["score"] = np.where(method["replicate"] == 0, 1.0, -3.0) + np.tile(
        base["score"].to_numpy(), 2
    )
    out = sign_test(pd.concat([base, method])).iloc[0]
    assert (out["n_better"], out["n_worse"]) == (0, 12)


def test_a_replicated_baseline_pairs_replicates_one_to_one() -> None:
    # The head-to-head matrix makes replicated methods baselines of each other.
    scores = replicate_scores([0.0, 1.0])
    as_base = scores[scores["model"] == "m"].assign(model="base")
    once = scores[scores["model"] == "base"].assign(model="once")
    twice = scores[scores["model"] == "m"].assign(model="twice", score=lambda f: f["score"] + 1)
    rows = win_rates(pd.concat([as_base, once, twice]), n_boot=10).set_index("method")
    # One replicate to one: every sample of `twice` beats its own replicate's image by 1.
    assert rows.loc["twice", "win_rate"] == 1.0 and rows.loc["twice", "n_replicates"] == 2
    # A model trained once meets every replicate of the baseline.
    assert rows.loc["once", "n_replicates"] == 2
    thrice = scores[scores["model"] == "m"].assign(replicate=lambda f: f["replicate"] + 1)
    with pytest.raises(ValueError, match="pair only one to one"):
        win_rates(pd.concat([as_base, thrice.assign(model="x")]), n_boot=10)


def test_holm_matches_hand_values() -> None:
    # Sorted 0.01, 0.02, 0.03, 0.5 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06 (monotone), 0.5.
    adjusted = holm([0.03, 0.5, 0.01, 0.02])
    assert adjusted == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_tables_mark_better_and_worse_after_correction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 30
    prompt_id = np.arange(n)
    common = {"prompt_set": "p", "prompt_id": prompt_id, "prompt": "x", "seed": 0}
    common |= {"guidance": 2.0, "reward": "r"}
    base = rng.normal(0, 1, n)
    frames = [pd.DataFrame({"model": "base", **common, "score": base})]
    # good: better on 21 of 30 prompts (sign test p = 0.043: significant alone, but third of
    # four after great and poor, so Holm multiplies it by 2); great: better on all; poor:
    # worse on all; even: better on half.
    good = base + np.where(prompt_id < 21, 1.0, -1.0)
    even = base + np.where(prompt_id % 2 == 0, 1.0, -1.0)
    models = {"good": good, "great": base + 1, "poor": base - 1, "even": even}
    for name, score in models.items():
        frames.append(pd.DataFrame({"model": name, **common, "score": score}))
    scores = pd.concat(frames, ignore_index=True)
    write_tables(scores, tmp_path, list(models), ["r"], ["p"], n_boot=100)
    table = pd.read_csv(tmp_path / "win_rates.csv").set_index("method")
    assert table.at["good", "p_value"] < 0.05 < table.at["good", "p_holm"]
    markdown = (tmp_path / "win_rates.md").read_text()
    rows = {line.split("|")[2].strip(): line for line in markdown.splitlines() if "| " in line}
    assert "▲" in rows["great"] and "▼" in rows["poor"]
    assert "▲" not in rows["good"] and "▼" not in rows["good"]
    assert "▲" not in rows["even"] and "▼" not in rows["even"]
    assert "Holm-corrected over the 4 comparisons" in markdown
