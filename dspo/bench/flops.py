"""Counted floating-point work and the accelerators' peaks it is read against.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which sees every matrix
multiplication, convolution and attention kernel that actually runs (backward passes,
recomputation under gradient checkpointing and no-grad reference passes included) and counts
2 FLOPs per multiply-add. Element-wise work (normalisation, activations, the optimiser) is
not counted: it is memory-bound and small next to the matrix work of a UNet.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

T = TypeVar("T")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendor's data sheets, matched
# against `torch.cuda.get_device_name()` in this order (so "H100 PCIe" before "H100", "L40S"
# before "L40" before "L4"). fp16 has the same dense peak on each of these.
DENSE_BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    (r"H200.*NVL", 835.0),
    (r"H200", 989.0),  # GH200 too
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),
    (r"A100", 312.0),
    (r"A800", 312.0),
    (r"L40S", 362.0),
    (r"L40", 181.0),
    (r"L4\b", 121.0),
    (r"A10\b", 125.0),
]


def dense_bf16_peak(device_name: str) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, or None when the name is not in the table."""
    for pattern, peak in DENSE_BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's table covers the CUDA attention kernels only; on CPU, scaled_dot_product_attention
# runs this fused kernel, which would otherwise count as zero (16 % of an SD1.5 UNet forward).
_aten = torch.ops.aten
CPU_ATTENTION: dict[Any, Callable[..., int]] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def counted(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` once under the flop counter: its result and the FLOPs it performed."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        result = fn()
    return result, int(counter.get_total_flops())
