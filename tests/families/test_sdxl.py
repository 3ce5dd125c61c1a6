"""SDXL through the same cache, trainer and sampler, on a tiny SDXL-shaped pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache
from dspo.families import load_family
from dspo.families.sd_pipeline import load_pipeline
from dspo.generation.sample import generate, load_for_sampling
from dspo.objectives import get_objective
from dspo.training.preference import PreferenceModel, make_batch, preference_loss
from dspo.training.train import train
from tests.conftest import jpeg
from tests.training.test_train import BASE_CONFIG

LORA = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def size_of(i: int) -> tuple[int, int]:
    """(width, height) of pair i's preferred image: landscape, portrait and square ones."""
    return [(24, 16), (16, 20), (16, 16), (30, 18)][i % 4]


@pytest.fixture(scope="module")
def sdxl_pairs(tiny_pairs: pd.DataFrame) -> pd.DataFrame:
    pairs = tiny_pairs.copy()
    pairs["jpg_w"] = [jpeg((200, 40 * (i % 6), 0), size=size_of(i)) for i in range(len(pairs))]
    return pairs


@pytest.fixture(scope="module")
def sdxl_cache(tiny_sdxl_model: Path, sdxl_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sdxl-cache")
    rejected = [c.split()[-1] for c in sdxl_pairs["caption"]]  # degraded prompts for DDSPO
    build_cache(
        sdxl_pairs,
        str(tiny_sdxl_model),
        path,
        resolution=16,
        dtype="float32",
        prompts_l=rejected,
        crop="random",
        flip=True,
        seed=3,
    )
    return path


def test_cache_holds_pooled_embeddings_sizes_and_crops(
    sdxl_cache: Path, tiny_sdxl_model: Path, sdxl_pairs: pd.DataFrame
) -> None:
    cache = load_cache(sdxl_cache)
    assert cache.manifest["family"] == "sdxl" and cache.manifest["text_shape"] == [12, 48]
    pipe = load_pipeline(str(tiny_sdxl_model))
    caption = sdxl_pairs["caption"][5]
    hidden, _, pooled, _ = pipe.encode_prompt(
        caption, device="cpu", do_classifier_free_guidance=False
    )
    row = cache.text_w[5]
    torch.testing.assert_close(cache.prompt_tensors["embeddings"][row][None], hidden)
    torch.testing.assert_close(cache.prompt_tensors["pooled"][row][None], pooled)
    assert cache.empty_prompt["pooled"].shape == (1, 8)

    for i in range(len(cache)):
        width, height = size_of(i)
        assert cache.original_size_w[i].tolist() == [height, width]
        # The shorter side is resized to 16, so the crop slides along the longer one only.
        spare = round(max(width, height) * 16 / min(width, height)) - 16
        top, left = cache.crop_w[i].tolist()
        assert 0 <= top <= (spare if height > width else 0)
        assert 0 <= left <= (spare if width > height else 0)
    assert cache.crop_w.unique(dim=0).shape[0] > 1


def test_unet_is_conditioned_on_each_images_size_and_crop(
    sdxl_cache: Path, tiny_sdxl_model: Path
) -> None:
    cache = load_cache(sdxl_cache)
    pipe = load_pipeline(str(tiny_sdxl_model))
    rows = torch.tensor([0, 1, 3])
    family = load_family(tiny_sdxl_model)
    batch = make_batch(cache, rows, 0.0, torch.Generator().manual_seed(0), family)
    expected_w = [
        [*cache.original_size_w[r].tolist(), *cache.crop_w[r].tolist(), 16, 16] for r in rows
    ]
    assert batch["time_ids_w"].tolist() == expected_w
    assert batch["time_ids_l"][:, :2].tolist() == [[16, 16]] * 3

    model = PreferenceModel(pipe.unet, family, needs_reference=True, lora=False)
    seen = []
    model.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True
    )
    loss, _ = preference_loss(model, batch, get_objective("diffusion_dpo"), {"beta": 1.0})
    assert torch.isfinite(loss)
    assert torch.equal(seen[0]["time_ids"], torch.cat([batch["time_ids_w"], batch["time_ids_l"]]))
    assert torch.equal(seen[0]["text_embeds"], batch["pooled_w"].repeat(2, 1))

    # The time ids reach the UNet's output: another original size gives another prediction.
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    text = batch["text_w"][:1]
    outputs = [
        pipe.unet(
            x, t, text, added_cond_kwargs={"text_embeds": batch["pooled_w"][:1], "time_ids": ids}
        ).sample
        for ids in (batch["time_ids_w"][:1], batch["time_ids_w"][:1] * 4)
    ]
    assert not torch.allclose(*outputs)


