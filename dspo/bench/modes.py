"""The two training loops `dspo bench train` times, and the measurement of one of them.

``ours`` is the trainer's loop: batches from the latent + text-embedding cache, the reference
from `dspo.training.preference.PreferenceModel` (a frozen copy, or with LoRA the adapters disabled).
``upstream`` is the loop of the public Diffusion-DPO / DSPO scripts as their launchers run
it: a `torch.utils.data.DataLoader` whose worker processes decode both JPEGs, resize, crop
and flip them (redrawn at every visit) and tokenise the caption; the training process then
VAE-encodes the images (a posterior sample) and runs the text encoder at every micro-step.
Its reference is a second UNet in full fine-tuning and the adapters disabled with LoRA, as in
the public LoRA script; ``--upstream-reference copy`` holds a second full UNet instead.

Both modes run the same optimiser step: ``accumulation`` micro-batches of the step's rows
(`dspo.training.preference.step_rows`), the loss of each divided by their number before its backward
pass, gradient clipping at 1.0, then AdamW; gradient checkpointing applies to the policy UNet
in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dspo.bench.flops import counted, dense_bf16_peak
from dspo.bench.spec import AUTOCAST, LORA_TARGETS, ResidentPeak
from dspo.core.seeding import seeded_generator

if TYPE_CHECKING:
    from dspo.bench.spec import BenchSpec
    from dspo.training.preference import PreferenceModel


Batch = dict[str, torch.Tensor]


@dataclass
class Mode:
    """A policy/reference model and its batches: ``next_batch(step, micro)`` on the device."""

    model: PreferenceModel
    next_batch: Callable[[int, int], Batch]
    close: Callable[[], None] = lambda: None
    # FLOPs of the data path (VAE and text encoder), counted only while ``counting`` is set.
    counting: bool = False
    data_flops: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def micro_rows(spec: BenchSpec, n: int, step: int, micro: int) -> list[int]:
    """The rows of one micro-batch: the trainer's rows for the step, split in order."""
    from dspo.training.preference import step_rows

    local = spec.pairs // spec.accumulation
    return step_rows(n, spec.pairs, spec.seed, step)[micro * local : (micro + 1) * local].tolist()


def adapt_unet(unet, spec: BenchSpec, frozen_dtype: torch.dtype = torch.float32):
    """LoRA on the attention projections when asked, and gradient checkpointing if set."""
    from peft import LoraConfig

    if spec.lora:
        unet.requires_grad_(False)
        if frozen_dtype != torch.float32:
            unet.to(dtype=frozen_dtype)
        unet.add_adapter(
            LoraConfig(
                r=spec.lora,
                lora_alpha=spec.lora,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            )
        )
        # The adapters train in fp32 over a frozen base that may be in the half dtype.
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if spec.checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def _policy_unet(spec: BenchSpec, root: Path, frozen_dtype: torch.dtype = torch.float32):
    return adapt_unet(load_bench_family(root).load_denoiser(root / "model"), spec, frozen_dtype)


def build_ours(
    spec: BenchSpec, root: Path, needs_reference: bool, precomputed: bool = False
) -> Mode:
    """Policy + reference as the trainer builds them, and batches read from the cache.

    ``precomputed``: the reference ran before training (dspo.training.reference): no reference is
    held or run, and each micro-batch reads what the objective uses of it, per pair-visit,
    from memory-mapped files as the trainer does (here of random values: only the time
    counts).
    """
    from dspo.data.cache_load import load_cache
    from dspo.objectives import get_objective
    from dspo.training.preference import PreferenceModel, make_batch
    from dspo.training.reference import stats_of

    cache = load_cache(root / "cache")
    # As the trainer does under mixed precision: a frozen reference copy in the half dtype.
    reference_dtype = getattr(torch, AUTOCAST.get(spec.dtype, "float32"))
    unet = _policy_unet(spec, root)
    online = needs_reference and not precomputed
    family = load_bench_family(root)
    model = PreferenceModel(unet, family, online, bool(spec.lora), reference_dtype)
    model.to(spec.device)
    objective = get_objective(spec.method)
    stored = _stored_reference(spec, root, cache, objective) if precomputed else None

    def next_batch(step: int, micro: int) -> Batch:
        rows = torch.tensor(micro_rows(spec, len(cache), step, micro))
        batch = make_batch(cache, rows, 0.0, seeded_generator(spec.seed, step, micro), family)
        batch = {k: v.to(spec.device) for k, v in batch.items()}
        if stored is not None:
            local = len(rows)
            first = (step * spec.accumulation + micro) * local % len(stored[0])
            errors = torch.from_numpy(np.array(stored[0][first : first + local]))
            ref = torch.from_numpy(np.array(stored[1][first : first + local]))
            ref = ref.to(spec.device, torch.float32)
            template = stats_of(torch.cat([ref, ref]), torch.cat([ref, ref]), objective)
            preferred = ref if template.preferred is not None else None
            batch["reference"] = type(template)(errors.T.reshape(-1).to(spec.device), preferred)
        return batch

    extras = {"reference_bytes_per_pair_visit": stored[2]} if stored is not None else {}
    return Mode(model, next_batch, extras=extras)


