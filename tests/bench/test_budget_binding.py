"""The budget's attribute-binding stages: T2I-CompBench's 3 x 300 prompts, the toy's own set."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspo.bench.budget import stages
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
