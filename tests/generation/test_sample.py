"""Generation: same initial noise for every model, resumable, LoRA folders fused on the base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dspo.cli import commands as cli
from dspo.families.sd_pipeline import load_pipeline
from dspo.generation.sample import generate, initial_noise, load_for_sampling, sampling_dtype

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


def cli_generate(model: Path, prompts: Path, out: Path, **settings: object) -> dict[str, bytes]:
    """Run `dspo generate` as the workflow does; return each image's pixels by path."""
    params = {
        "seeds": [0],
        "guidance": [2.0],
        "steps": 2,
        "scheduler": "ddim",
        "resolution": 16,
        "batch_size": 4,
        **settings,
    }
    manifest = out / "manifest.parquet"
    cli.main(
        ["generate", "--params", json.dumps(params), "--model", str(model), "--base", str(model)]
        + ["--prompts", str(prompts), "--out", str(manifest)]
    )
    paths = pd.read_parquet(manifest)["path"]
    return {p: np.asarray(Image.open(out / p)).tobytes() for p in paths}


@pytest.fixture
def own_model(tiny_model: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model that a test may overwrite in place."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_images_follow_the_model_settings_and_damage(own_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.parquet"
    PROMPTS.to_parquet(prompts)
    out = tmp_path / "images"
    first = cli_generate(own_model, prompts, out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in first}
    # Same model, settings and code: every image is kept as it is.
    assert cli_generate(own_model, prompts, out) == first
    assert {p: (out / p).stat().st_mtime_ns for p in first} == stamps
    # A damaged image is detected and remade, bit for bit.
    damaged = out / next(iter(first))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    assert cli_generate(own_model, prompts, out) == first
    # More sampling steps: new pixels, as a fresh folder would get.
    more_steps = cli_generate(own_model, prompts, out, steps=5)
    assert more_steps == cli_generate(own_model, prompts, tmp_path / "fresh5", steps=5)
    assert all(more_steps[p] != first[p] for p in first)
    # The model's weights rewritten at the same path: new pixels again.
    pipe = load_pipeline(str(own_model))
    with torch.no_grad():
        for param in pipe.unet.parameters():
            param.mul_(1.5)
    pipe.save_pretrained(own_model)
    changed = cli_generate(own_model, prompts, out)
    assert all(changed[p] != first[p] for p in first)
    assert changed == cli_generate(own_model, prompts, tmp_path / "fresh")
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["key"] and pd.read_parquet(out / "manifest.parquet")["key"].is_unique


def test_sampling_runs_in_float32_on_the_cpu() -> None:
    assert sampling_dtype("bfloat16", "cpu") == "float32"
    assert sampling_dtype("bfloat16", "cuda:1") == "bfloat16"


def test_a_missing_image_is_remade_in_the_batch_a_whole_run_makes_it_in(tmp_path: Path) -> None:
    from dspo.generation.sample import batches_to_make, save_image

    jobs = [
        {"path": f"g{g}/p{p}.png", "key": f"k{g}{p}", "guidance": g}
        for p in range(3)
        for g in (2.0, 4.0)
    ]
    for job in jobs:
        save_image(np.zeros((2, 2, 3)), tmp_path / job["path"], job["key"])
    assert batches_to_make(jobs, tmp_path, batch_size=4) == []
    (tmp_path / "g4.0/p1.png").write_bytes(b"\x89PNG truncated")
    # Blocks of 4 jobs in their order, one call per guidance scale: the damaged image's
    # call holds both guidance-4 jobs of the first block, and writes only the damaged one.
    calls = batches_to_make(jobs, tmp_path, batch_size=4)
    assert [([j["path"] for j in part], missing) for part, missing in calls] == [
        (["g4.0/p0.png", "g4.0/p1.png"], [False, True])
    ]
