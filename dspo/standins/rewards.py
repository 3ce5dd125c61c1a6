"""Reward-model checkpoints in their published layouts, random weights.

- PickScore and CLIP score: ViT-H-14 ``CLIPModel`` folders with their processor files (the
  laion folder is also the processor and tokenizer of PickScore and HPSv2).
- HPSv2: an open_clip ViT-H-14 state dict under ``{"state_dict": ...}`` in a ``.pt``, float16
  as the ``*_compressed.pt`` files are.
- LAION aesthetics: the MLP's ``.pth`` (keys ``layers.{0,2,4,6,7}.*``) beside an OpenAI CLIP
  ViT-L/14 ``CLIPModel`` folder.
- ImageReward: ``ImageReward.pt`` (BLIP ViT-L/16 ``blip.visual_encoder.*``, the BERT text
  encoder with cross-attention ``blip.text_encoder.*``, ``blip.{vision,text}_proj``, the MLP
  ``mlp.layers.*``) with ``med_config.json``, and a ``bert-base-uncased`` tokenizer folder.

The open_clip and BLIP key names are the inverse of the mappings in ``dspo/rewards``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dspo.standins.tokenizers import (
    CLIP_VOCAB_SIZE,
    bert_vocab,
    write_bert_tokenizer,
    write_clip_tokenizer,
)

VIT_H_14 = {
    "text": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
    },
    "vision": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "gelu",
    },
    "projection_dim": 1024,
}
VIT_L_14 = {
    "text": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
    },
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "quick_gelu",
    },
    "projection_dim": 768,
}
# HPSv2 and ImageReward fix 16 heads in their loaders, so the tiny towers keep 16 heads.
TINY_CLIP = {
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
    },
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 56,
    },
    "projection_dim": 16,
}
BLIP_VIT_L = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "patch_size": 16,
    "image_size": 224,
}
TINY_BLIP_VIT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "patch_size": 16,
    "image_size": 64,
}
# ImageReward's med_config.json (BLIP's BERT-base with cross-attention to the ViT).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 1024,
    "add_cross_attention": True,
}
TINY_MED = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 64,
}
# The aesthetic MLP and ImageReward's head: Linear layers at these indices, Dropout between.
AESTHETIC_HEAD = {0: 1024, 2: 128, 4: 64, 6: 16, 7: 1}
IMAGE_REWARD_HEAD = {0: 1024, 2: 128, 4: 64, 6: 16, 7: 1}
BLIP_EMBED_DIM = 256


def _clip_model(arch: Mapping[str, Any], tiny: bool) -> Any:
    from transformers import CLIPConfig, CLIPModel

    arch = TINY_CLIP if tiny else arch
    text = {**arch["text"], "vocab_size": CLIP_VOCAB_SIZE, "max_position_embeddings": 77}
    # transformers' CLIP text ids (eos 49407: pooled at the first end-of-text token).
    text |= {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
    config = CLIPConfig(
        text_config=text, vision_config=arch["vision"], projection_dim=arch["projection_dim"]
    )
    return CLIPModel(config)


def write_clip_folder(
    out: Path, arch: Mapping[str, Any], words: Iterable[str], *, tiny: bool, seed: int
) -> int:
    """A ``CLIPModel`` folder with its tokenizer and image processor, as the hub repos hold."""
    from transformers import CLIPImageProcessorPil

    torch.manual_seed(seed)
    model = _clip_model(arch, tiny)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    write_clip_tokenizer(out, words, with_json=True)
    size = (TINY_CLIP if tiny else arch)["vision"]["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=size).save_pretrained(out)
    return n


def _open_clip_block(state: Mapping[str, torch.Tensor], src: str, dst: str) -> dict:
    out = {}
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for ours, theirs in names.items():
        for param in ("weight", "bias"):
            out[f"{dst}{theirs}.{param}"] = state[f"{src}{ours}.{param}"]
    for param in ("weight", "bias"):
        stacked = [state[f"{src}self_attn.{q}_proj.{param}"] for q in "qkv"]
        out[f"{dst}attn.in_proj_{param}"] = torch.cat(stacked)
    return out


def open_clip_state(model: Any) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPModel``'s weights under open_clip's (ViT-H-14) key names."""
    s = model.state_dict()
    v, t = "vision_model.", "text_model."
    out = {
        "logit_scale": s["logit_scale"],
        "visual.proj": s["visual_projection.weight"].T.contiguous(),
        "text_projection": s["text_projection.weight"].T.contiguous(),
        "visual.conv1.weight": s[f"{v}embeddings.patch_embedding.weight"],
        "visual.class_embedding": s[f"{v}embeddings.class_embedding"],
        "visual.positional_embedding": s[f"{v}embeddings.position_embedding.weight"],
        "token_embedding.weight": s[f"{t}embeddings.token_embedding.weight"],
        "positional_embedding": s[f"{t}embeddings.position_embedding.weight"],
    }
    for ours, theirs in [
        (f"{v}pre_layrnorm", "visual.ln_pre"),
        (f"{v}post_layernorm", "visual.ln_post"),
        (f"{t}final_layer_norm", "ln_final"),
    ]:
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = s[f"{ours}.weight"], s[f"{ours}.bias"]
    for tower, prefix, layers in [
        (v, "visual.", model.config.vision_config.num_hidden_layers),
        (t, "", model.config.text_config.num_hidden_layers),
    ]:
        for i in range(layers):
            out.update(
                _open_clip_block(
                    s, f"{tower}encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
                )
            )
    return out


