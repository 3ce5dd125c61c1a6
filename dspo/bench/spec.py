"""What a training benchmark measures, and the shared parts of its measurement.

`BenchSpec` (one model shape, batch, method and device), the architectures ``--arch`` names
(`load_architecture`: ``sd15``, ``toy`` or a YAML file), the upstream data loader's worker
count, and `ResidentPeak`, the peak resident memory on CPU. The command (`dspo.bench.throughput`),
its two modes (`dspo.bench.modes`), the FLOP count on the meta device (`dspo.bench.count`) and
the activation benchmark (`dspo.bench.activations`) read them from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dspo.standins.architectures import SD15_ARCHITECTURE

# The public Diffusion-DPO launchers pass --dataloader_num_workers=16.
UPSTREAM_WORKERS = 16


def default_workers() -> int:
    """The launchers' worker count, capped by the cores this process may run on."""
    return min(UPSTREAM_WORKERS, len(os.sched_getaffinity(0)))


MODES = ("ours", "upstream")
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
WORDS = ["a", "on", "background", *COLOURS, *SHAPES]

# ``toy`` is the default preset's base model, read from the workflow config so it cannot drift.
TOY_CONFIG = Path("config/config.yaml")
AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}
UPSTREAM_REFERENCES = ("adapters", "copy")
# The attention projections the benchmarks' LoRA adapters wrap (the presets' default too).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark: a model shape, a batch, a method, and where to run it."""

    architecture: dict[str, Any]
    arch_name: str = "custom"
    latent: int = 8
    pairs: int = 8
    steps: int = 10
    warmup: int = 2
    method: str = "dspo"
    lora: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int = 0
    seed: int = 0
    accumulation: int = 1
    checkpointing: bool = False
    # Data-loader worker processes of the upstream mode; None = the launchers' 16, capped by
    # the cores available; 0 = decode on the training thread.
    workers: int | None = None
    # With LoRA, how upstream computes the reference: "adapters" disabled, as the public LoRA
    # script does, or "copy", a second full UNet (not what any public script does).
    upstream_reference: str = "adapters"
    # Also time ours with the reference precomputed (dspo.training.reference): no reference forward.
    precomputed: bool = False

    def __post_init__(self) -> None:
        from dspo.objectives import get_objective

        get_objective(self.method)  # KeyError listing the valid names
        family = self.architecture.get("family", "sd")
        if family != "sd":
            # The upstream-style loop would also need SDXL's pooled embeddings and time ids.
            raise ValueError(f"--arch {self.arch_name}: family {family!r}; only 'sd' is supported")
        for name in ("latent", "pairs", "steps", "accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.lora < 0 or self.threads < 0:
            raise ValueError("--warmup, --lora and --threads must not be negative")
        if self.pairs % self.accumulation:
            raise ValueError(
                f"--pairs {self.pairs} is not a multiple of --accumulation {self.accumulation}"
            )
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must not be negative, got {self.workers}")
        if self.upstream_reference not in UPSTREAM_REFERENCES:
            raise ValueError(
                f"unknown --upstream-reference {self.upstream_reference!r}; "
                f"expected one of {UPSTREAM_REFERENCES}"
            )
        if self.dtype not in ("fp32", *AUTOCAST):
            raise ValueError(f"unknown --dtype {self.dtype!r}; expected fp32, fp16 or bf16")
        if self.dtype != "fp32" and self.device == "cpu":
            raise ValueError(f"--dtype {self.dtype} needs --device cuda; the CPU runs fp32")

    @property
    def resolution(self) -> int:
        """Image side in pixels: each VAE block after the first halves it."""
        return self.latent * 2 ** (len(self.architecture["vae"]["block_out_channels"]) - 1)

    @property
    def dataset_pairs(self) -> int:
        """Enough pairs that no row repeats in the run and the counted step, as in an epoch."""
        return self.pairs * (self.warmup + self.steps + 1)

    @property
    def resolved_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers


def load_architecture(arch: str) -> tuple[str, dict[str, Any]]:
    """A preset name (``toy``, ``sd15``) or a YAML file -> (name, architecture mapping).

    A YAML file may be a workflow config (its ``base_model.architecture`` is used) or an
    architecture mapping itself (keys ``max_length``, ``text_encoder``, ``vae``, ``unet``).
    """
    if arch == "sd15":
        return arch, SD15_ARCHITECTURE
    path = TOY_CONFIG if arch == "toy" else Path(arch)
    if not path.is_file():
        hint = " (run from the repository root, or pass the YAML path)" if arch == "toy" else ""
        raise FileNotFoundError(f"--arch {arch!r}: {path} is not a file{hint}")
    loaded = yaml.safe_load(path.read_text()) or {}
    mapping = loaded.get("base_model", {}).get("architecture", loaded)
    missing = [k for k in ("max_length", "text_encoder", "vae", "unet") if k not in mapping]
    if missing:
        raise ValueError(
            f"{path}: no architecture found; expected base_model.architecture or the keys "
            f"max_length, text_encoder, vae, unet at the top (missing: {', '.join(missing)})"
        )
    return (arch if arch == "toy" else path.stem), mapping


class ResidentPeak:
    """Growth of this process's resident memory since `start`, at its peak, in MiB (Linux).

    Writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the
    current resident size, so memory touched and released by the imports is not counted
    against the measurement (``ru_maxrss`` cannot be reset and would hide it).
    """

    def start(self) -> None:
        if not Path("/proc/self/clear_refs").exists():
            raise RuntimeError("peak memory on CPU is read from /proc, which only Linux has")
        Path("/proc/self/clear_refs").write_text("5")
        self.resident_at_start = proc_status_mib("VmRSS")

    def peak_mib(self) -> float:
        return proc_status_mib("VmHWM") - self.resident_at_start


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB."""
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(kib) / 2**10