def train_sdxl(cfg: dict, cache: Path, base: Path, root: Path) -> dict:
    return train(
        {**BASE_CONFIG, "steps": 3, "checkpoint_every": 0, **cfg},
        cache_dir=cache,
        base_model=str(base),
        out_dir=root / "model",
        run_dir=root / "run",
    )


def sample_one(pipe, out: Path) -> np.ndarray:
    prompts = pd.DataFrame({"prompt_set": ["t"], "prompt_id": [1], "prompt": ["a red circle"]})
    manifest = generate(pipe, prompts, out, seeds=[0], guidance=[3.0], steps=2, resolution=16)
    image = np.asarray(Image.open(out / manifest["path"][0]))
    assert image.shape == (16, 16, 3)
    return image


@pytest.mark.parametrize(
    ("objective", "params"),
    [("sft", {}), ("diffusion_dpo", {"beta": 500}), ("dspo_ref", {}), ("ddspo", {})],
)
def test_objectives_train_sdxl_and_save_a_stock_pipeline(
    objective: str, params: dict, sdxl_cache: Path, tiny_sdxl_model: Path, tmp_path: Path
) -> None:
    summary = train_sdxl(
        {"objective": objective, "params": params}, sdxl_cache, tiny_sdxl_model, tmp_path
    )
    assert summary["family"] == "sdxl"
    metrics = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert all(np.isfinite(json.loads(line)["loss"]) for line in metrics)
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "model")
    before = load_pipeline(str(tiny_sdxl_model)).unet.state_dict()
    after = pipe.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights did not move"
    saved = json.loads((tmp_path / "model/dspo_config.json").read_text())
    assert saved["config"]["objective"] == objective and saved["family"] == "sdxl"
    sample_one(load_for_sampling(str(tmp_path / "model"), str(tiny_sdxl_model)), tmp_path / "img")


def test_sdxl_lora_loads_in_the_stock_pipeline(
    sdxl_cache: Path, tiny_sdxl_model: Path, tmp_path: Path
) -> None:
    cfg = {"objective": "dspo_ref", "lora": LORA, "lr": 1e-2}
    train_sdxl(cfg, sdxl_cache, tiny_sdxl_model, tmp_path)
    assert (tmp_path / "model/pytorch_lora_weights.safetensors").exists()
    assert not (tmp_path / "model/model_index.json").exists()

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model)
    kwargs = {"num_inference_steps": 2, "height": 16, "width": 16, "output_type": "np"}
    base = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(tmp_path / "model"))
    tuned = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert tuned.shape == (1, 16, 16, 3) and not np.allclose(tuned, base)

    fused = load_for_sampling(str(tmp_path / "model"), str(tiny_sdxl_model))
    plain = load_for_sampling(str(tiny_sdxl_model), str(tiny_sdxl_model))
    assert not np.array_equal(
        sample_one(fused, tmp_path / "fused"), sample_one(plain, tmp_path / "plain")
    )


def test_cache_of_another_family_is_refused(
    sdxl_cache: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="holds sdxl embeddings.* is sd"):
        train_sdxl({"objective": "sft"}, sdxl_cache, tiny_model, tmp_path)
