"""Flow-matching models (SD3, FLUX) through the workflow's own trainer, cache and sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache
from dspo.families import family_class, load_family
from dspo.generation.sample import generate
from dspo.objectives import OBJECTIVES
from dspo.training.preference import make_batch, noised_inputs
from dspo.training.train import train
from tests.conftest import WORDS
from tests.families.test_families import LORA_TARGETS, TINY_FLUX, TINY_SD3
from tests.training.test_train import BASE_CONFIG

ARCHITECTURES = {"sd3": TINY_SD3, "flux": TINY_FLUX}
LORA = {"rank": 4, "alpha": 4, "target_modules": LORA_TARGETS}


def _model(root: Path, name: str) -> Path:
    path = root / f"tiny-{name}"
    family_class(name).build(ARCHITECTURES[name], WORDS, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory, tiny_pairs: pd.DataFrame) -> dict[str, tuple[Path, Path]]:
    """Per family: a tiny model folder and a cache of the tiny pairs built from it."""
    root = tmp_path_factory.mktemp("flow")
    rejected = [c.split()[-1] for c in tiny_pairs["caption"]]  # degraded prompts for DDSPO
    world = {}
    for name in ARCHITECTURES:
        model = _model(root, name)
        cache = root / f"cache-{name}"
        build_cache(
            tiny_pairs, str(model), cache, resolution=16, dtype="float32", prompts_l=rejected
        )
        world[name] = (model, cache)
    return world


def _lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cache_holds_the_familys_text_tensors(family: str, flow_world, tiny_pairs) -> None:
    model, cache_dir = flow_world[family]
    cache = load_cache(cache_dir)
    assert cache.family == family
    pipe = DiffusionPipeline.from_pretrained(str(model))
    adapter = load_family(model)
    for row in (0, 7):
        text = adapter.encode_prompts(pipe, [tiny_pairs["caption"][row]])
        index = cache.text_w[row]
        torch.testing.assert_close(cache.prompt_tensors["embeddings"][index], text["embeddings"][0])
        torch.testing.assert_close(cache.prompt_tensors["pooled"][index], text["pooled"][0])
    empty = adapter.encode_prompts(pipe, [""])
    torch.testing.assert_close(cache.empty_prompt["embeddings"], empty["embeddings"])
    torch.testing.assert_close(cache.empty_prompt["pooled"], empty["pooled"])


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_an_sd3_model_with_lora(name: str, flow_world, tmp_path: Path):
    """Every objective through `train()` on a flow-matching model: the velocity target, SD3's
    timesteps, the LoRA written as the stock SD3 pipeline loads it."""
    model, cache = flow_world["sd3"]
    cfg = {
        **BASE_CONFIG,
        "objective": name,
        "steps": 2,
        "checkpoint_every": 0,
        "lora": LORA,
        "family_settings": {"noise_form": name == "dspo", "timesteps": {"shift": 3.0}},
    }
    summary = train(
        cfg, cache_dir=cache, base_model=str(model), out_dir=tmp_path / "m", run_dir=tmp_path / "r"
    )
    assert summary["family"] == "sd3"
    weights = _lora_weights(tmp_path / "m")
    assert all(torch.isfinite(v).all() for v in weights.values())
    # The up (B) matrices start at zero: a trained adapter has moved them.
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora.up" in k)
    pipe = DiffusionPipeline.from_pretrained(str(model))
    adapter = load_family(model)
    latents = torch.randn(1, *adapter.latent_shape(pipe, 16), generator=torch.Generator())

    def image() -> np.ndarray:
        return adapter.sample(pipe, ["a red circle"], latents, steps=2, guidance=2.0, resolution=16)

    before = image()
    pipe.load_lora_weights(str(tmp_path / "m"))
    assert not np.allclose(image(), before)


def test_flux_full_fine_tuning_writes_a_pipeline_that_samples(flow_world, tmp_path: Path):
    model, cache = flow_world["flux"]
    cfg = {**BASE_CONFIG, "objective": "dspo", "steps": 2, "checkpoint_every": 0}
    train(
        cfg, cache_dir=cache, base_model=str(model), out_dir=tmp_path / "m", run_dir=tmp_path / "r"
    )
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "m"))
    base = DiffusionPipeline.from_pretrained(str(model))
    changed = [
        not torch.equal(a, b)
        for a, b in zip(
            pipe.transformer.state_dict().values(),
            base.transformer.state_dict().values(),
            strict=True,
        )
    ]
    assert any(changed)
    prompts = pd.DataFrame(
        {"prompt_set": "s", "prompt_id": [0, 1], "prompt": ["a red circle", "a blue square"]}
    )
    manifest = generate(
        pipe,
        prompts,
        tmp_path / "img",
        seeds=[0],
        guidance=[2.0],
        steps=2,
        resolution=16,
        scheduler="euler",
    )
    assert len(manifest) == 2 and all((tmp_path / "img" / p).is_file() for p in manifest["path"])


def test_flow_timesteps_and_velocity_target_reach_the_batch(flow_world):
    model, cache_dir = flow_world["sd3"]
    cache = load_cache(cache_dir)
    family = load_family(model, timesteps={"weighting": "uniform", "shift": 1.0})
    batch = make_batch(cache, torch.arange(8), 0.0, torch.Generator().manual_seed(0), family)
    assert batch["t"].is_floating_point() and ((batch["t"] > 0) & (batch["t"] < 1)).all()
    inputs = noised_inputs(batch, OBJECTIVES["diffusion_dpo"], family)
    t = batch["t"].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(inputs.x[:8], (1 - t) * batch["latents_w"] + t * batch["noise"])
    torch.testing.assert_close(inputs.target[:8], batch["noise"] - batch["latents_w"])
    assert set(inputs.cond) == {"embeddings", "pooled"}


def test_unshared_noise_draws_the_rejected_images_own(flow_world):
    model, cache_dir = flow_world["sd3"]
    cache = load_cache(cache_dir)
    family = load_family(model)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    shared = make_batch(cache, torch.arange(4), 0.0, gen(), family)
    own = make_batch(cache, torch.arange(4), 0.0, gen(), family, False)
    assert torch.equal(shared["noise"], own["noise"]) and torch.equal(shared["t"], own["t"])
    assert not torch.equal(own["noise_l"], own["noise"])
    inputs = noised_inputs(own, OBJECTIVES["diffusion_kto"], family)
    assert torch.equal(inputs.t[4:], own["t_l"])
    assert np.isfinite(inputs.x.numpy()).all()
