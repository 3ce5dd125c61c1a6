"""Building, saving and loading SD-shaped pipelines through the code real checkpoints use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from dspo.families.sd import encode_text
from dspo.families.sd_pipeline import load_pipeline
from dspo.families.text import build_tokenizer


def test_tokenizer_makes_known_words_single_tokens() -> None:
    tok = build_tokenizer(["red", "circle"], max_length=8)
    tokens = tok.convert_ids_to_tokens(tok("a red circle").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "red</w>" in tokens and "circle</w>" in tokens
    # An unknown word still tokenises, character by character.
    assert len(tok("zebra").input_ids) == 2 + 5


def test_saved_pipeline_loads_in_stock_diffusers(tiny_model: Path) -> None:
    stock = StableDiffusionPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    ours = load_pipeline(str(tiny_model))
    assert type(ours).__name__ == "StableDiffusionPipeline"
    for a, b in zip(stock.unet.parameters(), ours.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ours.unet.config.cross_attention_dim == ours.text_encoder.config.hidden_size


def test_encode_prompts_shape_and_determinism(tiny_model: Path) -> None:
    pipe = load_pipeline(str(tiny_model))
    first = encode_text(pipe, ["a red circle", "a blue square", ""], batch_size=2)[0]
    assert first.shape == (3, 12, 32)
    assert torch.equal(first, encode_text(pipe, ["a red circle", "a blue square", ""])[0])
    assert not torch.allclose(first[0], first[1])


def test_missing_local_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_pipeline(str(tmp_path / "does-not-exist"))


def test_unknown_dtype_is_named(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="float8"):
        load_pipeline(str(tiny_model), dtype="float8")
