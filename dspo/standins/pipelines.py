"""SD1.5 and SDXL pipeline folders with the published architectures, random weights.

Each component is built and saved on its own (``save_pretrained`` into its sub-folder) and
freed before the next, so the peak memory is the largest component, and ``model_index.json``
is written as the hub repos have it. ``tiny`` keeps every class, block type, tokenizer and
file but shrinks widths and depths, for tests.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from dspo.standins.architectures import (
    CLIP_BIGG_TEXT,
    CLIP_L_TEXT,
    SD15_UNET,
    SD_SCHEDULE,
    SD_VAE,
    SDXL_UNET,
)
from dspo.standins.tokenizers import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, write_clip_tokenizer

DIFFUSERS_VERSION = "0.6.0"  # as stable-diffusion-v1-5's model_index.json records

# Tests: the same classes and block types, small widths; latents stay 8x smaller than pixels.
TINY = {
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    "text_2": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    "vae": {
        "block_out_channels": [8, 8, 16, 16],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "unet": {
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 8,
        "attention_head_dim": 4,
    },
    "unet_xl": {
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 8,
        "attention_head_dim": [2, 4, 4],
        "transformer_layers_per_block": [1, 1, 2],
        "addition_time_embed_dim": 8,
    },
}


def _save(module: Any, folder: Path, dtype: torch.dtype) -> int:
    """Save one component in ``dtype``; returns its parameter count."""
    module.to(dtype).save_pretrained(folder)
    n = sum(p.numel() for p in module.parameters())
    del module
    gc.collect()
    return n


def _text_encoder(cfg: Mapping[str, Any], cls_name: str, ids: Mapping[str, int]) -> Any:
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_LENGTH, **ids, **cfg
    )
    return getattr(transformers, cls_name)(config)


def _model_index(out: Path, pipeline: str, components: Mapping[str, list[str | None]]) -> None:
    index = {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION, **components}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_sd15(out: Path, words: Iterable[str], *, tiny: bool = False, seed: int = 0) -> dict:
    """stable-diffusion-v1-5's folder: CLIP ViT-L/14 text encoder, 4-block VAE, 859.5M UNet.

    The safety checker is listed in ``model_index.json``, as in the hub repo, but not written
    (1.2 GB that the workflow never loads: ``load_pipeline`` passes ``safety_checker=None``).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    words = list(words)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    write_clip_tokenizer(out / "tokenizer", words)
    torch.manual_seed(seed)
    text_cfg = {**CLIP_L_TEXT, **(TINY["text"] if tiny else {})}
    ids = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}
    encoder = _text_encoder(text_cfg, "CLIPTextModel", ids)
    counts["text_encoder"] = _save(encoder, out / "text_encoder", torch.float32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**{**SD_VAE, **(TINY["vae"] if tiny else {})})
    counts["vae"] = _save(vae, out / "vae", torch.float32)
    torch.manual_seed(seed + 2)
    unet_cfg = {**SD15_UNET, **(TINY["unet"] if tiny else {})}
    unet_cfg["cross_attention_dim"] = text_cfg["hidden_size"]
    counts["unet"] = _save(UNet2DConditionModel(**unet_cfg), out / "unet", torch.float32)
    PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False).save_pretrained(
        out / "scheduler"
    )
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(out / "feature_extractor")
    _model_index(
        out,
        "StableDiffusionPipeline",
        {
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return counts


def write_sdxl(
    out: Path,
    words: Iterable[str],
    *,
    tiny: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> dict:
    """stable-diffusion-xl-base-1.0's folder: two text encoders, the 2.6B UNet, the VAE.

    Written in ``dtype`` (float16 by default, as the hub's fp16 variant): the UNet is 10.3 GB
    in float32, more than a shared 24 GB machine can build beside other work. Weights are
    initialised in ``dtype`` too, so the peak is one component at that precision.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    words = list(words)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    write_clip_tokenizer(out / "tokenizer", words)
    write_clip_tokenizer(out / "tokenizer_2", words)
    text_1 = {**CLIP_L_TEXT, **(TINY["text"] if tiny else {})}
    text_2 = {**CLIP_BIGG_TEXT, **(TINY["text_2"] if tiny else {})}
    ids = {"bos_token_id": 49406, "pad_token_id": 49407, "eos_token_id": 49407}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        counts["text_encoder"] = _save(
            _text_encoder(text_1, "CLIPTextModel", ids), out / "text_encoder", dtype
        )
        torch.manual_seed(seed + 1)
        counts["text_encoder_2"] = _save(
            _text_encoder(text_2, "CLIPTextModelWithProjection", ids), out / "text_encoder_2", dtype
        )
        torch.manual_seed(seed + 2)
        vae_cfg = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025}
        vae = AutoencoderKL(**{**vae_cfg, **(TINY["vae"] if tiny else {})})
        counts["vae"] = _save(vae, out / "vae", dtype)
        torch.manual_seed(seed + 3)
        unet_cfg = {**SDXL_UNET, **(TINY["unet_xl"] if tiny else {})}
        time_dim = unet_cfg["addition_time_embed_dim"]
        unet_cfg["cross_attention_dim"] = text_1["hidden_size"] + text_2["hidden_size"]
        unet_cfg["projection_class_embeddings_input_dim"] = text_2["projection_dim"] + 6 * time_dim
        counts["unet"] = _save(UNet2DConditionModel(**unet_cfg), out / "unet", dtype)
    finally:
        torch.set_default_dtype(previous)
    EulerDiscreteScheduler(
        **SD_SCHEDULE, timestep_spacing="leading", interpolation_type="linear"
    ).save_pretrained(out / "scheduler")
    _model_index(
        out,
        "StableDiffusionXLPipeline",
        {
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return counts
