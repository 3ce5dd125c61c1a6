"""Model families behind one interface, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionPipeline,
)

from dspo.families import (
    REGISTRY,
    detect_family,
    family_class,
    family_of_denoiser,
    load_family,
)
from dspo.families.sd import SDFamily
from dspo.models import load_pipeline

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Family settings of the tiny models: their T5 length.
SETTINGS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def models(tiny_model, tiny_sdxl_model) -> dict[str, Path]:
    return {"sd": tiny_model, "sdxl": tiny_sdxl_model}


# ------------------------------------------------------------------ families on tiny models


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_registry_detects_family_from_folder_and_denoiser(name: str, models) -> None:
    assert detect_family(models[name]) == name
    family = load_family(models[name], **SETTINGS.get(name, {}))
    assert isinstance(family, family_class(name)) and family.name == name
    assert family_of_denoiser(family.load_denoiser(models[name])) == name


def test_detection_falls_back_to_the_denoiser(tiny_sdxl_model: Path, tmp_path: Path) -> None:
    index = json.loads((tiny_sdxl_model / "model_index.json").read_text())
    index["_class_name"] = "SomeCustomPipeline"
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/config.json").write_text((tiny_sdxl_model / "unet/config.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert detect_family(tmp_path) == "sdxl"
    index["unet"] = ["diffusers", "SomethingElse"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="SomeCustomPipeline"):
        detect_family(tmp_path)
    with pytest.raises(KeyError, match="valid names"):
        family_class("kandinsky")


def test_registry_names_match_their_classes() -> None:
    assert set(REGISTRY) == {"sd", "sdxl"}
    for name in REGISTRY:
        assert family_class(name).name == name


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_encode_noise_target_and_prediction_round_trip(name: str, models) -> None:
    path = models[name]
    family = load_family(path, **SETTINGS.get(name, {}))
    pipe = load_pipeline(path)
    prompts = ["a red circle", "blue square on white", ""]
    text = family.encode_prompts(pipe, prompts)
    assert tuple(text) == family.text_keys
    assert all(len(v) == len(prompts) for v in text.values())

    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(pipe, pixels)
    assert tuple(latents.shape[1:]) == family.latent_shape(pipe, 16)
    raw = pipe.vae.encode(pixels).latent_dist.mean
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    torch.testing.assert_close(latents / pipe.vae.config.scaling_factor + shift, raw)

    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=gen)
    t = family.sample_timesteps(2, gen, latents.shape[1:])
    x_t = family.add_noise(latents, noise, t)
    target = family.target(latents, noise, t)
    # The exact target, converted, is the noise that was added.
    torch.testing.assert_close(family.to_noise(target, x_t, t), noise, rtol=1e-4, atol=1e-5)
    cond = {k: v[:2] for k, v in text.items()}
    cond.update(family.image_conditions([[16, 16], [20, 16]], [[0, 0], [2, 0]], 16))
    denoiser = getattr(pipe, family.denoiser)
    with torch.no_grad():
        pred = family.predict(denoiser, x_t, t, cond)
        other = family.predict(denoiser, x_t, t, {k: v.flip(0) for k, v in cond.items()})
    assert pred.shape == target.shape and torch.isfinite(pred).all()
    assert not torch.allclose(pred, other)  # the prediction depends on the conditions


def test_v_prediction_converts_back_to_noise(tiny_model: Path) -> None:
    config = {**SDFamily.from_pretrained(tiny_model).scheduler_config}
    family = SDFamily({**config, "prediction_type": "v_prediction"}, noise_form=True)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = family.sample_timesteps(3, gen, (4, 8, 8))
    x_t = family.add_noise(latents, noise, t)
    v = family.target(latents, noise, t)
    torch.testing.assert_close(family.to_noise(v, x_t, t), noise, rtol=1e-4, atol=1e-5)
    v_hat = v + torch.randn(v.shape, generator=gen)
    scale = family.noise_scale(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(family.to_noise(v_hat, x_t, t) - noise, scale * (v_hat - v))


def _perturb_lora(denoiser) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, param in denoiser.named_parameters():
            if "lora_B" in key:  # zero at initialisation: the adapter would change nothing
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("name", ["sd"])
def test_lora_saved_by_a_family_loads_into_the_stock_pipeline(
    name: str, models, tmp_path: Path
) -> None:
    path = models[name]
    family = load_family(path, **SETTINGS.get(name, {}))
    denoiser = family.load_denoiser(path)
    family.add_lora(denoiser, rank=4, alpha=4, targets=LORA_TARGETS)
    _perturb_lora(denoiser)
    pipe = load_pipeline(path)
    text = family.encode_prompts(pipe, ["a red circle"])
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(1, *family.latent_shape(pipe, 16), generator=gen)
    t = family.sample_timesteps(1, gen, x_t.shape[1:])
    with torch.no_grad():
        trained = family.predict(denoiser, x_t, t, text)
        base = family.predict(getattr(pipe, family.denoiser), x_t, t, text)
    assert not torch.allclose(trained, base, atol=1e-4)

    family.save_denoiser(denoiser, str(path), tmp_path / "lora", lora=True)
    assert (tmp_path / "lora/pytorch_lora_weights.safetensors").exists()
    pipe.load_lora_weights(str(tmp_path / "lora"))
    with torch.no_grad():
        loaded = family.predict(getattr(pipe, family.denoiser), x_t, t, text)
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sd"])
def test_family_samples_and_edits_through_the_stock_pipeline(name: str, models) -> None:
    family = load_family(models[name], **SETTINGS.get(name, {}))
    pipe = load_pipeline(models[name])
    family.sampling_scheduler(pipe, "ddim" if name == "sd" else "euler")
    shape = family.latent_shape(pipe, 16)
    latents = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    kwargs = {"steps": 2, "guidance": 2.0, "resolution": 16}
    images = family.sample(pipe, prompts, latents, **kwargs)
    again = family.sample(pipe, prompts, latents, **kwargs)
    assert images.shape == (2, 16, 16, 3) and np.array_equal(images, again)
    assert images.min() >= 0.0 and images.max() <= 1.0
    sources = [(images[0] * 255).astype(np.uint8)] * 2
    from PIL import Image

    edited = family.edit(
        pipe,
        prompts,
        [Image.fromarray(s) for s in sources],
        strength=0.6,
        steps=3,
        guidance=2.0,
        resolution=16,
        generators=[torch.Generator().manual_seed(i) for i in range(2)],
    )
    assert edited.shape == (2, 16, 16, 3)


def test_sd_family_reads_stock_sd_folders(tiny_model: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    family = load_family(tiny_model)
    assert family.native_resolution(pipe) == 16
