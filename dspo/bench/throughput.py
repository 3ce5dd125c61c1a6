"""``dspo bench train``: training throughput, counted FLOPs and peak memory, ours and upstream.

Two modes (`dspo.bench.modes`) do the same optimiser steps (AdamW, gradient clipping, optional
gradient accumulation and checkpointing) on the same batches of B pairs, with one noise tensor
and one timestep per pair, through `dspo.training.preference.preference_loss`:

- ``ours``: the trainer's loop, batches read from the latent + text-embedding cache
  (`dspo.data.cache`), built once before the measurement.
- ``upstream``: the public DSPO / Diffusion-DPO scripts as their launchers run them: images
  decoded in data-loader worker processes, VAE and text encoder run at every micro-step, the
  reference a second UNet (full fine-tuning) or the disabled adapters (LoRA).

Each mode runs in a fresh worker process (``python -m dspo.bench.throughput``), so that its peak
memory is its own: on CPU the growth of the process's resident memory over the measurement (the
kernel's high-water mark, reset after the imports, minus the resident size then); on CUDA
``torch.cuda.max_memory_allocated``. Warm-up steps are not timed. After the timed steps one
more step runs under torch's flop counter (`dspo.bench.flops`): FLOPs per pair, and from them and
the time the achieved TFLOP/s (on CUDA also the fraction of the device's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dspo.bench.spec import (
    COLOURS,
    MODES,
    SHAPES,
    UPSTREAM_REFERENCES,
    WORDS,
    BenchSpec,
    load_architecture,
)

if TYPE_CHECKING:
    import pandas as pd


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
    """A smooth random image (upsampled 4x4 noise) as JPEG bytes, like a small photo."""
    from PIL import Image

    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    coarse.resize((size, size), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def synthetic_pairs(n: int, resolution: int, seed: int) -> pd.DataFrame:
    """A canonical pair table (caption, jpg_w, jpg_l, pair_id) of random captions and images."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour, shape, back = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(COLOURS)
        rows.append(
            {
                "pair_id": i,
                "caption": f"a {colour} {shape} on a {back} background",
                "jpg_w": _jpeg(rng, resolution),
                "jpg_l": _jpeg(rng, resolution),
            }
        )
    return pd.DataFrame(rows)


def prepare(spec: BenchSpec, workdir: Path) -> dict[str, Any]:
    """Build and save the random-init model, the pair table and (for ``ours``) the cache."""
    from dspo.data.cache import build_cache
    from dspo.families import build_pipeline

    pipe = build_pipeline(spec.architecture, WORDS, seed=spec.seed)
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    pipe.save_pretrained(workdir / "model")
    del pipe
    table = synthetic_pairs(spec.dataset_pairs, spec.resolution, spec.seed)
    table.to_parquet(workdir / "pairs.parquet", index=False)
    started = time.perf_counter()
    build_cache(
        table,
        str(workdir / "model"),
        workdir / "cache",
        resolution=spec.resolution,
        device=spec.device,
        batch_size=max(spec.pairs, 8),
    )
    return {
        "unet_params_m": round(unet_params / 1e6, 2),
        "dataset_pairs": len(table),
        "cache_build_s": round(time.perf_counter() - started, 2),
    }


def run_benchmark(spec: BenchSpec, workdir: Path | None = None) -> dict[str, Any]:
    """Prepare the inputs, measure each mode in its own process, and compare them."""
    with tempfile.TemporaryDirectory(prefix="dspo-bench-") as tmp:
        root = Path(workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "spec.json").write_text(json.dumps(asdict(spec)))
        # The model is built in a worker too, so this process stays small while others measure.
        info = _run_worker(root, "prepare")
        extra = ("ours-pre",) if spec.precomputed else ()
        modes = {mode: _run_worker(root, mode) for mode in (*MODES, *extra)}
    ours, upstream = modes["ours"], modes["upstream"]
    return {
        "spec": {k: v for k, v in asdict(spec).items() if k != "architecture"},
        "resolution": spec.resolution,
        **info,
        "memory_measure": _memory_measure(spec.device),
        "modes": modes,
        "ratio": {
            "pairs_per_s": ours["pairs_per_s"] / upstream["pairs_per_s"],
            "peak_mib": (
                ours["peak_mib"] / upstream["peak_mib"] if upstream["peak_mib"] else math.nan
            ),
            # Upstream's work over ours: the speed-up the time ratio would show if both modes
            # ran their FLOPs at the same rate.
            "flops_upstream_over_ours": upstream["flops_per_pair"] / ours["flops_per_pair"],
            **(
                {"precomputed_over_ours": modes["ours-pre"]["pairs_per_s"] / ours["pairs_per_s"]}
                if "ours-pre" in modes
                else {}
            ),
        },
    }


def _memory_measure(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated of a fresh worker process"
    return (
        "growth of a fresh worker process's resident memory after its imports, at its peak "
        "(upstream's data-loader processes not included)"
    )


def _run_worker(root: Path, mode: str) -> dict[str, Any]:
    out = root / f"result-{mode}.json"
    cmd = [sys.executable, "-m", "dspo.bench.throughput", str(root), mode, str(out)]
    # Loading bars of every worker would bury the table.
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode!r} worker failed with exit code {done.returncode}")
    return json.loads(out.read_text())


def _reference(spec: Mapping[str, Any], mode: str) -> str:
    if not spec["lora"]:
        return "a frozen second UNet"
    if mode == "upstream" and spec["upstream_reference"] == "copy":
        return (
            "a second full UNet (--upstream-reference copy: not what the public LoRA script does)"
        )
    return "the policy with its adapters disabled"


