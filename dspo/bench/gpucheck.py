"""``make gpu-check``: the SD1.5 rehearsal's GPU-only settings, run for a few steps on a GPU.

Within minutes on one CUDA GPU: a few training steps of the SD1.5 stand-in at 512 px in bf16
(full fine-tuning and LoRA, DSPO and Diffusion-DPO) from a latent cache of stand-in
Pick-a-Pic pairs, a few images generated and scored by the five reward stand-ins, and
``dspo bench train`` at 64x64 latents. It prints pairs/s, peak GPU memory and achieved
TFLOP/s, the FLOPs of a training step being counted by torch's FLOP counter on the meta
device (no memory, exact shapes), gradient checkpointing's recomputation not included.

Without CUDA it stops at once with that message. ``--device cpu --tiny`` runs the same
stages on tiny stand-ins at 64 px in float32, so the script is tested on any machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspo.bench.spec import LORA_TARGETS

# (objective, LoRA rank, speed switches): each plain run, then DSPO again with the GPU switches
# of training.channels_last and training.compile, whose pairs/s say which default is faster.
FAST = {"channels_last": True, "compile": {"policy": True, "reference": True}}
METHODS = [
    ("dspo", None, {}),
    ("diffusion_dpo", None, {}),
    ("dspo", 8, {}),
    ("diffusion_dpo", 8, {}),
    ("dspo", None, FAST),
    ("dspo", 8, FAST),
]


class NoCuda(RuntimeError):
    pass


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed(device: str, func: Callable[[], Any]) -> tuple[Any, float, float]:
    import torch

    _reset_peak(device)
    start = time.perf_counter()
    result = func()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, _peak_mib(device)


def step_flops(base: Path, latent: int, pairs: int, lora: bool, reference: bool) -> float:
    """FLOPs of one training step on ``pairs`` pairs, counted on the meta device.

    The policy runs forward and backward on both images of each pair (LoRA: gradients reach
    the adapters and the inputs only), the reference forward only.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNet2DConditionModel.load_config(base / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        if lora:
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS))
        n = 2 * pairs
        x = torch.randn(n, unet.config.in_channels, latent, latent)
        t = torch.zeros(n, dtype=torch.long)
        text = torch.randn(n, 77, unet.config.cross_attention_dim)
        counter = FlopCounterMode(display=False)
        with counter:
            unet(x, t, text).sample.sum().backward()
            if reference:
                with torch.no_grad():
                    unet(x, t, text)
    return float(counter.get_total_flops())


def _pairs_and_cache(standins: Path, work: Path, resolution: int, device: str) -> Path:
    from dspo.data.cache_encode import CacheSettings, encode_part
    from dspo.data.cache_gather import gather_cache
    from dspo.data.pair_table import read_pair_rows, read_pair_texts
    from dspo.data.pairs import PairSettings, gather_pairs, normalise_part

    source = {"kind": "parquet", "path": str(standins / "pickapic_v2" / "data"), "split": "train"}
    settings = PairSettings.from_params({"source": source, "max_pairs": 32}, source)
    normalise_part(settings, 0, 1, work / "pairs.part")
    gather_pairs([work / "pairs.part"], work / "pairs.parquet")
    pairs = work / "pairs.parquet"
    cache_settings = CacheSettings(resolution=resolution, batch_size=8, shard_size=64)
    encode_part(
        read_pair_texts(pairs),
        lambda start, stop: read_pair_rows(pairs, start, stop),
        str(standins / "stable-diffusion-v1-5"),
        work / "cache.part",
        cache_settings,
        device=device,
    )
    gather_cache([work / "cache.part"], work / "cache")
    return work / "cache"


def _train_config(
    objective: str, lora: int | None, steps: int, precision: str, switches: dict
) -> dict:
    import yaml

    defaults = yaml.safe_load((Path(__file__).parents[2] / "config" / "config.yaml").read_text())
    cfg = dict(defaults["training"])
    cfg.update(
        name=(objective if not lora else f"{objective}_lora") + ("_fast" if switches else ""),
        objective=objective,
        data="pairs",
        params={"beta": 5000} if objective == "diffusion_dpo" else {},
        lora={"rank": lora, "alpha": lora, "target_modules": LORA_TARGETS} if lora else None,
        steps=steps,
        pairs_per_step=4,
        local_pairs=4,
        lr=1e-6,
        warmup_steps=1,
        mixed_precision=precision,
        gradient_checkpointing=True,
        checkpoint_every=0,
        report_to=None,
        **switches,
    )
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise NoCuda(
            "gpu-check needs a CUDA GPU and torch sees none (torch.cuda.is_available() is "
            "False). For a dry run of the same stages on tiny stand-ins: "
            "python -m dspo.bench.gpucheck --device cpu --tiny"
        )
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    standins = Path(args.standins)
    resolution = 64 if args.tiny else args.resolution
    precision = "bf16" if device == "cuda" else "no"
    if args.tiny:
        from dspo.standins import write_standins

        standins = work / "standins"
        write_standins(standins, ["sd15", "pickapic", "prompts", *REWARDS], tiny=True, pairs=24)
    base = standins / "stable-diffusion-v1-5"
    report: dict[str, Any] = {"device": device, "resolution": resolution, "precision": precision}
    cache, seconds, peak = _timed(
        device, lambda: _pairs_and_cache(standins, work, resolution, device)
    )
    report["cache"] = {"seconds": round(seconds, 1), "peak_mib": round(peak)}
    from dspo.training.train import train

    latent = resolution // 8
    report["train"] = []
    # A step's FLOPs depend on the UNet, the batch and LoRA only: the objectives run the same
    # passes and channels-last changes the layout, so one count per kind of training.
    counted: dict[bool, float] = {}
    for objective, lora, switches in METHODS:
        if device != "cuda":
            # The CPU dry run checks the stages, not speed: torch.compile's CPU code generation
            # would take minutes here (its CPU equivalence is tests/training/test_policy.py).
            switches = {k: v for k, v in switches.items() if k != "compile"}
        cfg = _train_config(objective, lora, args.steps, precision, switches)
        out = work / "models" / cfg["name"]

        def fit(cfg: dict = cfg, out: Path = out) -> dict:
            return train(
                cfg,
                cache_dir=cache,
                base_model=str(base),
                out_dir=out,
                run_dir=work / "runs" / cfg["name"],
            )

        summary, seconds, peak = _timed(device, fit)
        kind = bool(lora)
        if kind not in counted:
            counted[kind] = step_flops(base, latent, cfg["pairs_per_step"], kind, reference=True)
        flops = counted[kind]
        pairs = args.steps * cfg["pairs_per_step"]
        report["train"].append(
            {
                "method": cfg["name"],
                "seconds": round(seconds, 1),
                "pairs_per_s": float(f"{pairs / seconds:.3g}"),
                "peak_mib": round(peak),
                # Whole call: model loading and saving included, so a lower bound.
                "tflops_per_s": float(f"{flops * args.steps / seconds / 1e12:.3g}"),
                "steps": summary["steps"],
            }
        )
    report["generate_score"] = _generate_and_score(standins, base, work, resolution, device)
    report["bench"] = _bench(device, args.tiny, work)
    return report