def _stored_reference(spec: BenchSpec, root: Path, cache, objective):
    """Memory-mapped errors (visits, 2) and predictions (visits, C, H, W) of random values
    for every visit the benchmark makes, and their bytes per pair-visit."""
    if not objective.reference_precomputable:
        raise ValueError(f"objective {objective.name!r} cannot use a precomputed reference")
    visits = (spec.warmup + spec.steps + 1) * spec.pairs
    shape = tuple(cache.manifest["latent_shape"])
    rng = np.random.default_rng(spec.seed)
    errors = np.lib.format.open_memmap(root / "ref_errors.npy", "w+", np.float32, (visits, 2))
    errors[:] = rng.random((visits, 2), dtype=np.float32)
    preds = np.lib.format.open_memmap(root / "ref_preds.npy", "w+", np.float32, (visits, *shape))
    preds[:] = rng.standard_normal((visits, *shape), dtype=np.float32)
    stored = 8 + (4 * int(np.prod(shape)) if objective.uses_reference_prediction else 0)
    return errors, preds, stored


class UpstreamPairs(torch.utils.data.Dataset):
    """One visit of a pair as the public scripts' loader prepares it, keyed by (step, row).

    Crop and flip are drawn per visit from (seed, step, row), so they do not depend on the
    number of workers.
    """

    def __init__(self, table, tokenizer, resolution: int, seed: int) -> None:
        self.captions = table["caption"].tolist()
        self.jpegs = {"w": table["jpg_w"].tolist(), "l": table["jpg_l"].tolist()}
        self.tokenizer, self.resolution, self.seed = tokenizer, resolution, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        from dspo.data.cache_images import load_image

        step, row = key
        item: Batch = {"step": torch.tensor(step)}
        for side_index, side in enumerate("wl"):
            rng = np.random.default_rng([self.seed, step, row, side_index])
            image = load_image(
                self.jpegs[side][row], self.resolution, crop="random", flip=True, rng=rng
            )
            item[f"pixels_{side}"] = torch.from_numpy(image.pixels)
        item["input_ids"] = self.tokenizer(
            self.captions[row],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids[0]
        return item


def visit_order(spec: BenchSpec, n: int, steps: int) -> list[list[tuple[int, int]]]:
    """The loader's batches: one list of (step, row) per micro-step, in training order."""
    return [
        [(step, row) for row in micro_rows(spec, n, step, micro)]
        for step in range(steps)
        for micro in range(spec.accumulation)
    ]


def build_upstream(spec: BenchSpec, root: Path, needs_reference: bool) -> Mode:
    """The public scripts' loop: data-loader workers, then VAE and text encoder every step."""
    import pandas as pd

    from dspo.families import pipeline_family
    from dspo.families.sd_pipeline import load_pipeline
    from dspo.training.preference import PreferenceModel

    # The public scripts keep the frozen networks in the mixed-precision dtype.
    frozen = getattr(torch, AUTOCAST.get(spec.dtype, "float32"))
    pipe = load_pipeline(str(root / "model"), device=spec.device)
    vae, text_encoder = pipe.vae.requires_grad_(False), pipe.text_encoder.requires_grad_(False)
    if frozen != torch.float32:
        vae.to(dtype=frozen)
        text_encoder.to(dtype=frozen)
    # The pipeline's own UNet is the policy: loading another would hold two copies.
    unet = adapt_unet(pipe.unet, spec, frozen)
    family = pipeline_family(pipe)
    model = PreferenceModel(unet, family, needs_reference, bool(spec.lora), frozen)
    if needs_reference and spec.lora and spec.upstream_reference == "copy":
        copy = family.load_denoiser(root / "model")
        model.use_reference(copy.to(dtype=frozen))
    model.to(spec.device)
    table = pd.read_parquet(root / "pairs.parquet")
    dataset = UpstreamPairs(table, pipe.tokenizer, spec.resolution, spec.seed)
    workers = spec.resolved_workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=visit_order(spec, len(table), spec.warmup + spec.steps + 1),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=spec.device == "cuda",
    )
    batches: Iterator[Batch] = iter(loader)

    def next_batch(step: int, micro: int) -> Batch:
        data = next(batches)
        if int(data["step"][0]) != step:
            raise RuntimeError(f"the loader is at step {int(data['step'][0])}, the loop at {step}")
        gen = seeded_generator(spec.seed, step, micro)
        return upstream_batch(mode, vae, text_encoder, data, gen, family, spec.device)

    def close() -> None:
        # Ends the persistent workers now rather than at interpreter exit.
        nonlocal batches
        batches = iter(())

    mode = Mode(model, next_batch, close, extras={"loader_workers": workers})
    return mode