def format_report(result: Mapping[str, Any]) -> str:
    """The table printed by ``dspo bench train``."""
    s = result["spec"]
    modes = result["modes"]
    cuda = s["device"] == "cuda"
    tuning = f"LoRA rank {s['lora']}" if s["lora"] else "full fine-tuning"
    upstream = modes["upstream"]
    lines = [
        f"dspo bench train: arch {s['arch_name']} (UNet {result['unet_params_m']} M params), "
        f"latent {s['latent']}x{s['latent']} ({result['resolution']} px), "
        f"{s['pairs']} pairs/step in {s['accumulation']} micro-step(s), method {s['method']}, "
        f"{tuning}, gradient checkpointing {'on' if s['checkpointing'] else 'off'}, "
        f"{s['device']} {s['dtype']}",
        f"ours: cached latents and text embeddings; reference = {_reference(s, 'ours')}",
        f"upstream: {upstream['loader_workers']} data-loader worker(s) decode the JPEGs, VAE "
        f"and text encoder every micro-step; reference = {_reference(s, 'upstream')}",
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps; FLOPs counted over one "
        "more step",
        f"{'mode':<10}{'s/step':>10}{'pairs/s':>10}{'peak MiB':>10}{'GFLOP/pair':>12}"
        f"{'TFLOP/s':>11}" + (f"{'of peak':>9}" if cuda else ""),
    ]
    for mode, m in modes.items():
        row = (
            f"{mode:<10}{m['s_per_step']:>10.3f}{m['pairs_per_s']:>10.2f}{m['peak_mib']:>10.0f}"
            f"{m['flops_per_pair'] / 1e9:>12.4g}{m['tflops_per_s']:>11.3g}"
        )
        if cuda:
            fraction = m["peak_fraction"]
            row += f"{fraction:>9.1%}" if fraction is not None else f"{'unknown':>9}"
        lines.append(row)
    r = result["ratio"]
    if "ours-pre" in modes:
        pre = modes["ours-pre"]
        lines.append(
            f"ours-pre: ours with the reference precomputed (dspo reference-part), "
            f"{pre['reference_bytes_per_pair_visit']} bytes per pair-visit read from "
            f"memory-mapped files: pairs/s x{r['precomputed_over_ours']:.2f} over ours"
        )
    lines += [
        f"ours/upstream: pairs/s x{r['pairs_per_s']:.2f}, peak memory x{r['peak_mib']:.2f}",
        f"FLOPs per pair upstream/ours: x{r['flops_upstream_over_ours']:.2f} (the pairs/s "
        f"ratio at equal FLOP rates); upstream's VAE + text encoder: "
        f"{upstream['data_flops_per_pair'] / 1e9:.4g} GFLOP/pair",
    ]
    if cuda:
        peak = upstream["dense_bf16_peak_tflops"]
        known = f"dense bf16 peak {peak:g} TFLOP/s" if peak else "dense bf16 peak unknown"
        lines.append(f"device: {upstream['device_name']}, {known}")
    lines += [
        f"peak memory: {result['memory_measure']}",
        f"not timed: building the cache of {result['dataset_pairs']} pairs took "
        f"{result['cache_build_s']} s (once per dataset and model)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from dspo.objectives import OBJECTIVES

    parser = argparse.ArgumentParser(prog="dspo bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="toy", help="toy, sd15, or a YAML file (default toy)")
    parser.add_argument("--latent", type=int, default=8, help="latent side (default 8)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per optimiser step (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--method", choices=sorted(OBJECTIVES), default="dspo")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank; 0 = full fine-tuning")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accumulation",
        type=int,
        default=1,
        help="micro-steps per optimiser step, both modes; --pairs is split among them (default 1)",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing of the policy UNet, both modes",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="upstream's data-loader worker processes (default: the public launchers' 16, "
        "capped by the cores available; 0 = decode on the training thread)",
    )
    parser.add_argument(
        "--upstream-reference",
        choices=UPSTREAM_REFERENCES,
        default="adapters",
        help="with --lora, upstream's reference: the adapters disabled (default, as the public "
        "LoRA script) or 'copy', a second full UNet that no public script holds",
    )
    parser.add_argument(
        "--precomputed",
        action="store_true",
        help="also time ours with the reference precomputed before training (no reference "
        "forward; objectives with a reference, not ddspo)",
    )
    parser.add_argument(
        "--count-only",
        action="store_true",
        help="only count both modes' FLOPs per pair, on the meta device (no weights, no "
        "timing): any shape, e.g. --arch sd15 --latent 64, in seconds",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the model and cache here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, run both modes, print the table, and write the JSON if asked."""
    args = build_parser().parse_args(argv)
    name, architecture = load_architecture(args.arch)
    spec = BenchSpec(
        architecture=architecture,
        arch_name=name,
        **{
            k: v
            for k, v in vars(args).items()
            if k not in ("arch", "json", "workdir", "count_only")
        },
    )
    if args.count_only:
        from dspo.bench.count import count_on_meta, format_count

        result = count_on_meta(spec)
        print(format_count(result), flush=True)
    else:
        result = run_benchmark(spec, args.workdir)
        print(format_report(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _worker_main(argv: list[str]) -> None:
    """Entry of a worker process: ``python -m dspo.bench.throughput ROOT prepare|ours|upstream
    OUT``."""
    root, mode, out = Path(argv[0]), argv[1], Path(argv[2])
    spec = BenchSpec(**json.loads((root / "spec.json").read_text()))
    if mode == "prepare":
        result = prepare(spec, root)
    else:
        from dspo.bench.modes import measure

        result = measure(spec, root, mode)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
