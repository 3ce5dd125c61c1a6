"""The GPU speed switches (training.channels_last, training.compile) change how a step is
computed, not what it computes: on CPU a step's loss and gradient equal the plain model's up
to float32 rounding, training runs end to end, and the saved files are the plain ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from dspo.data.cache_load import load_cache
from dspo.families import build_pipeline, load_family
from dspo.objectives import get_objective, objective_kwargs
from dspo.training.policy import build_model
from dspo.training.preference import PreferenceModel, make_batch
from dspo.training.settings import TrainSettings
from tests.conftest import TINY_ARCHITECTURE, WORDS
from tests.training.test_train import BASE_CONFIG, DSPO, LORA, run

STEPS = {"steps": 2, "checkpoint_every": 0}
# The compiled cases compile a UNet's forward and backward, whose cost on a CPU is inductor's
# (its passes in Python, then the C++ of each kernel) and grows with the graph. The switches'
# wiring does not depend on the UNet's size, so this module's model keeps what they touch
# (convolutions for channels-last, cross-attention for the LoRA adapters) in one block down
# and one up with no middle block: on one thread with torch.compile's cache empty the module
# took about 110 CPU-s, against 235 with the shared tiny model.
SMALL_UNET = {
    **TINY_ARCHITECTURE["unet"],
    "block_out_channels": [16],
    "down_block_types": ["CrossAttnDownBlock2D"],
    "up_block_types": ["UpBlock2D"],
    "mid_block_type": None,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny pipeline (tests/conftest.py) with :data:`SMALL_UNET`; the module's
    latent cache (``cache_dir``) is encoded by it."""
    path = tmp_path_factory.mktemp("models") / "small"
    build_pipeline({**TINY_ARCHITECTURE, "unet": SMALL_UNET}, WORDS, seed=0).save_pretrained(path)
    return path


def model_with(switches: dict, tiny_model: Path, cache_dir: Path, lora: bool) -> PreferenceModel:
    cfg = {**BASE_CONFIG, **DSPO, **switches, **({"lora": LORA} if lora else {})}
    torch.manual_seed(0)  # the same LoRA initialisation in every model
    cache = load_cache(cache_dir)
    return build_model(
        TrainSettings.from_config(cfg), get_objective("dspo"), str(tiny_model), cache, "no"
    )


def loss_and_gradient(model: PreferenceModel, cache_dir: Path, tiny_model: Path):
    cache, family = load_cache(cache_dir), load_family(tiny_model)
    # A training step's micro-batch (BASE_CONFIG's local_pairs): the same graphs as the training
    # run below, which then takes the compiled kernels from torch.compile's cache.
    pairs = torch.arange(BASE_CONFIG["local_pairs"])
    batch = make_batch(cache, pairs, 0.25, torch.Generator().manual_seed(1), family)
    hparams = objective_kwargs("dspo", DSPO["params"])
    loss, _ = model(batch, get_objective("dspo"), hparams)
    loss.backward()
    grads = [p.grad.flatten() for p in model.denoiser.parameters() if p.requires_grad]
    return loss.detach(), torch.cat(grads)


SWITCHES = {
    "channels_last": {"channels_last": True},
    "both": {"channels_last": True, "compile": {"policy": True, "reference": True}},
}


# A compiled case costs tens of seconds of compilation on a CPU whose compile cache is empty
# (a fresh machine): channels-last alone and both switches in full fine-tuning (a compiled
# reference copy), both with LoRA (adapters on and off). `switch` applies the two
# independently, so compile alone takes the path that both together take.
@pytest.mark.parametrize(
    ("switch", "lora"), [("channels_last", False), ("both", False), ("both", True)]
)
def test_a_switched_step_computes_the_plain_steps_loss_and_gradient(
    switch: str, lora: bool, tiny_model: Path, cache_dir: Path
) -> None:
    plain = model_with({}, tiny_model, cache_dir, lora)
    switched = model_with(SWITCHES[switch], tiny_model, cache_dir, lora)
    if "compile" in SWITCHES[switch]:
        assert switched.denoiser._compiled_call_impl is not None
        if not lora:
            assert switched.reference._compiled_call_impl is not None
    if "channels_last" in SWITCHES[switch]:
        convs = [p for p in switched.denoiser.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    loss, grad = loss_and_gradient(plain, cache_dir, tiny_model)
    loss_s, grad_s = loss_and_gradient(switched, cache_dir, tiny_model)
    # float32 sums in another order: relative differences of a few 1e-7, bounded at 1e-5.
    torch.testing.assert_close(loss_s, loss, rtol=1e-5, atol=0)
    assert grad.norm() > 0
    assert ((grad_s - grad).norm() / grad.norm()).item() < 1e-5


def test_training_with_the_switches_writes_the_plain_files(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    both = SWITCHES["both"]
    run({**DSPO, **STEPS, **both}, cache_dir, tiny_model, tmp_path / "full")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "full/model")  # stock loading
    assert not any("_orig_mod" in key for key in pipe.unet.state_dict())
    run({**DSPO, **STEPS, "channels_last": True, "lora": LORA}, cache_dir, tiny_model, tmp_path)
    weights = load_file(tmp_path / "model/pytorch_lora_weights.safetensors")
    assert weights and all("lora" in key for key in weights)


def test_a_bad_compile_setting_is_named() -> None:
    with pytest.raises(ValueError, match="training.compile has unknown key"):
        TrainSettings.from_config({**BASE_CONFIG, **DSPO, "compile": {"polcy": True}})
    with pytest.raises(ValueError, match="training.compile.mode 'fast'"):
        TrainSettings.from_config({**BASE_CONFIG, **DSPO, "compile": {"mode": "fast"}})