REWARDS = ["pickscore", "clip", "hps", "aesthetics", "image_reward"]


def _reward_specs(standins: Path) -> dict[str, dict[str, str]]:
    from dspo.standins import AESTHETIC_FILE

    laion = str(standins / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    return {
        "pickscore": {
            "kind": "pickscore",
            "model": str(standins / "PickScore_v1"),
            "processor": laion,
        },
        "hps": {
            "kind": "hpsv2",
            "version": "v2.1",
            "checkpoint": str(standins / "HPSv2" / "HPS_v2.1_compressed.pt"),
        },
        "aesthetics": {
            "kind": "laion_aesthetics",
            "checkpoint": str(standins / AESTHETIC_FILE),
            "clip_model": str(standins / "clip-vit-large-patch14"),
        },
        "clip": {"kind": "clip_score", "model": laion},
        "image_reward": {
            "kind": "image_reward",
            "checkpoint": str(standins / "ImageReward" / "ImageReward.pt"),
            "med_config": str(standins / "ImageReward" / "med_config.json"),
            "tokenizer": str(standins / "bert-base-uncased"),
        },
    }


def _generate_and_score(
    standins: Path, base: Path, work: Path, resolution: int, device: str
) -> dict[str, Any]:
    import pandas as pd

    from dspo.data.prompts import load_prompt_set
    from dspo.generation.sample import generate, load_for_sampling
    from dspo.rewards import score_manifest

    prompts = load_prompt_set(
        "parti",
        {
            "source": {
                "kind": "file",
                "path": str(standins / "prompts" / "PartiPrompts.tsv"),
                "column": "Prompt",
                "limit": 4,
            }
        },
    )
    dtype = "bfloat16" if device == "cuda" else "float32"

    def make() -> pd.DataFrame:
        pipe = load_for_sampling(str(base), str(base), dtype=dtype, device=device)
        return generate(
            pipe,
            prompts,
            work / "images",
            seeds=[0],
            guidance=[7.5],
            steps=10,
            resolution=resolution,
            batch_size=4,
        )

    manifest, gen_seconds, gen_peak = _timed(device, make)
    scores, score_seconds, score_peak = _timed(
        device,
        lambda: score_manifest(
            manifest, work / "images", _reward_specs(standins), model_name="base", device=device
        ),
    )
    return {
        "images": len(manifest),
        "generate_seconds": round(gen_seconds, 1),
        "generate_peak_mib": round(gen_peak),
        "score_seconds": round(score_seconds, 1),
        "score_peak_mib": round(score_peak),
        "mean_scores": scores.groupby("reward")["score"].mean().round(4).to_dict(),
    }


def _bench(device: str, tiny: bool, work: Path) -> dict[str, Any]:
    from dspo.bench.throughput import main as bench

    if tiny:
        # The dry run checks the stages, not speed: one torch thread, so that on a shared CPU
        # the workers do not spin against each other's threads and the machine's other work.
        argv = ["--arch", "toy", "--latent", "8", "--pairs", "2", "--steps", "1", "--warmup", "1"]
        argv += ["--threads", "1"]
    else:
        argv = [
            "--arch",
            "sd15",
            "--latent",
            "64",
            "--pairs",
            "8",
            "--steps",
            "5",
            "--dtype",
            "bf16",
        ]
    argv += ["--device", device, "--workdir", str(work / "bench")]
    return bench(argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dspo.bench.gpucheck", description=__doc__)
    parser.add_argument("--standins", default="standins", help="folder of `dspo standins`")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins at 64 px (CPU test)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="training steps per method")
    parser.add_argument("--workdir", help="where pairs, cache and models go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except NoCuda as err:
        sys.exit(f"gpu-check: {err}")
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
