"""The counted FLOPs per image behind ``dspo budget``: ``python -m dspo.bench.budget_count``.

Each family's denoiser and VAE encoder is built from its published configuration on PyTorch's
``meta`` device (shapes, no storage, nothing computed) and run once under the project's flop
counter (`dspo.bench.flops.counted`) on one image at the family's native resolution:

- ``forward``: one denoiser forward (a sampling step per image; CFG runs it twice);
- ``forward_backward``: forward and backward with every weight trained (full fine-tuning);
- ``forward_backward_frozen``: forward and backward with the weights frozen and only the input's
  gradient taken, the work of LoRA training less its (small) adapters;
- ``vae_encode``: the VAE encoder on one image (the cache's work per image).

The text encoders are not counted: 0.013 TFLOP a caption for SD1.5's, under 0.1 % of a
training pair. The results go to ``dspo/resources/budget_flops.json``, which ``dspo budget``
reads; rerunning this module rewrites it (about a minute per family on a CPU).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dspo.bench.flops import counted
from dspo.standins.architectures import SD15_UNET, SD_VAE, SDXL_UNET

TABLE = Path(__file__).parents[1] / "resources" / "budget_flops.json"
META = torch.device("meta")

# SD3 and FLUX use the same encoder shape with 16 latent channels.
VAE_16 = {**SD_VAE, "latent_channels": 16}
# SD3.5 Medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json).
SD35_MEDIUM = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
# FLUX.1-dev's transformer (black-forest-labs/FLUX.1-dev, transformer/config.json).
FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}


def _empty(*shape: int, grad: bool = False) -> torch.Tensor:
    return torch.empty(*shape, device=META, requires_grad=grad)


def _unet_inputs(cfg: dict[str, Any], latent: int, grad: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**cfg)
    kwargs: dict[str, Any] = {
        "sample": _empty(1, cfg["in_channels"], latent, latent, grad=grad),
        "timestep": torch.zeros(1, dtype=torch.long, device=META),
        "encoder_hidden_states": _empty(1, 77, cfg["cross_attention_dim"]),
    }
    if cfg.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": _empty(1, 1280), "time_ids": _empty(1, 6)}
    return model, kwargs


def _sd3_inputs(cfg: dict[str, Any], latent: int, grad: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(**cfg)
    return model, {
        "hidden_states": _empty(1, 16, latent, latent, grad=grad),
        "encoder_hidden_states": _empty(1, 333, 4096),  # 77 CLIP + 256 T5 tokens
        "pooled_projections": _empty(1, 2048),
        "timestep": _empty(1),
    }


def _flux_inputs(cfg: dict[str, Any], latent: int, grad: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**cfg)
    tokens = (latent // 2) ** 2  # 2x2 latent patches packed into 64 channels
    return model, {
        "hidden_states": _empty(1, tokens, 64, grad=grad),
        "encoder_hidden_states": _empty(1, 512, 4096),
        "pooled_projections": _empty(1, 768),
        "timestep": _empty(1),
        "guidance": _empty(1),
        "img_ids": _empty(tokens, 3),
        "txt_ids": _empty(512, 3),
    }


Builder = Callable[[dict[str, Any], int, bool], tuple[Any, dict[str, Any]]]
FAMILIES: dict[str, tuple[Builder, dict[str, Any], dict[str, Any], int]] = {
    "sd": (_unet_inputs, SD15_UNET, SD_VAE, 512),
    "sdxl": (_unet_inputs, SDXL_UNET, SD_VAE, 1024),
    "sd3": (_sd3_inputs, SD35_MEDIUM, VAE_16, 1024),
    "flux": (_flux_inputs, FLUX_DEV, VAE_16, 1024),
}


def _denoiser(build: Builder, cfg: dict[str, Any], latent: int, mode: str) -> int:
    with META:
        model, kwargs = build(cfg, latent, mode == "forward_backward_frozen")
    model.requires_grad_(mode == "forward_backward")
    if mode == "forward":
        with torch.no_grad():
            return counted(lambda: model(**kwargs))[1]

    def step() -> None:
        out = model(**kwargs, return_dict=False)[0]
        out.float().sum().backward()

    return counted(step)[1]


def _vae_encode(cfg: dict[str, Any], resolution: int) -> int:
    from diffusers import AutoencoderKL

    with META:
        vae = AutoencoderKL(**cfg)
    pixels = _empty(1, 3, resolution, resolution)
    with torch.no_grad():
        return counted(lambda: vae.encode(pixels))[1]


def count_family(family: str) -> dict[str, Any]:
    """FLOPs per image of one family at its native resolution, counted on the meta device."""
    build, cfg, vae_cfg, resolution = FAMILIES[family]
    latent = resolution // 8
    counts = {
        mode: _denoiser(build, cfg, latent, mode)
        for mode in ("forward", "forward_backward", "forward_backward_frozen")
    }
    with META:
        params = sum(p.numel() for p in build(cfg, latent, False)[0].parameters())
    return {
        "resolution": resolution,
        "denoiser_params": params,
        **counts,
        "vae_encode": _vae_encode(vae_cfg, resolution),
    }


def main(argv: list[str]) -> None:
    """Count the families named (default all) and merge them into the resource table."""
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    for family in argv or list(FAMILIES):
        table[family] = count_family(family)
        print(family, table[family], flush=True)
    table["_produced_by"] = (
        "python -m dspo.bench.budget_count (dspo.bench.flops.counted on the meta device)"
    )
    TABLE.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
