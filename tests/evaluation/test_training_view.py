"""What a training run shows while it runs and keeps: metrics, validation images, tracker
event files, the training-view figure, and checkpoints without the frozen reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dspo.evaluation.training_view import plot_training_view, shown_steps
from dspo.training.tracking import flat_config
from tests.training.test_train import DSPO, interrupted, run, unet_weights

VALIDATION = {
    "validate_every": 2,
    "validation": {
        "prompts": ["a red circle on white background", "a blue square on black background"],
        "seeds": [0, 1],
        "steps": 2,
        "guidance": 3.0,
    },
}
LORA = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
SCALARS = {"loss", "implicit_acc", "reward_margin", "grad_norm", "lr"}


@pytest.fixture(scope="module")
def plain(cache_dir: Path, tiny_model: Path, tmp_path_factory) -> Path:
    """DSPO without validation or tracker: the yardstick."""
    root = tmp_path_factory.mktemp("plain")
    run(DSPO, cache_dir, tiny_model, root)
    return root


@pytest.fixture(scope="module")
def viewed(cache_dir: Path, tiny_model: Path, tmp_path_factory) -> Path:
    """The same run with validation images and TensorBoard."""
    root = tmp_path_factory.mktemp("viewed")
    cfg = {**DSPO, **VALIDATION, "report_to": "tensorboard", "tracker_project": "dspo-test"}
    run(cfg, cache_dir, tiny_model, root)
    return root


def test_validation_does_not_change_training(plain: Path, viewed: Path) -> None:
    first, second = unet_weights(plain / "model"), unet_weights(viewed / "model")
    for key in first:
        assert torch.equal(first[key], second[key]), key
    losses = [
        [json.loads(x)["loss"] for x in (root / "run/metrics.jsonl").read_text().splitlines()]
        for root in (plain, viewed)
    ]
    assert losses[0] == losses[1]


def test_every_record_holds_the_shared_metric_names(viewed: Path) -> None:
    records = [json.loads(x) for x in (viewed / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert set(record) >= SCALARS and {"sigmoid_mean", "ref_gap"} <= set(record)
        assert 0 <= record["implicit_acc"] <= 1 and record["grad_norm"] > 0


def test_validation_strips_and_index(viewed: Path) -> None:
    folder = viewed / "run/validation"
    index = json.loads((folder / "index.json").read_text())
    assert [e["step"] for e in index["images"]] == [2, 4]
    assert [(c["prompt_id"], c["seed"]) for c in index["columns"]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    strips = [np.asarray(Image.open(folder / f"step_00000{s}.png")) for s in (2, 4)]
    assert all(strip.shape == (16, 4 * 16, 3) for strip in strips)
    # Two steps of training changed what the policy draws from the same noise.
    assert not np.array_equal(strips[0], strips[1])
    assert sorted(p.name for p in folder.glob("*.png")) == ["step_000002.png", "step_000004.png"]


def test_tensorboard_holds_curves_images_and_hyper_parameters(viewed: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = viewed / "run/dspo-test"
    events = EventAccumulator(str(logdir), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) >= SCALARS
    assert [e.step for e in events.Scalars("implicit_acc")] == [1, 2, 3, 4]
    assert tags["images"] == ["validation"]
    assert [e.step for e in events.Images("validation")] == [2, 4]
    hparams = next(logdir.glob("*/hparams.yml")).read_text()
    assert "params/lam: 0.5" in hparams and "objective: dspo" in hparams


def test_flat_config_keeps_every_key_as_a_scalar() -> None:
    cfg = {"lr": 1e-3, "params": {"lam": 0.5}, "lora": None, "betas": [0.9, 0.99], "ok": True}
    assert flat_config(cfg) == {
        "lr": 1e-3,
        "params/lam": 0.5,
        "lora": "null",
        "betas": "[0.9, 0.99]",
        "ok": True,
    }


def test_training_view_draws_the_curves_and_images(viewed: Path, tmp_path: Path) -> None:
    out = tmp_path / "view.png"
    shown = plot_training_view(viewed / "run", out, "DSPO")
    assert shown["curves"] == ["loss", "implicit_acc", "reward_margin", "grad_norm", "lr"]
    assert shown["validation_steps"] == [2, 4]
    width, height = Image.open(out).size
    assert width > 1000 and height > 600


def test_training_view_of_a_run_without_images(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [{"step": s, "loss": 1.0 / s, "grad_norm": 0.5, "lr": 1e-5} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shown = plot_training_view(run_dir, tmp_path / "view.png", "SFT")
    assert shown["curves"] == ["loss", "grad_norm", "lr"] and shown["validation_steps"] == []


def test_many_validations_are_thinned_to_the_first_and_last() -> None:
    steps = list(range(10, 310, 10))
    picked = shown_steps(steps, limit=8)
    assert len(picked) == 8 and picked[0] == 10 and picked[-1] == 300


def test_full_finetuning_checkpoint_holds_no_reference(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run({**DSPO, "keep_checkpoints": True}, cache_dir, tiny_model, tmp_path)
    folder = tmp_path / "run/checkpoints/step-000002"
    saved = load_file(folder / "model.safetensors")
    assert not any(key.startswith("reference") for key in saved)
    policy = unet_weights(tiny_model)
    assert set(saved) == {f"denoiser.{key}" for key in policy}
    # The weights file holds the policy once (it held a second, frozen copy before).
    policy_bytes = sum(t.numel() * t.element_size() for t in policy.values())
    assert (folder / "model.safetensors").stat().st_size < 1.05 * policy_bytes


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_resume_rebuilds_the_reference_and_keeps_earlier_images(
    lora: dict | None,
    cache_dir: Path,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = {**DSPO, **VALIDATION, "validate_every": 1, "lora": lora}
    run(cfg, cache_dir, tiny_model, tmp_path / "straight")

    interrupted(cfg, cache_dir, tiny_model, tmp_path / "killed", monkeypatch, step=3)
    folder = tmp_path / "killed/run/validation"
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    assert sorted(before) == ["step_000001.png", "step_000002.png"]
    assert run(cfg, cache_dir, tiny_model, tmp_path / "killed")["resumed_from"] == 2

    index = json.loads((folder / "index.json").read_text())
    assert [e["step"] for e in index["images"]] == [1, 2, 3, 4]
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    straight_images = tmp_path / "straight/run/validation"
    for step in (3, 4):
        name = f"step_00000{step}.png"
        assert (folder / name).read_bytes() == (straight_images / name).read_bytes()
    if lora is None:
        first = unet_weights(tmp_path / "straight/model")
        second = unet_weights(tmp_path / "killed/model")
        for key in first:
            torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6)
    else:
        first = load_file(tmp_path / "straight/model/pytorch_lora_weights.safetensors")
        second = load_file(tmp_path / "killed/model/pytorch_lora_weights.safetensors")
        assert set(first) == set(second)
        for key in first:
            torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6)
