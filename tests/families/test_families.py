"""Model families behind one interface, and the flow-matching formulas, on tiny models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
)

from dspo.families import (
    REGISTRY,
    build_pipeline,
    detect_family,
    family_class,
    family_of_denoiser,
    load_family,
)
from dspo.families.flow import (
    FlowTimesteps,
    flux_shift,
    interpolate,
    score,
    shift_sigmas,
    velocity,
    velocity_to_noise,
    velocity_to_sample,
)
from dspo.families.flux import pack, unpack
from dspo.families.sd import SDFamily, encode_text
from dspo.families.sd3 import SD3Family
from dspo.families.sd_pipeline import load_pipeline
from dspo.objectives import OBJECTIVES, objective_kwargs
from tests.conftest import TINY_ARCHITECTURE, WORDS
from tests.families.three_tensors import ThreeTensorFamily, register

TINY_VAE = {
    **TINY_ARCHITECTURE["vae"],
    # SD3 and FLUX latents are shifted before scaling; nonzero so the shift is exercised.
    "shift_factor": 0.1,
    "scaling_factor": 1.5,
}
CLIP = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 2}
TINY_SD3 = {
    "max_length": 12,
    "t5_max_length": 8,
    "text_encoder": {**CLIP, "projection_dim": 8},
    "text_encoder_2": {**CLIP, "projection_dim": 8},
    "text_encoder_3": T5,
    "vae": TINY_VAE,
    "transformer": {
        "sample_size": 8,
        "patch_size": 2,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
    },
    "scheduler": {"shift": 3.0},
}
TINY_FLUX = {
    "max_length": 12,
    "t5_max_length": 8,
    "text_encoder": CLIP,
    "text_encoder_2": T5,
    "vae": TINY_VAE,
    "transformer": {
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "axes_dims_rope": [2, 2, 4],
    },
    "scheduler": {
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Family settings of the tiny models: their T5 length.
SETTINGS = {"sd3": {"max_sequence_length": 8}, "flux": {"max_sequence_length": 8}}


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-sd3"
    SD3Family.build(TINY_SD3, WORDS, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-flux"
    family_class("flux").build(TINY_FLUX, WORDS, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tiny_model, tiny_sdxl_model, tiny_sd3, tiny_flux) -> dict[str, Path]:
    return {"sd": tiny_model, "sdxl": tiny_sdxl_model, "sd3": tiny_sd3, "flux": tiny_flux}


# ------------------------------------------------------------------ flow-matching formulas


def flow_batch(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 5, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, 4, 5, 5, generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    return x0, eps, t


def test_velocity_noise_and_sample_conversions_hold() -> None:
    x0, eps, t = flow_batch()
    x_t = interpolate(x0, eps, t)
    v = velocity(x0, eps)
    torch.testing.assert_close(velocity_to_noise(v, x_t, t), eps)
    torch.testing.assert_close(velocity_to_sample(v, x_t, t), x0)
    v_hat = v + torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
    eps_hat = velocity_to_noise(v_hat, x_t, t)
    scale = (1 - t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(eps_hat - eps, scale * (v_hat - v))
    torch.testing.assert_close(
        (eps_hat - eps).pow(2).flatten(1).mean(1),
        (1 - t) ** 2 * (v_hat - v).pow(2).flatten(1).mean(1),
    )


def test_score_of_the_flow_marginal_is_minus_noise_over_t() -> None:
    x0, eps, t = flow_batch()
    x_t = interpolate(x0, eps, t).requires_grad_(True)
    sigma = t.reshape(-1, 1, 1, 1)
    mean = (1 - sigma) * x0
    log_density = (-((x_t - mean) ** 2) / (2 * sigma**2)).sum()
    (grad,) = torch.autograd.grad(log_density, x_t)
    torch.testing.assert_close(grad, score(eps, t))


# Hyper-parameters that keep every objective away from saturation, so equality is informative.
UNSATURATED = {
    "diffusion_dpo": {"beta": 2.0},
    "diffusion_kto": {"beta": 2.0},
    "mapo": {"beta": 0.5},
    "dspo": {"lam": 0.5, "kappa": 2.0},
    "dspo_ref": {"kappa": 2.0, "tau": 0.0},
    "dspo_e": {"lam": 0.5},
    "ddspo": {"beta": 2.0},
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_noise_form_weight_makes_each_objective_its_noise_prediction_form(name: str) -> None:
    """Velocity-space tensors scaled by (1 - t) give the loss, metrics and gradient of the
    objective computed on the equivalent noise predictions."""
    objective = OBJECTIVES[name]
    family = SD3Family({"shift": 3.0}, noise_form=True)
    n_pairs = 3
    x0, eps, t = (x.float() for x in flow_batch(2 * n_pairs, seed=2))
    if objective.paired or objective.preferred_only:
        t = torch.cat([t[:n_pairs], t[:n_pairs]])  # one timestep per pair
        eps = torch.cat([eps[:n_pairs], eps[:n_pairs]])  # and one noise
    if objective.preferred_only:
        x0, eps, t = x0[:n_pairs], eps[:n_pairs], t[:n_pairs]
    x_t = interpolate(x0, eps, t)
    gen = torch.Generator().manual_seed(3)
    v_ref = velocity(x0, eps) + 0.3 * torch.randn(x0.shape, generator=gen)
    v_pred = (v_ref + 0.2 * torch.randn(x0.shape, generator=gen)).requires_grad_(True)
    v_target = v_ref.clone() if objective.reference_target else velocity(x0, eps)
    hparams = objective_kwargs(name, UNSATURATED.get(name, {}))

    loss_v, metrics_v = objective.fn(
        *family.objective_inputs(v_pred, v_ref, v_target, t), **hparams
    )
    (grad_v,) = torch.autograd.grad(loss_v, v_pred)
    noise = [family.to_noise(x, x_t, t) for x in (v_pred, v_ref, v_target)]
    loss_e, metrics_e = objective.fn(*noise, **hparams)
    (grad_e,) = torch.autograd.grad(loss_e, v_pred)

    torch.testing.assert_close(loss_v, loss_e, rtol=1e-5, atol=1e-6)
    assert metrics_v.keys() == metrics_e.keys()
    for key in metrics_v:
        torch.testing.assert_close(metrics_v[key], metrics_e[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_v, grad_e, rtol=1e-4, atol=1e-7)
    assert grad_v.abs().sum() > 0
    # Without the weight the velocity-space errors are other numbers.
    family.noise_form = False
    _, plain = objective.fn(*family.objective_inputs(v_pred, v_ref, v_target, t), **hparams)
    assert any(not torch.isclose(plain[k], metrics_e[k], rtol=1e-3) for k in plain)


def test_logit_normal_timesteps_follow_mean_std_and_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = FlowTimesteps(logit_mean=0.5, logit_std=0.8).draw(200_000, gen)
    logits = torch.logit(draws.double())
    assert abs(logits.mean().item() - 0.5) < 0.01 and abs(logits.std().item() - 0.8) < 0.01
    # The shift is monotone, so it moves quantiles: the median goes to shift(sigmoid(mean)).
    family = SD3Family({"shift": 3.0}, timesteps={"logit_mean": 0.0, "logit_std": 1.0})
    t = family.sample_timesteps(200_000, torch.Generator().manual_seed(1), (4, 8, 8))
    expected = shift_sigmas(torch.tensor(0.5), 3.0).item()
    assert abs(t.median().item() - expected) < 0.005
    assert t.min() > 0.0 and t.max() < 1.0
    override = SD3Family({"shift": 3.0}, timesteps={"shift": 1.0})
    t1 = override.sample_timesteps(200_000, torch.Generator().manual_seed(1), (4, 8, 8))
    assert abs(t1.median().item() - 0.5) < 0.005


def test_mode_and_uniform_timesteps_stay_in_range() -> None:
    for weighting in ("mode", "uniform"):
        t = FlowTimesteps(weighting=weighting).draw(10_000, torch.Generator().manual_seed(0))
        assert t.min() >= 0.0 and t.max() <= 1.0 and t.std() > 0.1
    with pytest.raises(ValueError, match="weighting"):
        FlowTimesteps(weighting="cosine")
    with pytest.raises(ValueError, match="unknown timesteps key"):
        FlowTimesteps.from_params({"mean": 0.0})


def test_flux_shift_depends_on_image_tokens() -> None:
    config = TINY_FLUX["scheduler"]
    assert math.isclose(flux_shift(256, config), math.exp(0.5))
    assert math.isclose(flux_shift(4096, config), math.exp(1.15))
    family = family_class("flux")(config)
    assert math.isclose(family.shift((16, 128, 128)), math.exp(1.15))  # 64 x 64 tokens


# ------------------------------------------------------------------ families on tiny models


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_registry_detects_family_from_folder_and_denoiser(name: str, models) -> None:
    assert detect_family(models[name]) == name
    family = load_family(models[name], **SETTINGS.get(name, {}))
    assert isinstance(family, family_class(name)) and family.name == name
    denoiser = family.load_denoiser(models[name])
    assert family_of_denoiser(denoiser) == name
    pipe = load_pipeline(models[name])
    assert family.latent_channels(denoiser) == family.latent_shape(pipe, 16)[0]
    with pytest.raises(ValueError, match=f"model family '{name}' has no setting"):
        family_class(name).from_pretrained(models[name], cfg_scale=2.0)


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
    (tmp_path / "model_index.json").unlink()
    with pytest.raises(ValueError, match="model_index.json does not exist"):
        detect_family(tmp_path)


def test_registry_names_match_their_classes() -> None:
    assert set(REGISTRY) == {"sd", "sdxl", "sd3", "flux"}
    for name in REGISTRY:
        assert family_class(name).name == name


@pytest.mark.parametrize(
    "text_keys",
    [("pooled",), ("embeddings", "pooled", "pooled"), ("embeddings", "empty_t5")]
    + [("embeddings", "text"), ("embeddings", "time_ids"), ("embeddings", "noise")],
)
def test_prompt_tensor_names_that_would_clash_are_refused(
    text_keys: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The names become keys of the cache's text file and of the batch (with the family's image
    # conditions, here SDXL's time ids): a clash fails when the family is first named.
    register(monkeypatch)
    assert family_class("three").text_keys == ("embeddings", "pooled", "t5")
    monkeypatch.setattr(ThreeTensorFamily, "text_keys", text_keys)
    monkeypatch.setattr(ThreeTensorFamily, "image_keys", ("time_ids",))
    with pytest.raises(ValueError, match=r"model family 'three': text_keys \("):
        family_class("three")


def test_any_registered_family_builds_through_the_one_entry_point() -> None:
    # build_pipeline asks the family named by the architecture; it keeps no family list.
    pipe = build_pipeline({**TINY_FLUX, "family": "flux"}, WORDS, seed=0)
    assert isinstance(pipe, family_class("flux").pipeline_class)
    with pytest.raises(KeyError, match="unknown model family 'sd4'"):
        build_pipeline({**TINY_FLUX, "family": "sd4"}, WORDS)


def test_toy_pretraining_trains_the_text_encoder_of_the_sd_families_only() -> None:
    # SD's one CLIP learns with the UNet; the flow families keep their encoders as built.
    trains = {name: family_class(name).pretrain_trains_text for name in REGISTRY}
    assert trains == {"sd": True, "sdxl": True, "sd3": False, "flux": False}


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
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


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_sd_families_make_the_calls_the_workflow_makes_today(name: str, models) -> None:
    """The SD adapters reproduce the trainer's and cache's tensors bit for bit, so moving
    those modules onto the interface cannot change a table."""
    path = models[name]
    family = load_family(path)
    pipe = load_pipeline(path)
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    prompts = ["a red circle", "blue square on white"]
    hidden, pooled = encode_text(pipe, prompts)
    text = family.encode_prompts(pipe, prompts)
    assert torch.equal(text["embeddings"], hidden)
    assert pooled is None if name == "sd" else torch.equal(text["pooled"], pooled)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scaling = float(pipe.vae.config.scaling_factor)
    latents = family.encode_images(pipe, pixels)
    with torch.no_grad():
        assert torch.equal(latents, pipe.vae.encode(pixels).latent_dist.mean * scaling)

    t = family.sample_timesteps(2, torch.Generator().manual_seed(4), latents.shape[1:])
    expected_t = torch.randint(1000, (2,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(t, expected_t)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    x_t = family.add_noise(latents, noise, t)
    assert torch.equal(x_t, scheduler.add_noise(latents, noise, t))
    assert torch.equal(family.target(latents, noise, t), noise)
    cond = dict(text)
    added = None
    if name == "sdxl":
        cond.update(family.image_conditions([[16, 16], [20, 16]], [[0, 0], [2, 0]], 16))
        added = {"text_embeds": text["pooled"], "time_ids": cond["time_ids"]}
        time_ids = torch.tensor([[16, 16, 0, 0, 16, 16], [20, 16, 2, 0, 16, 16]]).float()
        assert torch.equal(cond["time_ids"], time_ids)
    with torch.no_grad():
        pred = family.predict(pipe.unet, x_t, t, cond)
        assert torch.equal(pred, pipe.unet(x_t, t, hidden, added_cond_kwargs=added).sample)


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


def test_flux_packing_matches_the_pipeline() -> None:
    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    packed = pack(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    torch.testing.assert_close(unpack(packed, 6, 8), latents)


def _perturb_lora(denoiser) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, param in denoiser.named_parameters():
            if "lora_B" in key:  # zero at initialisation: the adapter would change nothing
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("name", ["sd", "sd3", "flux"])
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
    pipe.fuse_lora()  # as the sampler loads a LoRA model
    with torch.no_grad():
        fused = family.predict(getattr(pipe, family.denoiser), x_t, t, text)
    torch.testing.assert_close(fused, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_family_trains_a_paired_objective_with_lora(name: str, models) -> None:
    """The interface is all a training step needs: noise, predict policy and reference
    (adapters off), weight, objective, backward. A fixed batch's DSPO loss must fall."""
    path = models[name]
    family = load_family(path, noise_form=True, **SETTINGS[name])
    pipe = load_pipeline(path)
    denoiser = family.load_denoiser(path)
    family.add_lora(denoiser, rank=4, alpha=4, targets=LORA_TARGETS)
    text = family.encode_prompts(pipe, ["a red circle", "a blue square"])
    gen = torch.Generator().manual_seed(0)
    shape = family.latent_shape(pipe, 16)
    lat_w, lat_l, noise = (torch.randn(2, *shape, generator=gen) for _ in range(3))
    t = family.sample_timesteps(2, gen, shape)
    x = torch.cat([family.add_noise(lat_w, noise, t), family.add_noise(lat_l, noise, t)])
    target = torch.cat([family.target(lat_w, noise, t), family.target(lat_l, noise, t)])
    t2, cond = torch.cat([t, t]), {k: torch.cat([v, v]) for k, v in text.items()}
    with torch.no_grad():
        base = family.predict(getattr(pipe, family.denoiser), x, t2, cond)
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(6):
        pred = family.predict(denoiser, x, t2, cond)
        with torch.no_grad():
            denoiser.disable_adapters()
            ref = family.predict(denoiser, x, t2, cond)
            denoiser.enable_adapters()
        inputs = family.objective_inputs(pred, ref, target, t2)
        loss, _ = OBJECTIVES["dspo"].fn(*inputs, **objective_kwargs("dspo", {"lam": 0.5}))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    torch.testing.assert_close(ref, base)  # the reference stays the base model
    assert not torch.allclose(pred.detach(), base, atol=1e-4)


