"""Generation: same initial noise for every model, resumable, LoRA folders fused on the base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dspo.models import load_pipeline
from dspo.sample import generate, initial_noise, load_for_sampling

PROMPTS = pd.DataFrame(
    {"prompt_set": "demo", "prompt_id": [3, 7], "prompt": ["a red circle", "a blue square"]}
)


def run(pipe, out: Path) -> pd.DataFrame:
    return generate(
        pipe, PROMPTS, out, seeds=[0, 1], guidance=[1.0, 3.0], steps=2, resolution=16, batch_size=3
    )


def test_initial_noise_depends_on_prompt_and_seed_only() -> None:
    a = initial_noise((4, 8, 8), prompt_id=3, seed=0)
    assert torch.equal(a, initial_noise((4, 8, 8), prompt_id=3, seed=0))
    assert not torch.equal(a, initial_noise((4, 8, 8), prompt_id=3, seed=1))
    assert not torch.equal(a, initial_noise((4, 8, 8), prompt_id=7, seed=0))


def test_generate_writes_every_image_and_resumes(tiny_model: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(str(tiny_model))
    manifest = run(pipe, tmp_path)
    assert len(manifest) == 2 * 2 * 2
    assert set(manifest.columns) >= {
        "prompt_set",
        "prompt_id",
        "prompt",
        "seed",
        "guidance",
        "path",
    }
    first = tmp_path / manifest["path"][0]
    assert Image.open(first).size == (16, 16)
    # Same model, same (prompt, seed, guidance): the same image, bit for bit.
    again = run(load_pipeline(str(tiny_model)), tmp_path / "again")
    for path in manifest["path"]:
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / path)),
            np.asarray(Image.open(tmp_path / "again" / path)),
        )
    # A rerun keeps what is on disk and makes only what is missing.
    first.unlink()
    other = tmp_path / manifest["path"][1]
    stamp = other.stat().st_mtime_ns
    assert again.equals(run(pipe, tmp_path))
    assert first.exists() and other.stat().st_mtime_ns == stamp


def test_lora_folder_is_fused_onto_the_base(tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(str(tiny_model))
    pipe.unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"])
    )
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet)
    )
    fused = load_for_sampling(str(tmp_path), str(tiny_model))
    base = load_pipeline(str(tiny_model))
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 12, 32)
    expected = pipe.unet(x, t, text).sample
    torch.testing.assert_close(fused.unet(x, t, text).sample, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base.unet(x, t, text).sample, expected)
