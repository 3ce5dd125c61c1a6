"""`dspo bench activations`: the memory a training step holds per image, with and without
gradient checkpointing, so that a preset's batch can be sized against its GPU.

Each measurement runs in a fresh process: a random-init denoiser of the architecture's shapes
(`dspo bench train --arch`) in train mode, its weights trainable, one forward pass on
``--images`` latents with the prompt tensors of the architecture's shape. What the forward
leaves allocated (the activations autograd keeps for the backward pass, and the output) is
read after it; the peak is read after the backward pass. Two batch sizes give the slope:
**activation memory per image** = (held at n2 - held at n1) / (n2 - n1), free of the fixed
costs (weights, gradients, the allocator's own).

Memory: on CUDA ``torch.cuda.memory_allocated`` / ``max_memory_allocated``; on CPU the process's
resident size (``VmRSS``, ``VmHWM`` after resetting it), where tensors of more than 128 KiB
are their own mappings and return to the system when freed, so the resident size follows the
live tensors. On CPU the step is float32; under bf16 autocast on a GPU every saved tensor is
bf16 or float32, so the float32 figure bounds the bf16 one from above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch


def _resident_mib(field: str) -> float:
    from dspo.bench.spec import proc_status_mib

    return proc_status_mib(field)


def measure_once(arch: str, latent: int, images: int, checkpointing: bool, device: str) -> dict:
    """One forward and backward pass in this process; memory in MiB."""
    from diffusers import UNet2DConditionModel

    from dspo.bench.spec import ResidentPeak, load_architecture

    _, architecture = load_architecture(arch)
    unet_config = {
        **architecture["unet"],
        "cross_attention_dim": architecture["text_encoder"]["hidden_size"],
    }
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    gen = torch.Generator().manual_seed(1)
    channels = unet_config["in_channels"]
    x = torch.randn(images, channels, latent, latent, generator=gen).to(device)
    t = torch.randint(0, 1000, (images,), generator=gen).to(device)
    text_shape = (images, architecture["max_length"], unet_config["cross_attention_dim"])
    text = torch.randn(text_shape, generator=gen).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        peak = ResidentPeak()
        peak.start()
        before = peak.resident_at_start
    with autocast:
        loss = unet(x, t, text).sample.float().pow(2).mean()
    if device == "cuda":
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() / 2**20 - before
    else:
        held = _resident_mib("VmRSS") - before
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        top = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        top = peak.peak_mib()
    return {"images": images, "checkpointing": checkpointing, "held_mib": held, "peak_mib": top}


def _in_fresh_process(arch: str, latent: int, images: int, checkpointing: bool, device: str):
    job = json.dumps([arch, latent, images, checkpointing, device])
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "dspo.bench.activations", "--worker", job]
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(arch: str, latent: int, images: tuple[int, int], device: str) -> dict[str, Any]:
    """Both settings of checkpointing at both batch sizes, and the per-image slopes."""
    small, large = images
    result: dict[str, Any] = {"arch": arch, "latent": latent, "device": device, "runs": []}
    for checkpointing in (False, True):
        runs = [_in_fresh_process(arch, latent, n, checkpointing, device) for n in images]
        result["runs"] += runs
        key = "checkpointing" if checkpointing else "plain"
        result[f"{key}_mib_per_image"] = (runs[1]["held_mib"] - runs[0]["held_mib"]) / (
            large - small
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="dspo bench activations", description=__doc__)
    parser.add_argument("--arch", default="sd15", help="toy, sd15, or a YAML file (default sd15)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (default 64)")
    parser.add_argument("--images", type=int, nargs=2, default=[1, 2], help="two batch sizes")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    small, large = args.images
    if not 0 < small < large:
        parser.error("--images takes two batch sizes, the first smaller")
    result = measure(args.arch, args.latent, (small, large), args.device)
    print(f"{args.arch}, {args.latent}x{args.latent} latents, {args.device}:")
    for run in result["runs"]:
        state = "with" if run["checkpointing"] else "without"
        print(
            f"  {run['images']} image(s) {state} checkpointing: forward holds "
            f"{run['held_mib']:.0f} MiB, peak {run['peak_mib']:.0f} MiB"
        )
    print(
        f"  activation memory per image: {result['plain_mib_per_image']:.0f} MiB without "
        f"checkpointing, {result['checkpointing_mib_per_image']:.0f} MiB with"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(measure_once(*json.loads(sys.argv[2]))))
