"""The compute side of ``dspo budget``: FLOPs per item, which :mod:`dspo.bench.budget`
multiplies by the config's counts.

FLOPs per image are counted by `dspo.bench.budget_count` (the project's flop counter on the
meta device; table ``dspo/resources/budget_flops.json``) and scaled by pixels from the family's
native resolution: the cache's VAE encodes, training (per pair: forward + backward of the
policy on each image it trains on, a no-grad reference forward on each image when the
objective needs one, one forward more under gradient checkpointing), and sampling (steps x 2
with classifier-free guidance), the Inception-v3 of the image-quality step (a counted
figure per image, prompt sets only) and BLIP VQA's B-VQA scoring (counted figures per image and
per noun phrase).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.objectives import get_objective

FLOPS_TABLE = Path(__file__).parents[1] / "resources" / "budget_flops.json"
# The FID Inception-v3 (evaluation.quality) per image, whatever its size (it resizes to
# 299 px): counted with torch's FlopCounterMode on torch-fidelity's extractor.
INCEPTION_FLOPS = 11.43e9
# B-VQA with BLIP VQA (blip-vqa-base's architecture, 0.36 B parameters) per image: the vision
# encoder once at 384 px, and per noun phrase the question's encoder (6 tokens) and one decoder
# step; counted with torch's FlopCounterMode on the full-size stand-in (dspo.standins).
# T2I-CompBench's attribute-binding prompts ("a red car and a blue bench") have two phrases.
BVQA_IMAGE_FLOPS = 110.97e9
BVQA_PHRASE_FLOPS = 18.07e9
BVQA_PHRASES = 2


def denoiser_flops(family: str | None, resolution: int) -> dict[str, float]:
    """Counted FLOPs per image of the family's denoiser and VAE, scaled to ``resolution``."""
    table = json.loads(FLOPS_TABLE.read_text())
    if family not in table:
        return {}
    counts = dict(table[family])
    scale = (resolution / counts.pop("resolution")) ** 2
    params = counts.pop("denoiser_params")
    return {**{k: v * scale for k, v in counts.items()}, "denoiser_params": params}


def train_flops_per_pair(flops: Mapping[str, float], objective: str, lora: bool, ckpt: bool):
    """One training pair: the policy's forward + backward (and one more forward under gradient
    checkpointing) on each image it trains on, and the reference's forward on each image."""
    obj = get_objective(objective)
    images = 1 if obj.preferred_only else 2
    policy = flops["forward_backward_frozen" if lora else "forward_backward"]
    policy += flops["forward"] if ckpt else 0
    reference = flops["forward"] if obj.needs_reference else 0
    return images * (policy + reference)


def cfg_factor(shapes: Mapping[str, Any], guidance: float) -> int:
    """Denoiser batches per sampling step: classifier-free guidance above 1 runs the
    conditional and unconditional halves; FLUX.1-dev's guidance is an embedding (one)."""
    return 2 if guidance > 1 and shapes["family"] != "flux" else 1
