"""The published SD1.5 and SDXL architectures, as keyword arguments of their classes.

The stand-in pipeline folders (:mod:`dspo.standins.pipelines`), the benchmarks' ``sd15``
model (:mod:`dspo.bench.throughput`) and the budget's FLOP counts
(:mod:`dspo.bench.budget_count`) all take their shapes from here. Plain mappings, no torch.
"""

from __future__ import annotations

from typing import Any

from dspo.standins.tokenizers import CLIP_MAX_LENGTH

# CLIP ViT-L/14's text tower (SD1.5's encoder, SDXL's first); SD1.5's config keeps the
# original export's token ids (bos 0, pad 1, eos 2), which selects the arg-max pooling.
CLIP_L_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
# OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's second encoder).
CLIP_BIGG_TEXT = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
# Stable Diffusion 1.5 as an architecture mapping of
# :func:`dspo.families.build_pipeline` (random weights, a small vocabulary).
SD15_ARCHITECTURE: dict[str, Any] = {
    "max_length": CLIP_MAX_LENGTH,
    "text_encoder": CLIP_L_TEXT,
    "vae": SD_VAE,
    "unet": SD15_UNET,
    "scheduler": {**SD_SCHEDULE, "clip_sample": False},
}