def write_hpsv2(out_file: Path, *, tiny: bool, seed: int) -> int:
    """``HPS_v2.1_compressed.pt``: ``{"state_dict": open_clip ViT-H-14 weights}``, float16."""
    torch.manual_seed(seed)
    model = _clip_model(VIT_H_14, tiny)
    state = {k: v.half() for k, v in open_clip_state(model).items()}
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, out_file)
    return n


def _head(widths: Mapping[int, int], in_features: int) -> dict[str, torch.Tensor]:
    """Linear layers at the given indices (Dropout elsewhere), as the originals' nn.Sequential."""
    state, width = {}, in_features
    for index, out_features in sorted(widths.items()):
        layer = nn.Linear(width, out_features)
        state[f"{index}.weight"], state[f"{index}.bias"] = layer.weight.data, layer.bias.data
        width = out_features
    return state


def write_aesthetics(
    out_file: Path, clip_dir: Path, words: Iterable[str], *, tiny: bool, seed: int
) -> int:
    """The MLP ``.pth`` (a bare state dict, ``layers.*``) and the CLIP ViT-L/14 folder it reads."""
    n = write_clip_folder(clip_dir, VIT_L_14, words, tiny=tiny, seed=seed)
    torch.manual_seed(seed + 1)
    width = (TINY_CLIP if tiny else VIT_L_14)["projection_dim"]
    head = {f"layers.{k}": v for k, v in _head(AESTHETIC_HEAD, width).items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head, out_file)
    return n + sum(v.numel() for v in head.values())


