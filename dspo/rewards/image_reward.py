"""ImageReward (Xu et al., 2023): BLIP's ViT-L/16 and a BERT with cross-attention, plus an MLP.

The ``image-reward`` wheel pins timm 0.6.13 and imports helpers transformers 5 removed, so
its checkpoint (``ImageReward.pt``, a bare state dict, with ``med_config.json``; hub repo
``THUDM/ImageReward``) is mapped onto transformers' BLIP classes, which port the same code:

ImageReward key -> here (E = blip.visual_encoder., V = vision., L = encoder.layers.{i}.):

- E patch_embed.proj.* -> V embeddings.patch_embedding.*
- E cls_token / E pos_embed -> V embeddings.class_embedding / V embeddings.position_embedding
- E blocks.{i}.norm1 / norm2 -> V L layer_norm1 / layer_norm2
- E blocks.{i}.attn.qkv / attn.proj -> V L self_attn.qkv / self_attn.projection
- E blocks.{i}.mlp.fc1 / fc2 -> V L mlp.fc1 / mlp.fc2
- E norm -> V post_layernorm
- blip.text_encoder.* -> text.* (transformers' ``BlipTextModel`` uses the same names)
- mlp.layers.{0,2,4,6,7} -> head.{0,2,4,6,7}

``blip.vision_proj``/``blip.text_proj`` (unused when scoring) and the ``position_ids`` buffer
are left out; any other tensor the model does not read, or one it lacks, is an error naming it
(the original loads with ``strict=False``). Images go through ImageReward's own transform
(``dspo.rewards.transforms.center_crop``). The ViT's widths and depth come from the tensors;
BLIP ViT-L's 16 heads, exact GELU and LayerNorm eps 1e-6 are fixed; the text model's sizes
come from ``med_config.json``, its cross-attention reading the ViT's width. Scoring follows
``ImageReward.score``: prompts padded to 35 BERT tokens, image tokens as cross-attention
memory, the [CLS] output through the MLP, then ``(raw - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dspo.rewards.checks import check_batch, check_keys
from dspo.rewards.common import (
    count_blocks,
    linear_stack,
    load_state_dict,
    reject_unused,
    require,
    resolve_file,
    spec_dtype,
)
from dspo.rewards.hub_defaults import (
    IMAGE_REWARD_CHECKPOINT,
    IMAGE_REWARD_MED_CONFIG,
    IMAGE_REWARD_REPO,
    IMAGE_REWARD_TOKENIZER,
)
from dspo.rewards.transforms import center_crop_pixels

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py's normalisation
MAX_TOKENS = 35
HEADS = 16  # BLIP's vit="large"
VISION = "blip.visual_encoder."
TEXT = "blip.text_encoder."
# Held by ImageReward.pt and never read when scoring: BLIP's contrastive projections and the
# text embeddings' position-id buffer.
UNUSED = tuple(f"blip.{p}_proj.{q}" for p in ("vision", "text") for q in ("weight", "bias")) + (
    f"{TEXT}embeddings.position_ids",
)
_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def blip_vision(
    state: Mapping[str, torch.Tensor], source: Path, read: set[str] | None = None
) -> Any:
    """transformers' ``BlipVisionModel`` holding BLIP's ViT (``blip.visual_encoder.*``).

    The checkpoint keys it reads are added to `read`.
    """
    from transformers import BlipVisionConfig, BlipVisionModel

    require(
        state,
        [
            f"{VISION}{k}"
            for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight")
        ],
        source,
    )
    conv = state[f"{VISION}patch_embed.proj.weight"]
    grid = round((state[f"{VISION}pos_embed"].shape[1] - 1) ** 0.5)
    layers = count_blocks(state, f"{VISION}blocks.")
    config = BlipVisionConfig(
        hidden_size=conv.shape[0],
        intermediate_size=state[f"{VISION}blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        patch_size=conv.shape[-1],
        image_size=grid * conv.shape[-1],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    ours = {
        "embeddings.patch_embedding.weight": f"{VISION}patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": f"{VISION}patch_embed.proj.bias",
        "embeddings.class_embedding": f"{VISION}cls_token",
        "embeddings.position_embedding": f"{VISION}pos_embed",
        "post_layernorm.weight": f"{VISION}norm.weight",
        "post_layernorm.bias": f"{VISION}norm.bias",
    }
    for i in range(layers):
        for theirs, mine in _BLOCK.items():
            for param in ("weight", "bias"):
                ours[f"encoder.layers.{i}.{mine}.{param}"] = f"{VISION}blocks.{i}.{theirs}.{param}"
    return _filled(BlipVisionModel(config), ours, state, source, read)


def blip_text(
    state: Mapping[str, torch.Tensor],
    med_config: Path,
    encoder_width: int,
    source: Path,
    read: set[str] | None = None,
) -> Any:
    """transformers' ``BlipTextModel`` (with cross-attention) holding ``blip.text_encoder.*``."""
    from transformers import BlipTextConfig, BlipTextModel

    med = json.loads(med_config.read_text())
    if not med.get("add_cross_attention"):
        raise ValueError(f"{med_config}: ImageReward's text encoder needs add_cross_attention")
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"]
    keys += ["num_attention_heads", "max_position_embeddings", "layer_norm_eps", "hidden_act"]
    missing = [k for k in keys if k not in med]
    if missing:
        raise ValueError(f"{med_config} lacks {missing}")
    # is_decoder=True only makes transformers build the cross-attention layers; scoring calls
    # the model as a bidirectional encoder, like BLIP's BertModel in its "multimodal" mode.
    config = BlipTextConfig(
        **{k: med[k] for k in keys},
        pad_token_id=med.get("pad_token_id", 0),
        encoder_hidden_size=encoder_width,
        is_decoder=True,
    )
    model = BlipTextModel(config, add_pooling_layer=False)
    return _filled(model, {k: f"{TEXT}{k}" for k in model.state_dict()}, state, source, read)


