"""The attribute-binding table (mean B-VQA beside the win rate) and its command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.cli.commands import main
from dspo.evaluation.binding import binding_markdown, binding_table
from dspo.evaluation.statistics import mean_scores, win_rates


def bvqa_scores(shift: dict[str, float], replicates: dict[str, int] | None = None) -> pd.DataFrame:
    """B-VQA-like scores in [0, 1]: two prompt sets, 12 prompts x 2 seeds, one guidance."""
    rng = np.random.default_rng(0)
    frames = []
    for prompt_set in ("color", "shape"):
        base = rng.uniform(0.2, 0.7, 12)
        for model, delta in shift.items():
            for replicate in range((replicates or {}).get(model, 1)):
                for seed in (0, 1):
                    score = np.clip(base + delta + rng.normal(0, 0.05, 12), 0, 1)
                    frames.append(
                        pd.DataFrame(
                            {
                                "model": model,
                                "prompt_set": prompt_set,
                                "prompt_id": np.arange(12),
                                "prompt": [f"a red car and a blue bench {i}" for i in range(12)],
                                "seed": seed,
                                "guidance": 7.5,
                                "reward": "bvqa",
                                "score": score,
                                "replicate": replicate,
                            }
                        )  # fmt: skip
                    )
    return pd.concat(frames, ignore_index=True)


def test_table_holds_the_mean_and_win_rate_of_the_statistics_module() -> None:
    scores = bvqa_scores({"base": 0.0, "dspo": 0.1, "sft": -0.05}, replicates={"dspo": 2})
    table = binding_table(scores, ["sft", "dspo"], ["shape", "color"], n_boot=200)
    assert list(zip(table["prompt_set"], table["model"], strict=True)) == [
        (s, m) for s in ("shape", "color") for m in ("base", "sft", "dspo")
    ]
    means = mean_scores(scores, 200).set_index(["prompt_set", "model"])
    wins = win_rates(scores, "base", 200).set_index(["prompt_set", "method"])
    for _, row in table.iterrows():
        key = (row["prompt_set"], row["model"])
        assert row["mean"] == pytest.approx(means.loc[key, "mean"])
        assert row["ci_low"] == pytest.approx(means.loc[key, "ci_low"])
        if row["model"] == "base":
            assert np.isnan(row["win_rate"])
        else:
            assert row["win_rate"] == pytest.approx(wins.loc[key, "win_rate"])
            assert row["win_ci_high"] == pytest.approx(wins.loc[key, "ci_high"])
    dspo = table[(table["model"] == "dspo") & (table["prompt_set"] == "color")].iloc[0]
    assert dspo["n_replicates"] == 2 and dspo["win_rate"] > 0.9
    markdown = binding_markdown(table, {"dspo": "DSPO", "color": "Colour"}, n_boot=200)
    assert markdown.startswith("# Attribute binding (B-VQA)\n")  # no title given
    assert "Colour B-VQA" in markdown and "| DSPO |" in markdown
    assert f"{dspo['mean']:.3f} [{dspo['ci_low']:.3f}, {dspo['ci_high']:.3f}]" in markdown


def test_table_refuses_other_rewards_and_missing_sets() -> None:
    scores = bvqa_scores({"base": 0.0, "dspo": 0.1})
    with pytest.raises(ValueError, match="one reward"):
        binding_table(pd.concat([scores, scores.assign(reward="pick")]), ["dspo"], ["color"])
    with pytest.raises(ValueError, match="texture"):
        binding_table(scores, ["dspo"], ["color", "texture"])


def test_binding_table_command_writes_csv_and_markdown(tmp_path: Path) -> None:
    scores = bvqa_scores({"base": 0.0, "dspo": 0.1})
    files = []
    for model, rows in scores.groupby("model"):
        files.append(tmp_path / f"{model}.parquet")
        rows.drop(columns="replicate").to_parquet(files[-1], index=False)
    params = {
        "methods": ["dspo"], "prompt_sets": ["color", "shape"], "labels": {"dspo": "DSPO"},
        "bootstrap": {"samples": 50, "seed": 0}, "title": "Binding",
    }  # fmt: skip
    out = tmp_path / "tables" / "attribute_binding.csv"
    main(["binding-table", "--params", json.dumps(params), "--scores", *map(str, files),
          "--out", str(out)])  # fmt: skip
    table = pd.read_csv(out)
    assert len(table) == 4 and set(table["model"]) == {"base", "dspo"}
    assert out.with_suffix(".md").read_text().startswith("# Binding")
