"""`dspo tables` with image-quality tables: the image_quality and DDSPO tables beside the
others, whose files do not change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.cli.commands import main
from dspo.evaluation.quality_tables import read_binding

METHODS = ["dspo", "ddspo", "sft", "diffusion_dpo"]
REWARDS = ["pick", "bvqa"]


def _scores(folder: Path) -> list[str]:
    """Score tables as `dspo score` writes them: 6 prompts x 2 seeds per model and reward."""
    rng = np.random.default_rng(0)
    paths = []
    for shift, model in enumerate(["base", *METHODS]):
        rows = [
            {
                "model": model,
                "prompt_set": "pickv2",
                "prompt_id": p,
                "prompt": f"prompt {p}",
                "seed": s,
                "guidance": 7.5,
                "reward": reward,
                "score": p + 0.1 * shift + rng.normal(0, 0.5),
            }
            for reward in REWARDS
            for p in range(6)
            for s in range(2)
        ]
        paths.append(str(folder / f"{model}.parquet"))
        pd.DataFrame(rows).to_parquet(paths[-1])
    return paths


def _quality(folder: Path, with_fid: bool) -> list[str]:
    """`dspo quality` tables: IS (and FID) per model; dspo has two replicates."""
    paths = []
    for i, model in enumerate(["base", "dspo-r0", "dspo-r1", "ddspo", "sft", "diffusion_dpo"]):
        rows = [("inception_score", 10.0 + i, 0.5)] + [("fid", 30.0 - i, np.nan)] * with_fid
        frame = pd.DataFrame(
            [
                {
                    "model": model,
                    "prompt_set": "pickv2",
                    "guidance": 7.5,
                    "metric": metric,
                    "value": value,
                    "sd": sd,
                    "n_images": 12,
                    "classifier": "toy object classifier",
                }
                for metric, value, sd in rows
            ]
        )
        paths.append(str(folder / f"{model}.csv"))
        frame.to_csv(paths[-1], index=False)
    return paths


def _binding(folder: Path) -> tuple[str, pd.DataFrame]:
    """An attribute-binding table as `dspo binding-table` writes it: two binding sets, every
    model but sft; dspo has two replicates. Its CSV, and the frame written."""
    rows = []
    for k, prompt_set in enumerate(["shape", "color"]):
        for i, model in enumerate(["base", "dspo", "ddspo", "diffusion_dpo"]):
            mean = 0.3 + 0.1 * i + 0.05 * k
            rows.append(
                {
                    "prompt_set": prompt_set,
                    "guidance": 7.5,
                    "model": model,
                    "mean": mean,
                    "ci_low": mean - 0.02 - 0.01 * i,
                    "ci_high": mean + 0.03,
                    "win_rate": np.nan,
                    "win_ci_low": np.nan,
                    "win_ci_high": np.nan,
                    "n_prompts": 6,
                    "n_samples": 12,
                    "n_replicates": 2 if model == "dspo" else 1,
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "attribute_binding.csv", index=False)
    return str(folder / "attribute_binding.csv"), frame


def _tables(
    tmp_path: Path, scores: list[str], quality: list[str], out: str, binding: str | None = None
) -> Path:
    params = {
        "methods": METHODS,
        "rewards": REWARDS,
        "prompt_sets": ["pickv2"],
        "labels": {"base": "Base", "ddspo": "DDSPO", "bvqa": "B-VQA", "color": "Colour"},
        "bootstrap": {"samples": 100, "seed": 0},
        "groups": {"dspo-r0": ["dspo", 0], "dspo-r1": ["dspo", 1]},
    }
    argv = ["tables", "--params", json.dumps(params), "--scores", *scores]
    argv += ["--out", str(tmp_path / out)] + (["--quality", *quality] if quality else [])
    argv += ["--binding", binding] if binding else []
    main(argv)
    return tmp_path / out


def test_ddspo_and_image_quality_tables(tmp_path: Path) -> None:
    scores = _scores(tmp_path)
    plain = _tables(tmp_path, scores, [], "plain")
    with_quality = _tables(tmp_path, scores, _quality(tmp_path, with_fid=True), "quality")
    # The other tables are the same files with or without image quality.
    for table in ("win_rates", "mean_scores", "head_to_head"):
        for ext in ("csv", "md"):
            name = f"{table}.{ext}"
            assert (plain / name).read_text() == (with_quality / name).read_text()
    assert not (plain / "image_quality.csv").exists()

    ddspo = pd.read_csv(with_quality / "ddspo.csv")
    # DDSPO's layout: base, Diffusion-DPO, DDSPO, then the other methods in config order.
    assert ddspo["model"].tolist() == ["base", "diffusion_dpo", "ddspo", "dspo", "sft"]
    wins = pd.read_csv(with_quality / "win_rates.csv").set_index(["method", "reward"])
    means = pd.read_csv(with_quality / "mean_scores.csv").set_index(["model", "reward"])
    row = ddspo.set_index("model").loc["ddspo"]
    for reward in REWARDS:
        assert row[f"{reward}_win_rate"] == wins.loc[("ddspo", reward), "win_rate"]
        assert row[f"{reward}_mean"] == means.loc[("ddspo", reward), "mean"]
    assert np.isnan(ddspo.set_index("model").loc["base", "pick_win_rate"])
    # IS and FID beside them; dspo's two replicates averaged.
    assert row["inception_score"] == 13.0 and row["fid"] == 27.0
    assert ddspo.set_index("model").loc["dspo", "inception_score"] == 11.5

    quality = pd.read_csv(with_quality / "image_quality.csv").set_index("model")
    assert quality.loc["dspo", "n_replicates"] == 2 and quality.loc["base", "fid"] == 30.0
    markdown = (with_quality / "ddspo.md").read_text()
    assert "| Model | Pick | B-VQA | IS | FID |" in markdown.replace("pick", "Pick")
    assert "| DDSPO | " in markdown and "13.00 ± 0.50 | 27.00 |" in markdown
    assert "toy object classifier" in (with_quality / "image_quality.md").read_text()


def test_ddspo_table_without_quality_or_fid(tmp_path: Path) -> None:
    scores = _scores(tmp_path)
    plain = pd.read_csv(_tables(tmp_path, scores, [], "plain") / "ddspo.csv")
    assert "inception_score" not in plain.columns and "pick_mean" in plain.columns
    out = _tables(tmp_path, scores, _quality(tmp_path, with_fid=False), "no_fid")
    assert "FID" not in (out / "ddspo.md").read_text()
    assert pd.read_csv(out / "ddspo.csv")["fid"].isna().all()
    # Without the attribute-binding table, the table says its B-VQA columns are absent.
    assert not any(c.endswith("_bvqa") for c in plain.columns)
    assert "B-VQA: absent" in (out / "ddspo.md").read_text()


def test_ddspo_table_shows_the_attribute_binding_tables_bvqa(tmp_path: Path) -> None:
    scores = _scores(tmp_path)
    path, binding = _binding(tmp_path)
    quality = _quality(tmp_path, with_fid=False)
    out = _tables(tmp_path, scores, quality, "binding", binding=path)
    ddspo = pd.read_csv(out / "ddspo.csv").set_index("model")
    # Per binding set, in the binding table's order, its mean and interval as they are.
    assert [c for c in ddspo.columns if "_bvqa" in c] == [
        f"{s}_bvqa{suffix}" for s in ("shape", "color") for suffix in ("", "_ci_low", "_ci_high")
    ]
    for row in binding.itertuples():
        shown = ddspo.loc[row.model]
        assert shown[f"{row.prompt_set}_bvqa"] == pytest.approx(row.mean)
        assert shown[f"{row.prompt_set}_bvqa_ci_low"] == pytest.approx(row.ci_low)
        assert shown[f"{row.prompt_set}_bvqa_ci_high"] == pytest.approx(row.ci_high)
    assert np.isnan(ddspo.loc["sft", "color_bvqa"])  # not in the binding table
    # The other columns are those of the table without it.
    plain = pd.read_csv(_tables(tmp_path, scores, quality, "plain") / "ddspo.csv")
    pd.testing.assert_frame_equal(plain, ddspo.reset_index()[plain.columns])

    markdown = (out / "ddspo.md").read_text()
    assert "| Model | pick | B-VQA | shape B-VQA | Colour B-VQA | IS |" in markdown
    # DDSPO's row: colour B-VQA 0.3 + 0.1 * 2 + 0.05, interval [-0.04, +0.03].
    assert "| 0.500 [0.460, 0.530] | 0.550 [0.510, 0.580] | 13.00 ± 0.50 |" in markdown
    sft = next(line for line in markdown.splitlines() if line.startswith("| sft |"))
    assert "| – | – | 14.00 ± 0.50 |" in sft
    assert "B-VQA intervals: 95 % percentile bootstrap over the training replicates (2 per " in (
        markdown
    )
    assert "100 resamples" in markdown and "B-VQA: absent" not in markdown


def test_ddspo_table_refuses_a_file_that_is_no_binding_table(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    pd.DataFrame({"model": ["base"], "score": [0.5]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="scores.csv: not an attribute-binding table.*ci_low"):
        read_binding(str(path))
