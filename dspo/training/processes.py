"""One optimiser step shared among processes: the micro-steps that make the effective batch
(:func:`accumulation_steps`), the step's metrics read by the host in one transfer
(:func:`host_values`), and the branches every process takes alike (:func:`agree`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from accelerate import Accelerator


def accumulation_steps(effective_pairs: int, local_pairs: int, processes: int) -> int:
    """Micro-steps per optimiser step so that processes x local batch x steps = effective batch."""
    per_micro = local_pairs * processes
    if effective_pairs % per_micro:
        raise ValueError(
            f"effective batch of {effective_pairs} pairs is not a multiple of "
            f"{processes} process(es) x {local_pairs} local pairs"
        )
    return effective_pairs // per_micro


def host_values(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalars summed on the device, read by the host in one transfer (one sync per
    optimiser step, not one per metric and micro-step)."""
    if not values:
        return {}
    stacked = torch.stack([torch.as_tensor(v).float().reshape(()) for v in values.values()])
    return dict(zip(values, stacked.tolist(), strict=True))


def agree(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Whether any process raised each flag, so that every process takes the same branch."""
    if accelerator.num_processes == 1:
        return list(flags)
    raised = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [v > 0 for v in accelerator.reduce(raised, reduction="sum").tolist()]