def test_full_denoiser_saved_by_a_family_reloads(tiny_sd3: Path, tmp_path: Path) -> None:
    family = load_family(tiny_sd3, **SETTINGS["sd3"])
    denoiser = family.load_denoiser(tiny_sd3)
    with torch.no_grad():
        next(denoiser.parameters()).add_(1.0)
    family.save_denoiser(denoiser, str(tiny_sd3), tmp_path / "full", lora=False)
    reloaded = StableDiffusion3Pipeline.from_pretrained(tmp_path / "full").transformer
    for (key, a), b in zip(
        denoiser.state_dict().items(), reloaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert detect_family(tmp_path / "full") == "sd3"


@pytest.mark.parametrize("name", ["sd", "sd3", "flux"])
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


def test_flow_family_rejects_a_ddpm_sampler(tiny_sd3: Path) -> None:
    family = load_family(tiny_sd3, **SETTINGS["sd3"])
    with pytest.raises(ValueError, match="expected 'euler'"):
        family.sampling_scheduler(load_pipeline(tiny_sd3), "ddim")


def test_sd_family_reads_stock_sd_folders(tiny_model: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    family = load_family(tiny_model)
    assert family.native_resolution(pipe) == 16


def test_a_loaded_family_trains_on_the_checkpoints_own_schedule(
    tiny_model: Path, tiny_sd3: Path, tiny_flux: Path, tmp_path: Path
) -> None:
    """The family reads scheduler/scheduler_config.json, not the pipeline's model_index.json
    (which gave every model diffusers' default schedule: linear betas, no shift)."""
    folder = tmp_path / "scaled"
    shutil.copytree(tiny_model, folder)
    config_file = folder / "scheduler/scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    config_file.write_text(json.dumps(config))
    expected = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    family = load_family(folder)
    assert torch.equal(family.scheduler.alphas_cumprod, expected.alphas_cumprod)
    assert load_family(tiny_sd3).shift((4, 8, 8)) == 3.0  # the tiny SD3's own shift
    flux = load_family(tiny_flux)
    assert flux.shift((16, 64, 64)) == pytest.approx(flux_shift(32 * 32, TINY_FLUX["scheduler"]))
