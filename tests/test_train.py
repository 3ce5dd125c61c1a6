"""The shared training loop: every objective, outputs users can load, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import dspo.train as train_module
from dspo.data.cache import build_cache
from dspo.objectives import OBJECTIVES
from dspo.train import accumulation_steps, learning_rate_factor, train

BASE_CONFIG = {
    "steps": 4,
    "pairs_per_step": 4,
    "local_pairs": 2,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "warmup_steps": 1,
    "optimizer": "adamw",
    "adam_betas": [0.9, 0.999],
    "adam_eps": 1e-8,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "prompt_dropout": 0.25,
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "checkpoint_every": 2,
    "checkpoints_kept": 2,
    "log_every": 1,
    "report_to": None,
    "seed": 0,
    "params": {},
    "lora": None,
}


@pytest.fixture(scope="module")
def cache_dir(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    rejected = [c.split()[-1] for c in tiny_pairs["caption"]]  # degraded prompts for DDSPO
    build_cache(
        tiny_pairs, str(tiny_model), path, resolution=16, dtype="float32", prompts_l=rejected
    )
    return path


def run(cfg: dict, cache_dir: Path, base: Path, root: Path) -> dict:
    return train(
        {**BASE_CONFIG, **cfg},
        cache_dir=cache_dir,
        base_model=str(base),
        out_dir=root / "model",
        run_dir=root / "run",
    )


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet").state_dict()


def test_accumulation_follows_the_effective_batch() -> None:
    assert accumulation_steps(2048, 4, 4) == 128
    with pytest.raises(ValueError, match="2048 pairs .* 3 process"):
        accumulation_steps(2048, 4, 3)


def test_learning_rate_schedules() -> None:
    assert learning_rate_factor(0, 4, "constant") == 0.25
    assert learning_rate_factor(10, 4, "constant") == 1.0
    assert learning_rate_factor(15, 4, "inverse_sqrt") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cosine"):
        learning_rate_factor(10, 4, "cosine")


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_and_saves_a_loadable_pipeline(
    objective: str, cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    summary = run({"objective": objective, "name": objective}, cache_dir, tiny_model, tmp_path)
    assert summary["accumulation"] == 2 and summary["resumed_from"] == 0
    metrics = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    pipe = StableDiffusionPipeline.from_pretrained(
        tmp_path / "model", safety_checker=None, requires_safety_checker=False
    )
    before, after = unet_weights(tiny_model), pipe.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights did not move"
    saved = json.loads((tmp_path / "model/dspo_config.json").read_text())
    assert saved["config"]["objective"] == objective


def test_killed_job_resumes_to_the_same_weights(
    cache_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {"objective": "dspo", "params": {"lam": 0.5, "kappa": 100.0}}
    run(cfg, cache_dir, tiny_model, tmp_path / "straight")

    real_make_batch = train_module.make_batch
    calls = {"n": 0}

    def dies_in_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # 2 micro-steps per step: the 6th call belongs to step 3
            raise KeyboardInterrupt("killed")
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", dies_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, cache_dir, tiny_model, tmp_path / "killed")
    assert (tmp_path / "killed/run/checkpoints/step-000002/state.json").exists()
    assert not (tmp_path / "killed/model").exists()

    monkeypatch.setattr(train_module, "make_batch", real_make_batch)
    summary = run(cfg, cache_dir, tiny_model, tmp_path / "killed")
    assert summary["resumed_from"] == 2
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "killed/run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    straight, resumed = (
        unet_weights(tmp_path / "straight/model"),
        unet_weights(tmp_path / "killed/model"),
    )
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6)


def test_lora_output_loads_and_reference_is_the_base(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    lora = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    run({"objective": "dspo", "lora": lora, "lr": 1e-2}, cache_dir, tiny_model, tmp_path)
    assert (tmp_path / "model/pytorch_lora_weights.safetensors").exists()
    assert not (tmp_path / "model/model_index.json").exists()

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 12, 32)
    base_out = pipe.unet(x, t, text).sample
    pipe.load_lora_weights(str(tmp_path / "model"))
    assert not torch.allclose(pipe.unet(x, t, text).sample, base_out)

    # Inside the trainer the reference is the same UNet with its adapters disabled.
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=lora["target_modules"]))
    for p in unet.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    model = train_module.PreferenceModel(unet, needs_reference=True, lora=True)
    assert model.reference is None
    torch.testing.assert_close(model.ref(x, t, text), base_out)
    assert not torch.allclose(model.policy(x, t, text), base_out)
