"""Load and build Stable-Diffusion-shaped pipelines (SD1.x/2.x and SDXL).

Every model the workflow touches goes through `load_pipeline`, whether it is a hub id
(``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a local folder written by
``save_pretrained`` (the toy base model, a fine-tuned method). `build_pipeline` makes a
random-init pipeline of any size from an architecture mapping, which is how the toy world
gets its base model and how tests and benchmarks get SD1.5-shaped models offline.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from dspo.families.text import clip_encoder

# base_model.dtype, cache.dtype, evaluation.rewards.*.dtype: config dtype names.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a config dtype name to a torch dtype, with an error that lists the valid names."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


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


FAMILIES = ("sd", "sdxl")


def build_pipeline(
    architecture: Mapping[str, Any], words: Iterable[str], seed: int = 0
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A random-init SD- or SDXL-shaped pipeline from an architecture mapping.

    ``architecture`` holds keyword arguments for ``text_encoder`` (CLIPTextConfig), ``vae``
    (AutoencoderKL), ``unet`` (UNet2DConditionModel) and ``scheduler`` (DDPMScheduler), plus
    ``max_length`` (tokens per prompt) and ``family`` (``sd``, the default, or ``sdxl``).
    SDXL adds ``text_encoder_2`` (CLIPTextConfig of the CLIPTextModelWithProjection) and
    ``addition_time_embed_dim``. The UNet's cross-attention width (and, for SDXL, its added
    embedding width: pooled text + 6 time ids) follow the text encoders so they always fit.
    """
    family = architecture.get("family", "sd")
    if family not in FAMILIES:
        raise ValueError(f"architecture.family {family!r} is not one of {FAMILIES}")
    torch.manual_seed(seed)
    max_length = architecture["max_length"]
    tokenizer = build_tokenizer(words, max_length)
    text_encoder = clip_encoder(architecture["text_encoder"], tokenizer, max_length)
    vae = AutoencoderKL(**architecture["vae"])
    unet_cfg = dict(architecture["unet"])
    scheduler = DDPMScheduler(**architecture.get("scheduler", {}))
    if family == "sd":
        unet_cfg["cross_attention_dim"] = text_encoder.config.hidden_size
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**unet_cfg),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    text_encoder_2 = clip_encoder(
        architecture["text_encoder_2"], tokenizer, max_length, CLIPTextModelWithProjection
    )
    time_dim = architecture["addition_time_embed_dim"]
    unet_cfg.update(
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * time_dim,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=copy.deepcopy(tokenizer),
        unet=UNet2DConditionModel(**unet_cfg),
        scheduler=scheduler,
    )


def load_pipeline(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    without: Sequence[str] = (),
) -> DiffusionPipeline:
    """Load a diffusers pipeline from a hub id or a local ``save_pretrained`` folder.

    The pipeline class comes from the folder's ``model_index.json``, so SD1.5 and SDXL folders
    both load. A local path that does not exist fails here with its name, rather than deep
    inside a hub lookup.
    """
    text = str(path)
    _check_model_source(text)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    # SD1.x folders list a safety checker; loading it would cost memory and black out images.
    if "safety_checker" in DiffusionPipeline.load_config(text):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    # Components a job does not use are not loaded (the cache needs no denoiser: FLUX's is
    # 24 GB in bf16).
    kwargs.update(dict.fromkeys(without))
    pipe = DiffusionPipeline.from_pretrained(text, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_model_source(text: str) -> None:
    """Fail early, naming the path, when a model is neither a local folder nor a hub id."""
    if Path(text).exists():
        return
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        return
    raise FileNotFoundError(
        f"model {text!r} is neither an existing folder nor a hub id (owner/name)"
    )


# evaluation.scheduler: the schedulers an SD-shaped pipeline samples with.
SAMPLING_SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def sampling_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Swap the pipeline's scheduler for sampling, keeping its noise schedule."""
    if name not in SAMPLING_SCHEDULERS:
        raise ValueError(
            f"unknown sampling scheduler {name!r}; expected one of {sorted(SAMPLING_SCHEDULERS)}"
        )
    pipe.scheduler = SAMPLING_SCHEDULERS[name].from_config(pipe.scheduler.config)


@torch.no_grad()
def encode_text(
    pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states (N, tokens, dim) for cross-attention and, for SDXL, pooled (N, dim).

    SDXL, as its pipeline does: the penultimate hidden states of both text encoders side by
    side, and the projected pooled output of the second. SD: the last hidden states, no pooled.
    """
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    hidden, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        states = []
        for tokenizer, encoder in encoders:
            ids = tokenizer(
                chunk,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoder.device)
            if len(encoders) == 1:
                states.append(encoder(ids)[0])
                continue
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            if hasattr(out, "text_embeds"):
                pooled.append(out.text_embeds)
        hidden.append(torch.cat(states, dim=-1))
    return torch.cat(hidden), torch.cat(pooled) if pooled else None


def encode_prompts(
    pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Text-encoder hidden states (N, tokens, dim) as the UNet's cross-attention sees them."""
    return encode_text(pipe, prompts, batch_size)[0]
