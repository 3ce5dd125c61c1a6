"""``dspo bench train --count-only``: both modes' FLOPs per pair at any shape, without weights.

The models are built on PyTorch's ``meta`` device, where tensors have shapes and no storage,
and one optimiser step of each mode runs there under the flop counter: the same step code,
objective and model wrappers as the timed benchmark (`dspo.bench.modes`), with the loader's
and the cache's tensors replaced by meta tensors of their shapes. Nothing is computed, so
SD1.5 at 512 px counts in seconds on a CPU. On the meta device attention is counted through
its decomposition into matrix products, as the timed CPU run is when it uses the math kernel
(a fused kernel's backward, which recomputes the scores, counts one product more).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from dspo.bench.flops import counted
from dspo.bench.modes import Batch, Mode, adapt_unet, make_step, upstream_batch

if TYPE_CHECKING:
    from dspo.bench.spec import BenchSpec

META = torch.device("meta")


def _meta_mode(spec: BenchSpec, pipe, name: str, needs_reference: bool) -> Mode:
    from dspo.families import pipeline_family
    from dspo.families.base import CROSS_ATTENTION, batch_key
    from dspo.objectives import get_objective
    from dspo.objectives.terms import ReferenceStats
    from dspo.training.preference import PreferenceModel

    unet = adapt_unet(copy.deepcopy(pipe.unet), spec)
    precomputed = name == "ours-pre"
    family = pipeline_family(pipe)
    model = PreferenceModel(unet, family, needs_reference and not precomputed, bool(spec.lora))
    if name == "upstream" and needs_reference and spec.lora and spec.upstream_reference == "copy":
        model.use_reference(copy.deepcopy(pipe.unet))
    local = spec.pairs // spec.accumulation
    objective = get_objective(spec.method)
    tokens = pipe.tokenizer.model_max_length
    width = pipe.text_encoder.config.hidden_size
    channels = pipe.unet.config.in_channels

    def next_batch(step: int, micro: int) -> Batch:
        if name == "upstream":
            data = {
                f"pixels_{side}": torch.empty(local, 3, spec.resolution, spec.resolution)
                for side in "wl"
            }
            data["input_ids"] = torch.zeros(local, tokens, dtype=torch.long)
            encoders = (pipe.vae, pipe.text_encoder)
            return upstream_batch(mode, *encoders, data, None, family, META)
        latents = torch.empty(local, channels, spec.latent, spec.latent, device=META)
        batch = {
            "latents_w": latents,
            "latents_l": torch.empty_like(latents),
            **{
                batch_key(CROSS_ATTENTION, side): torch.empty(local, tokens, width, device=META)
                for side in "wl"
            },
            "noise": torch.empty_like(latents),
            "t": torch.zeros(local, dtype=torch.long, device=META),
        }
        if precomputed:
            rows = local if objective.preferred_only else 2 * local
            batch["reference"] = ReferenceStats(
                torch.empty(rows, device=META), torch.empty_like(latents)
            )
        return batch

    mode = Mode(model, next_batch, counting=True)
    return mode


def count_on_meta(spec: BenchSpec) -> dict[str, Any]:
    """FLOPs per pair of one optimiser step of each mode, counted on the meta device."""
    from dspo.bench.spec import MODES, WORDS
    from dspo.families import build_pipeline
    from dspo.objectives import get_objective

    with META:
        pipe = build_pipeline(spec.architecture, WORDS, seed=spec.seed)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    needs_reference = get_objective(spec.method).needs_reference
    modes = {}
    for name in (*MODES, *(("ours-pre",) if spec.precomputed else ())):
        mode = _meta_mode(spec, pipe, name, needs_reference)
        with META:
            _, flops = counted(partial(make_step(spec, mode), 0))
        modes[name] = {
            "flops_per_pair": flops / spec.pairs,
            "data_flops_per_pair": mode.data_flops / spec.pairs,
        }
    ours, upstream = modes["ours"], modes["upstream"]
    return {
        "spec": {k: v for k, v in vars(spec).items() if k != "architecture"},
        "resolution": spec.resolution,
        "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 2),
        "counted_on": "meta",
        "modes": modes,
        "ratio": {"flops_upstream_over_ours": upstream["flops_per_pair"] / ours["flops_per_pair"]},
    }


def format_count(result: dict[str, Any]) -> str:
    """The lines printed by ``dspo bench train --count-only``."""
    s = result["spec"]
    tuning = f"LoRA rank {s['lora']}" if s["lora"] else "full fine-tuning"
    lines = [
        f"dspo bench train --count-only: arch {s['arch_name']} "
        f"(UNet {result['unet_params_m']} M params), latent {s['latent']}x{s['latent']} "
        f"({result['resolution']} px), {s['pairs']} pairs/step in {s['accumulation']} "
        f"micro-step(s), method {s['method']}, {tuning}, gradient checkpointing "
        f"{'on' if s['checkpointing'] else 'off'}; counted on the meta device, nothing timed",
        f"{'mode':<10}{'GFLOP/pair':>14}{'of which VAE + text':>22}",
    ]
    for name, m in result["modes"].items():
        lines.append(
            f"{name:<10}{m['flops_per_pair'] / 1e9:>14.6g}{m['data_flops_per_pair'] / 1e9:>22.6g}"
        )
    lines.append(
        f"FLOPs per pair upstream/ours: x{result['ratio']['flops_upstream_over_ours']:.3f}"
    )
    if "ours-pre" in result["modes"]:
        pre = result["modes"]["ours-pre"]["flops_per_pair"]
        lines.append(
            f"FLOPs per pair ours/ours-pre (reference precomputed): "
            f"x{result['modes']['ours']['flops_per_pair'] / pre:.3f}"
        )
    return "\n".join(lines)
