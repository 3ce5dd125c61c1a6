"""`dspo budget`'s cost per round of AI feedback: the sd15 overlay's two rounds, and more."""

from __future__ import annotations

import pytest

from dspo.bench.budget import budget
from dspo.bench.budget_rounds import PARTS, round_costs
from dspo.cli.commands import main as dspo_main
from dspo.config.step import workflow_config
from tests.workflow_run import REPO

PRESETS = REPO / "config" / "presets"
AI_FEEDBACK = [PRESETS / "sd15.yaml", PRESETS / "sd15-ai-feedback.yaml"]
H100_40 = 989.0 * 1e12 * 0.4 * 3600  # FLOPs in one GPU-hour


def _stage_flops(result: dict, *names: str) -> float:
    return sum(r["flops"] for r in result["stages"] if r["stage"].startswith(names))


def test_the_sd15_overlay_costs_each_of_its_two_rounds() -> None:
    config = workflow_config(AI_FEEDBACK)
    whole = budget(config, "h100", 0.4)
    first, second = round_costs(config, whole["peak_tflops"], 0.4)
    # Round 1 samples the base once for both methods, round 2 each method's round 1.
    sampling = _stage_flops(whole, "AI-feedback images")
    assert first["sampling_gpu_hours"] * H100_40 == pytest.approx(sampling / 3)
    assert second["sampling_gpu_hours"] == pytest.approx(2 * first["sampling_gpu_hours"])
    assert first["items"].startswith("1 sampled, 1 cached, 2 trained")
    assert second["items"].startswith("2 sampled, 2 cached, 2 trained")
    # Each round trains both methods once and evaluates their 2 of the 5 models sampled.
    training = _stage_flops(whole, "training checkpoints")
    for row in (first, second):
        assert row["training_gpu_hours"] * H100_40 == pytest.approx(training / 2)
        evaluation = _stage_flops(whole, *PARTS["evaluation"])
        assert row["evaluation_gpu_hours"] * H100_40 == pytest.approx(evaluation * 2 / 5)
        parts = sum(row[f"{part}_gpu_hours"] for part in PARTS)
        assert row["gpu_hours"] == pytest.approx(parts)
    # The rounds and the base's evaluation make up the whole budget.
    base_evaluation = _stage_flops(whole, *PARTS["evaluation"]) / 5
    assert first["flops"] + second["flops"] + base_evaluation == pytest.approx(
        whole["total"]["flops"]
    )


def test_a_third_round_costs_as_the_second_and_other_sources_have_none() -> None:
    config = workflow_config(AI_FEEDBACK)
    config["methods"]["dspo"]["rounds"] = 3
    rows = round_costs(config, 989.0, 0.4)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[2]["items"].startswith("1 sampled, 1 cached, 1 trained")  # dspo only
    assert rows[2]["sampling_gpu_hours"] == pytest.approx(rows[1]["sampling_gpu_hours"] / 2)
    assert round_costs(workflow_config([PRESETS / "sd15.yaml"]), 989.0, 0.4) == []


def test_dspo_budget_prints_the_rounds_below_the_stages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dspo_main(["budget", "--configfile", *map(str, AI_FEEDBACK), "--gpu", "h100"])
    out = capsys.readouterr().out
    assert out.index("| **total** |") < out.index("Cost per round of AI feedback")
    assert "\n| 1 | 1 sampled, 1 cached, 2 trained and evaluated |" in out
    assert "\n| 2 | 2 sampled, 2 cached, 2 trained and evaluated |" in out
    dspo_main(["budget", "--configfile", str(PRESETS / "sd15.yaml")])
    assert "Cost per round" not in capsys.readouterr().out