@torch.no_grad()
def _encode(vae, text_encoder, data: Batch, gen: torch.Generator | None, device):
    pixels = torch.cat([data["pixels_w"], data["pixels_l"]]).to(device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample(generator=gen) * vae.config.scaling_factor
    text = text_encoder(data["input_ids"].to(device))[0]
    return latents.float(), text.float()


def upstream_batch(mode: Mode, vae, text_encoder, data: Batch, gen, family, device) -> Batch:
    """What the public scripts do with a loader batch: VAE, text encoder, noise, timesteps."""
    from dspo.families.base import CROSS_ATTENTION, batch_key

    if mode.counting:
        (latents, text), flops = counted(lambda: _encode(vae, text_encoder, data, gen, device))
        mode.data_flops += flops
    else:
        latents, text = _encode(vae, text_encoder, data, gen, device)
    lat_w, lat_l = latents.chunk(2)
    noise = torch.randn(lat_w.shape, generator=gen)
    t = family.sample_timesteps(len(lat_w), gen, lat_w.shape[1:])
    return {
        "latents_w": lat_w,
        "latents_l": lat_l,
        **{batch_key(CROSS_ATTENTION, side): text for side in "wl"},
        "noise": noise.to(device),
        "t": t.to(device),
    }


def load_bench_family(root: Path):
    """The model family of the benchmark's model folder (its noise schedule and calls)."""
    from dspo.families import load_family

    return load_family(root / "model")


def _autocast(spec: BenchSpec):
    """Mixed precision as the trainer uses it on CUDA: fp32 weights, half-precision compute."""
    if spec.dtype == "fp32":
        return nullcontext()
    return torch.autocast(spec.device, dtype=getattr(torch, AUTOCAST[spec.dtype]))


def build_mode(spec: BenchSpec, root: Path, mode: str, needs_reference: bool) -> Mode:
    if mode == "ours":
        return build_ours(spec, root, needs_reference)
    if mode == "ours-pre":
        return build_ours(spec, root, needs_reference, precomputed=True)
    if mode == "upstream":
        return build_upstream(spec, root, needs_reference)
    raise ValueError(f"unknown mode {mode!r}; expected 'ours', 'ours-pre' or 'upstream'")


def make_step(spec: BenchSpec, mode: Mode) -> Callable[[int], torch.Tensor]:
    """One optimiser step of ``mode``: accumulate the micro-batches, clip, AdamW; its loss."""
    from dspo.objectives import get_objective, objective_kwargs
    from dspo.training.preference import preference_loss

    objective = get_objective(spec.method)
    hparams = objective_kwargs(spec.method)
    mode.model.train()
    trainable = [p for p in mode.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2)

    def step(i: int) -> float:
        total = torch.zeros((), device=spec.device)
        for micro in range(spec.accumulation):
            batch = mode.next_batch(i, micro)
            with _autocast(spec):
                loss, _ = preference_loss(mode.model, batch, objective, hparams)
            (loss / spec.accumulation).backward()
            total += loss.detach() / spec.accumulation
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    return step


def measure(spec: BenchSpec, root: Path, mode_name: str) -> dict[str, Any]:
    """Time ``spec.steps`` optimiser steps after ``spec.warmup``, then count one step's FLOPs."""
    from dspo.objectives import get_objective

    cuda = spec.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        resident = ResidentPeak()
        resident.start()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    mode = build_mode(spec, root, mode_name, get_objective(spec.method).needs_reference)
    try:
        step = make_step(spec, mode)
        for i in range(spec.warmup):
            float(step(i))
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        # float(): one host sync per optimiser step, as the trainer logs its loss.
        losses = [float(step(i)) for i in range(spec.warmup, spec.warmup + spec.steps)]
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resident.peak_mib()
        # One more step under the counter, after the timing: the counter slows what it sees.
        mode.counting = True
        _, flops = counted(lambda: step(spec.warmup + spec.steps))
    finally:
        mode.close()
    trainable = sum(p.numel() for p in mode.model.parameters() if p.requires_grad)
    pairs_per_s = spec.steps * spec.pairs / seconds
    flops_per_pair = flops / spec.pairs
    result = {
        "seconds": seconds,
        "s_per_step": seconds / spec.steps,
        "pairs_per_s": pairs_per_s,
        "peak_mib": peak,
        "trainable_params_m": round(trainable / 1e6, 3),
        "last_loss": losses[-1],
        "flops_per_pair": flops_per_pair,
        "data_flops_per_pair": mode.data_flops / spec.pairs,
        "tflops_per_s": flops_per_pair * pairs_per_s / 1e12,
        **mode.extras,
    }
    if cuda:
        name = torch.cuda.get_device_name()
        peak_tflops = dense_bf16_peak(name)
        result.update(
            device_name=name,
            dense_bf16_peak_tflops=peak_tflops,
            peak_fraction=result["tflops_per_s"] / peak_tflops if peak_tflops else None,
        )
    return result
