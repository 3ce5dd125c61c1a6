"""`dspo disk`: each stage's files in a run's folder, under the budget's stage names."""

from __future__ import annotations

from pathlib import Path

from dspo.bench.budget import stages
from dspo.bench.disk import measure
from dspo.config.step import workflow_config
from tests.workflow_run import REPO

PRESETS = REPO / "config" / "presets"


def _write(root: Path, relative: str, size: int) -> None:
    file = root / relative
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"x" * size)


def test_binding_and_ai_feedback_files_are_their_own_stages(tmp_path: Path) -> None:
    config = workflow_config([PRESETS / "sd15.yaml", PRESETS / "sd15-ai-feedback.yaml"])
    for model in ("base", "dspo@round2"):
        _write(tmp_path, f"results/images/{model}/pickv2/0.png", 100)
        _write(tmp_path, f"results/images/{model}/hpsv2/0.png", 10)
        _write(tmp_path, f"results/images/{model}/color/0.png", 7)
        _write(tmp_path, f"results/images/{model}/texture/0.png", 3)
        _write(tmp_path, f"results/scores_binding/{model}/color.parquet", 5)
    _write(tmp_path, "results/scores/base/pickv2.parquet", 4)
    _write(tmp_path, "results/data/generated/base/images/part0/0.png", 20)
    _write(tmp_path, "results/data/generated/dspo/labels/part0.parquet", 2)
    measured = {row["stage"]: row["bytes"] for row in measure(config, tmp_path)}
    assert measured["evaluation images"] == 2 * 110
    assert measured["attribute-binding images"] == 2 * 10
    assert measured["B-VQA scores"] == 2 * 5 and measured["scores"] == 4
    assert measured["AI-feedback images (generated pair source)"] == 22
    # Every measured stage is one the budget prices.
    assert set(measured) <= {row["stage"] for row in stages(config)}


def test_kept_steps_are_measured_with_the_trained_models(tmp_path: Path) -> None:
    # sd15 keeps steps 500, 1000 and 1500 of each 2000-step run as models of their own, and
    # the budget counts them in "trained models".
    config = workflow_config([PRESETS / "sd15.yaml"])
    _write(tmp_path, "results/models/dspo/unet/weights.safetensors", 100)
    for step in (500, 1000, 1500):
        _write(tmp_path, f"results/models/dspo@{step}/unet/weights.safetensors", 10)
    measured = {row["stage"]: row["bytes"] for row in measure(config, tmp_path)}
    assert measured["trained models"] == 100 + 3 * 10
