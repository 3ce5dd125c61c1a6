"""The budget's attribute-binding stages: T2I-CompBench's 3 x 300 prompts, the toy's own set."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspo.bench.budget import stages
from dspo.bench.budget_compute import BVQA_IMAGE_FLOPS, BVQA_PHRASE_FLOPS, INCEPTION_FLOPS
from dspo.config.step import workflow_config

REPO = Path(__file__).resolve().parents[2]


def _by_stage(config: dict) -> dict[str, dict]:
    return {row["stage"]: row for row in stages(config, REPO)}


def test_sd15_budgets_sampling_and_scoring_the_compbench_sets() -> None:
    rows = _by_stage(workflow_config([REPO / "config/presets/sd15.yaml"]))
    evaluation, binding = rows["evaluation images"], rows["attribute-binding images"]
    # 43 sampled models (13 and the 30 kept steps) x (3 x 300 prompts) x 5 seeds x 1 guidance.
    assert binding["items"].endswith("= 193,500")
    per_image = evaluation["flops"] / int(evaluation["items"].rsplit("= ", 1)[1].replace(",", ""))
    assert binding["flops"] == pytest.approx(per_image * 193_500) and binding["flops"] > 0
    assert rows["B-VQA scores"]["items"] == "193,500 images"


def test_toy_binding_set_counts_its_own_size() -> None:
    config = workflow_config([])
    config["world"]["binding_prompts"] = 10
    items = _by_stage(config)["attribute-binding images"]["items"]
    sampled = items.split(" models")[0]
    assert f"{sampled} models x 10 prompts" in items
    config["evaluation"]["attribute_binding"] = None
    assert "attribute-binding images" not in _by_stage(config)


def test_sdxl_budgets_blip_vqa_and_the_inception_score() -> None:
    presets = [REPO / f"config/presets/{name}.yaml" for name in ("sd15", "sdxl")]
    rows = _by_stage(workflow_config(presets))
    # 32 sampled models (the base, the released SDXL Diffusion-DPO, 10 runs and their kept
    # steps 600 and 700) x 900 prompts x 5 seeds, each scored by BLIP VQA: the vision encoder
    # once and two questions (T2I-CompBench's two phrases).
    bvqa = rows["B-VQA scores"]
    assert bvqa["items"] == "144,000 images"
    assert bvqa["flops"] == pytest.approx(144_000 * (BVQA_IMAGE_FLOPS + 2 * BVQA_PHRASE_FLOPS))
    # The Inception Score of every test set's image: 32 x (500 + 1,632 + 3,200) x 5.
    quality = rows["image quality (Inception-v3)"]
    assert quality["items"] == "853,120 images"
    assert quality["flops"] == pytest.approx(853_120 * INCEPTION_FLOPS)
    # Both are minutes next to sampling the images they score.
    assert bvqa["flops"] < rows["attribute-binding images"]["flops"] / 100


def test_the_toy_vqa_costs_no_gpu_time() -> None:
    rows = _by_stage(workflow_config([]))
    assert rows["B-VQA scores"]["flops"] == 0
