"""The model a training run updates: its denoiser (full or LoRA) and reference, and how it is
written out in the formats the stock diffusers pipelines load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dspo.core.content import write_content_record
from dspo.data.cache_load import PairCache
from dspo.families import load_family
from dspo.families.base import Family
from dspo.objectives import Objective
from dspo.training.model_card import write_model_card
from dspo.training.preference import PreferenceModel
from dspo.training.settings import TrainSettings

if TYPE_CHECKING:
    from diffusers import ModelMixin

# The model folder's record of the run that wrote it: its resolved config and summary.
MODEL_CONFIG = "dspo_config.json"


def build_model(
    settings: TrainSettings,
    objective: Objective,
    base_model: str,
    cache: PairCache,
    precision: str,
    online_reference: bool = True,
) -> PreferenceModel:
    """The policy denoiser (LoRA when configured) and its reference, checked against the cache.

    The policy starts from ``settings.init`` when set (a later round of AI feedback), else
    from ``base_model``; the reference is always ``base_model``'s denoiser."""
    family = load_family(base_model, **settings.family_settings)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    lora = settings.lora
    # LoRA under mixed precision (a GPU): the frozen base only runs forward passes under
    # autocast, so it is loaded and held in the half dtype, as the public LoRA scripts hold
    # it (FLUX's 12 B transformer: 24 GB instead of 48 per process); the adapters, which
    # the optimiser updates, stay float32.
    denoiser = family.load_denoiser(settings.init or base_model, dtype=half if lora else None)
    channels = family.latent_channels(denoiser)
    if cache.manifest["latent_shape"][0] != channels:
        raise ValueError(
            f"cache of {cache.manifest['model']} has {cache.manifest['latent_shape'][0]} latent "
            f"channels, the {family.denoiser} of {base_model} expects {channels}"
        )
    if cache.family != family.name:
        raise ValueError(
            f"cache of {cache.manifest['model']} holds {cache.family} embeddings, "
            f"the {family.denoiser} of {base_model} is {family.name}: rebuild the cache with "
            "this model"
        )
    if lora:
        family.add_lora(denoiser, lora.rank, lora.alpha, list(lora.target_modules))
        for p in denoiser.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if settings.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    reference_dtype = half or torch.float32
    needs = objective.needs_reference and online_reference
    model = PreferenceModel(denoiser, family, needs, bool(lora), reference_dtype)
    if settings.init and model.reference is not None:
        # Training starts from another model (a later round), the reference stays the base.
        reference = family.load_denoiser(base_model).requires_grad_(False).eval()
        model.use_reference(reference.to(reference_dtype))
    speed_up(model, settings)
    return model


def speed_up(model: PreferenceModel, settings: TrainSettings) -> None:
    """The GPU switches on the policy and its frozen reference copy (see :func:`switch`)."""
    switch(model.denoiser, settings, settings.compile.policy)
    if model.reference is not None:
        switch(model.reference, settings, settings.compile.reference)


def switch(denoiser: ModelMixin, settings: TrainSettings, compile_it: bool) -> ModelMixin:
    """Channels-last weights and torch.compile, each off unless set.

    They change how the numbers are computed, not which: a step agrees with the plain one up
    to floating-point rounding (tests/training/test_policy.py). ``Module.compile`` compiles in
    place, so state-dict keys, checkpoints and saved files stay those of the plain module.
    """
    if settings.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if compile_it:
        denoiser.compile(mode=settings.compile.mode)
    return denoiser


def use_tf32(enabled: bool) -> bool:
    """Let float32 matrix products and convolutions run on TF32 tensor cores (Ampere and
    newer NVIDIA GPUs: a 10-bit mantissa inside the product, float32 in and out), or forbid
    it. Process-wide. Returns whether TF32 is in effect: ``enabled`` and such a GPU present.
    """
    if not torch.cuda.is_available():
        # The process-wide precision switch also reaches oneDNN's CPU matmuls (bf16 passes on
        # CPUs with AMX), which would move CPU results: a machine without CUDA is left as is.
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return enabled and torch.cuda.get_device_capability()[0] >= 8


def save_model(
    denoiser: ModelMixin, family: Family, settings: TrainSettings, base_model: str, out_dir: Path
) -> None:
    """Write what users load: a full diffusers pipeline, or standard LoRA safetensors.

    The model family writes LoRA weights as its pipeline class does, so that class's
    ``load_lora_weights`` reads them.
    """
    family.save_denoiser(denoiser, base_model, out_dir, lora=settings.lora is not None)


def write_model_folder(
    denoiser: ModelMixin,
    family: Family,
    settings: TrainSettings,
    base_model: str,
    record: Mapping[str, Any],
    card: Mapping[str, Any],
    data: str,
    folder: Path,
) -> None:
    """The trained model (:func:`save_model`), its record, its card and, last, its content
    record, which makes the folder's content key (:mod:`dspo.core.content`) its files' hash."""
    save_model(denoiser, family, settings, base_model, folder)
    (folder / MODEL_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(folder, card, base_model, data)
    write_content_record(folder)
