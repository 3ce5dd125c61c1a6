"""HPSv2 (Wu et al., 2023): open_clip's ViT-H-14 fine-tuned on human preference pairs.

The checkpoints (``HPS_v2_compressed.pt`` = v2.0, ``HPS_v2.1_compressed.pt`` = v2.1, hub repo
``xswu/HPSv2``) are open_clip state dicts. Rather than install the ``hpsv2`` wheel (which pins
old pytest/protobuf and downloads weights on import) or open_clip (which needs torchvision),
the state dict is mapped onto transformers' ``CLIPModel``, which has the same computation:

open_clip key -> CLIPModel key (V = vision_model., T = text_model., L = encoder.layers.{i}.,
B = transformer.resblocks.{i}.):

- visual.conv1.weight -> V embeddings.patch_embedding.weight
- visual.class_embedding -> V embeddings.class_embedding
- visual.positional_embedding -> V embeddings.position_embedding.weight
- visual.ln_pre / visual.ln_post -> V pre_layrnorm / V post_layernorm
- visual.proj (width x dim) -> visual_projection.weight, transposed
- token_embedding.weight / positional_embedding -> T embeddings.token_embedding.weight /
  T embeddings.position_embedding.weight
- ln_final -> T final_layer_norm
- text_projection (width x dim) -> text_projection.weight, transposed
- [visual.]B ln_1 / ln_2 -> V|T L layer_norm1 / layer_norm2
- [visual.]B attn.in_proj_{weight,bias} -> V|T L self_attn.{q,k,v}_proj, split in three
- [visual.]B attn.out_proj -> V|T L self_attn.out_proj
- [visual.]B mlp.c_fc / mlp.c_proj -> V|T L mlp.fc1 / mlp.fc2

Widths, depths, patch and image size come from the tensors; what tensors cannot tell is
ViT-H-14's: 16 heads in both towers, exact GELU, LayerNorm eps 1e-5. The prompt embedding is
read at the highest token id (the end-of-text token), as open_clip does. Images go through
HPSv2's own ``preprocess_val`` and prompts through open_clip's tokenizer
(``dspo.rewards.transforms``). Every tensor of the checkpoint must be read, as hpsv2's strict
``load_state_dict`` requires.
Score = cos(image, prompt) (about 0.2 to 0.35 on real images); papers that print 28.1 report
100 times this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.checks import check_batch, check_keys
from dspo.rewards.common import (
    cosine,
    count_blocks,
    load_state_dict,
    reject_unused,
    require,
    resolve_file,
    spec_dtype,
)
from dspo.rewards.hub_defaults import HPSV2_CHECKPOINTS, HPSV2_REPO
from dspo.rewards.transforms import hpsv2_pixels, open_clip_tokens

HEADS = 16  # ViT-H-14: vision width 1280 / head width 80, text 16 heads
_TOP_KEYS = [
    "logit_scale",
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
]
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def open_clip_to_transformers(state: Mapping[str, torch.Tensor], source: Path) -> Any:
    """A transformers ``CLIPModel`` holding an open_clip (ViT-H-14 layout) state dict."""
    from transformers import CLIPConfig, CLIPModel

    require(state, _TOP_KEYS, source)
    config = CLIPConfig(
        text_config=_tower_config(state, "", source),
        vision_config=_tower_config(state, "visual.", source),
        projection_dim=state["text_projection"].shape[1],
    )
    model = CLIPModel(config)
    read: set[str] = set()

    def get(key: str) -> torch.Tensor:
        read.add(key)
        return state[key]

    try:
        converted = _convert(get, config)
    except KeyError as error:
        raise ValueError(f"{source} lacks the open_clip weight {error}") from error
    # Older open_clip versions saved the causal mask, a constant, with the weights.
    reject_unused(state, read, source, ignored=["attn_mask"])
    expected = set(model.state_dict())
    require(converted, expected, source)
    model.load_state_dict({k: converted[k] for k in expected})
    return model


def _tower_config(state: Mapping[str, torch.Tensor], prefix: str, source: Path) -> dict:
    blocks = f"{prefix}transformer.resblocks."
    layers = count_blocks(state, blocks)
    require(state, [f"{blocks}0.mlp.c_fc.weight", f"{prefix}positional_embedding"], source)
    common = {
        "num_hidden_layers": layers,
        "intermediate_size": state[f"{blocks}0.mlp.c_fc.weight"].shape[0],
        "num_attention_heads": HEADS,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    if prefix:
        conv = state["visual.conv1.weight"]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return {
            **common,
            "hidden_size": conv.shape[0],
            "patch_size": conv.shape[-1],
            "image_size": grid * conv.shape[-1],
        }
    vocab, width = state["token_embedding.weight"].shape
    return {
        **common,
        "hidden_size": width,
        "vocab_size": vocab,
        "max_position_embeddings": state["positional_embedding"].shape[0],
    }


def _convert(get: Callable[[str], torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    out = {
        "logit_scale": get("logit_scale"),
        "visual_projection.weight": get("visual.proj").T,
        "text_projection.weight": get("text_projection").T,
        "vision_model.embeddings.patch_embedding.weight": get("visual.conv1.weight"),
        "vision_model.embeddings.class_embedding": get("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": get("visual.positional_embedding"),
        "text_model.embeddings.token_embedding.weight": get("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": get("positional_embedding"),
    }
    for ours, theirs in [
        ("vision_model.pre_layrnorm", "visual.ln_pre"),
        ("vision_model.post_layernorm", "visual.ln_post"),
        ("text_model.final_layer_norm", "ln_final"),
    ]:
        out[f"{ours}.weight"], out[f"{ours}.bias"] = get(f"{theirs}.weight"), get(f"{theirs}.bias")
    towers = [
        ("vision_model", "visual.", config.vision_config.num_hidden_layers),
        ("text_model", "", config.text_config.num_hidden_layers),
    ]
    for tower, prefix, layers in towers:
        for i in range(layers):
            out.update(
                _convert_block(
                    get, f"{prefix}transformer.resblocks.{i}.", f"{tower}.encoder.layers.{i}."
                )
            )
    return out


def _convert_block(
    get: Callable[[str], torch.Tensor], src: str, dst: str
) -> dict[str, torch.Tensor]:
    out = {}
    for theirs, ours in _BLOCK.items():
        for param in ("weight", "bias"):
            out[f"{dst}{ours}.{param}"] = get(f"{src}{theirs}.{param}")
    # nn.MultiheadAttention stores q, k and v stacked along the output dimension.
    for param in ("weight", "bias"):
        q, k, v = get(f"{src}attn.in_proj_{param}").chunk(3, dim=0)
        for name, value in zip("qkv", (q, k, v), strict=True):
            out[f"{dst}self_attn.{name}_proj.{param}"] = value
    return out


class HPSv2:
    """HPSv2 score (cosine) of each image with its prompt; `version` is v2.0 or v2.1."""

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu") -> None:
        # No `tokenizer` key: HPSv2 tokenizes with open_clip's own tokenizer, as hpsv2 does.
        check_keys(spec, {"version", "checkpoint", "repo"})
        version = spec.get("version")
        if version not in HPSV2_CHECKPOINTS:
            versions = sorted(HPSV2_CHECKPOINTS)
            raise ValueError(f"reward kind 'hpsv2' needs `version` in {versions}, got {version!r}")
        name = Path(spec.get("checkpoint", HPSV2_CHECKPOINTS[version])).name
        clash = [v for v, file in HPSV2_CHECKPOINTS.items() if file == name and v != version]
        if clash:
            raise ValueError(f"hpsv2 `version` {version} but `checkpoint` {name} is {clash[0]}")
        path = resolve_file(
            spec, "checkpoint", HPSV2_CHECKPOINTS[version], spec.get("repo", HPSV2_REPO)
        )
        self.device = device
        self.model = open_clip_to_transformers(load_state_dict(path), path)
        self.model = self.model.to(device, spec_dtype(spec)).eval()
        self.version = f"hpsv2 {version} {spec.get('checkpoint', HPSV2_CHECKPOINTS[version])}"

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_batch(images, prompts)
        size = self.model.config.vision_config.image_size
        pixels = hpsv2_pixels(images, size).to(self.device, self.model.dtype)
        image_embeds = self.model.get_image_features(pixel_values=pixels).pooler_output
        context = self.model.config.text_config.max_position_embeddings
        ids = open_clip_tokens(prompts, context).to(self.device)
        # open_clip pools at argmax(token id), not at transformers' first eos position; the
        # causal mask makes the padding after it irrelevant, so no attention mask is passed.
        hidden = self.model.text_model(input_ids=ids).last_hidden_state
        pooled = hidden[torch.arange(len(ids), device=self.device), ids.argmax(dim=-1)]
        text_embeds = self.model.text_projection(pooled)
        return cosine(image_embeds, text_embeds).cpu().numpy().astype(np.float64)
