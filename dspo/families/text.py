"""Tiny random text encoders and tokenizers for toy pipelines built offline.

CLIP towers come with :func:`build_tokenizer`'s hand-made BPE vocabulary; the T5
tokenizer is a Unigram vocabulary holding each given word as one piece, saved and loaded
like the real T5 tokenizer of SD3 and FLUX.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)


def build_tokenizer(words: Iterable[str], max_length: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over printable ASCII whose merges make each given word one token.

    Real CLIP vocabularies cannot be downloaded here; this one has the same class, special
    tokens and save format, so the pipeline loads exactly like SD1.5's.
    """
    chars = [chr(i) for i in range(33, 127)]
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    known = set(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}):
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merges.append((pieces[0], pieces[1]))
            if merged not in known:
                known.add(merged)
                vocab.append(merged)
            pieces = [merged, *pieces[2:]]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        model_max_length=max_length,
    )


def clip_encoder(
    cfg: Mapping[str, Any], tokenizer: CLIPTokenizer, max_length: int, cls: type = CLIPTextModel
):
    """A random CLIP text tower of ``cls`` (with or without projection) for ``tokenizer``."""
    return cls(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **cfg,
        )
    )


def build_t5_tokenizer(words: Iterable[str], max_length: int) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer whose pieces are the special tokens and the given words.

    Unknown words map to <unk>; T5's extra sentinel ids are left out (encoders never use them).
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in sorted({w.lower() for w in words})]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def t5_encoder(cfg: Mapping[str, Any], tokenizer: T5Tokenizer) -> T5EncoderModel:
    """A random T5 encoder (``d_model``, ``d_kv``, ``d_ff``, ``num_layers``, ``num_heads``)."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **cfg,
        )
    )