def _filled(
    model: nn.Module,
    names: Mapping[str, str],
    state: Mapping[str, torch.Tensor],
    source: Path,
    read: set[str] | None,
) -> Any:
    require(state, names.values(), source)
    if read is not None:
        read.update(names.values())
    weights = {ours: state[theirs] for ours, theirs in names.items()}
    model.load_state_dict(weights)  # strict: every parameter of the model must be named
    return model


class ImageReward:
    """ImageReward score of each image with its prompt (mean 0, sd 1 on its training data)."""

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu") -> None:
        from transformers import BertTokenizer

        check_keys(spec, {"checkpoint", "med_config", "repo", "tokenizer"})
        repo = spec.get("repo", IMAGE_REWARD_REPO)
        path = resolve_file(spec, "checkpoint", IMAGE_REWARD_CHECKPOINT, repo)
        med_config = resolve_file(spec, "med_config", IMAGE_REWARD_MED_CONFIG, repo)
        state = load_state_dict(path)
        dtype = spec_dtype(spec)
        self.device = device
        read: set[str] = set()
        self.vision = blip_vision(state, path, read).to(device, dtype).eval()
        width = self.vision.config.hidden_size
        self.text = blip_text(state, med_config, width, path, read).to(device, dtype).eval()
        head = linear_stack(state, "mlp.layers.", path)
        read.update(f"mlp.layers.{k}" for k in head.state_dict())
        reject_unused(state, read, path, ignored=UNUSED)
        self.head = head.to(device).eval()
        # BLIP's tokenizer: BERT's, plus the [DEC] and [ENC] tokens its vocabulary was sized for.
        tokenizer = spec.get("tokenizer", IMAGE_REWARD_TOKENIZER)
        self.tokenizer = BertTokenizer.from_pretrained(tokenizer)
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > self.text.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but {med_config} only "
                f"{self.text.config.vocab_size}"
            )
        self.version = f"image_reward {spec.get('checkpoint', 'ImageReward.pt')}"

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_batch(images, prompts)
        size = self.vision.config.image_size
        pixels = center_crop_pixels(images, size).to(self.device, self.vision.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        text = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.text(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(
                image_embeds.shape[:2], dtype=torch.long, device=self.device
            ),
        ).last_hidden_state
        raw = self.head(hidden[:, 0].float())[:, 0]
        return ((raw - MEAN) / STD).cpu().numpy().astype(np.float64)
