"""`dspo budget` counts the image-quality step's Inception-v3 on the presets that run it."""

from __future__ import annotations

import pytest

from dspo.bench.budget import INCEPTION_FLOPS, stages
from dspo.config.step import workflow_config
from tests.workflow_run import REPO

PRESETS = REPO / "config" / "presets"


def test_sd15_budgets_the_inception_score_of_every_generated_image() -> None:
    rows = {r["stage"]: r for r in stages(workflow_config([PRESETS / "sd15.yaml"]))}
    # 43 models (base, 10 trained, their 30 kept steps, 2 released) x (500 Pick-a-Pic
    # test_unique + 1,632 Parti + 3,200 HPSv2 benchmark prompts) x 5 seeds x 1 guidance; the
    # edits and the step choice's validation captions are not measured.
    images = 43 * (500 + 1632 + 3200) * 5
    row = rows["image quality (Inception-v3)"]
    assert row["items"] == f"{images:,} images"
    assert row["flops"] == pytest.approx(images * INCEPTION_FLOPS)
    # About 13 PFLOP: minutes next to the sampling that makes the images.
    assert row["flops"] < rows["evaluation images"]["flops"] / 1000


def test_the_toy_preset_has_no_inception_stage() -> None:
    names = [r["stage"] for r in stages(workflow_config([]))]
    assert "scores" in names and not any("Inception" in n for n in names)