def _blip_vision_state(tiny: bool) -> dict[str, torch.Tensor]:
    from transformers import BlipVisionConfig, BlipVisionModel

    arch = TINY_BLIP_VIT if tiny else BLIP_VIT_L
    config = BlipVisionConfig(**arch, num_attention_heads=16, layer_norm_eps=1e-6)
    s = BlipVisionModel(config).state_dict()
    e = "blip.visual_encoder."
    out = {
        f"{e}patch_embed.proj.weight": s["embeddings.patch_embedding.weight"],
        f"{e}patch_embed.proj.bias": s["embeddings.patch_embedding.bias"],
        f"{e}cls_token": s["embeddings.class_embedding"],
        f"{e}pos_embed": s["embeddings.position_embedding"],
        f"{e}norm.weight": s["post_layernorm.weight"],
        f"{e}norm.bias": s["post_layernorm.bias"],
    }
    names = {
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "self_attn.qkv": "attn.qkv",
        "self_attn.projection": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(config.num_hidden_layers):
        for ours, theirs in names.items():
            for param in ("weight", "bias"):
                out[f"{e}blocks.{i}.{theirs}.{param}"] = s[f"encoder.layers.{i}.{ours}.{param}"]
    return out


def write_image_reward(folder: Path, words: Iterable[str], *, tiny: bool, seed: int) -> int:
    """``ImageReward.pt`` (a bare state dict), ``med_config.json`` and a BERT tokenizer."""
    from transformers import BlipTextConfig, BlipTextModel

    folder.mkdir(parents=True, exist_ok=True)
    med = {**MED_CONFIG, **(TINY_MED if tiny else {})}
    vision_width = (TINY_BLIP_VIT if tiny else BLIP_VIT_L)["hidden_size"]
    med["encoder_width"] = vision_width
    (folder / "med_config.json").write_text(json.dumps(med, indent=2) + "\n")
    torch.manual_seed(seed)
    state = _blip_vision_state(tiny)
    keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "layer_norm_eps",
        "hidden_act",
    ]
    text = BlipTextModel(
        BlipTextConfig(
            **{k: med[k] for k in keys}, encoder_hidden_size=vision_width, is_decoder=True
        ),
        add_pooling_layer=False,
    )
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    del text
    state["blip.vision_proj.weight"] = torch.randn(BLIP_EMBED_DIM, vision_width) * 0.02
    state["blip.vision_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)
    state["blip.text_proj.weight"] = torch.randn(BLIP_EMBED_DIM, med["hidden_size"]) * 0.02
    state["blip.text_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)
    state |= {f"mlp.layers.{k}": v for k, v in _head(IMAGE_REWARD_HEAD, med["hidden_size"]).items()}
    torch.save(state, folder / "ImageReward.pt")
    n = sum(v.numel() for v in state.values())
    del state
    gc.collect()
    write_bert_tokenizer(folder.parent / "bert-base-uncased", words)
    return n


# Salesforce/blip-vqa-base: BLIP's ViT-B/16 at 384 px and BERT-base with cross-attention.
BLIP_VQA_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
    "image_size": 384,
}
TINY_BLIP_VQA_VISION = {**BLIP_VQA_VISION, **TINY_BLIP_VIT, "num_attention_heads": 2}
BLIP_VQA_TEXT = {k: MED_CONFIG[k] for k in ("hidden_size", "intermediate_size")} | {
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
}
TINY_BLIP_VQA_TEXT = {k: TINY_MED[k] for k in BLIP_VQA_TEXT}


def blip_vqa_config(tokenizer: Any, tiny: bool) -> Any:
    """``BlipConfig`` of ``Salesforce/blip-vqa-base`` (or tiny), its token ids ``tokenizer``'s."""
    from transformers import BlipConfig

    vision = TINY_BLIP_VQA_VISION if tiny else BLIP_VQA_VISION
    text = {
        **(TINY_BLIP_VQA_TEXT if tiny else BLIP_VQA_TEXT),
        "vocab_size": len(tokenizer),
        "encoder_hidden_size": vision["hidden_size"],
        "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    return BlipConfig(vision_config=vision, text_config=text)


def write_blip_vqa(folder: Path, words: Iterable[str], *, tiny: bool, seed: int) -> int:
    """A ``Salesforce/blip-vqa-base`` folder: ``BlipForQuestionAnswering`` weights and config,
    BERT uncased's vocabulary with BLIP's ``[DEC]`` and ``[ENC]`` (30,524 tokens), and the
    ``BlipImageProcessor`` config (384 px; 64 tiny)."""
    from transformers import BertTokenizer, BlipForQuestionAnswering, BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(bert_vocab([*words, "yes", "no"])) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(blip_vqa_config(tokenizer, tiny))
    model.save_pretrained(folder)
    side = (TINY_BLIP_VQA_VISION if tiny else BLIP_VQA_VISION)["image_size"]
    BlipImageProcessorPil(size={"height": side, "width": side}).save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return n
