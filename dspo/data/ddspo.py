"""DDSPO's self-generated pairs: the reference model against itself with a degraded prompt.

For each prompt c the base (reference) model samples the preferred image from c and the
rejected image from a degraded prompt c_minus, starting from the same noise, so the pair
differs by what the prompt lost. The degrader is pluggable: the built-in one deletes a random
40-70 % of the words (seeded); any external command (an LLM, say) can replace it.
"""

from __future__ import annotations

import io
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from dspo.data.pairs import prompt_id_of
from dspo.models import sampling_scheduler
from dspo.sample import initial_noise, load_for_sampling


def drop_words(
    prompts: Sequence[str], rng: np.random.Generator, min_fraction: float, max_fraction: float
) -> list[str]:
    """Delete a random share in [min_fraction, max_fraction] of each prompt's words."""
    degraded = []
    for prompt in prompts:
        words = prompt.split()
        n_drop = int(round(rng.uniform(min_fraction, max_fraction) * len(words)))
        n_drop = min(n_drop, len(words) - 1)  # keep at least one word
        dropped = set(rng.choice(len(words), size=n_drop, replace=False).tolist())
        degraded.append(" ".join(w for i, w in enumerate(words) if i not in dropped))
    return degraded


def command_degrader(prompts: Sequence[str], command: str) -> list[str]:
    """Run an external degrader: prompts on stdin, one per line; the same number back."""
    result = subprocess.run(
        shlex.split(command),
        input="\n".join(p.replace("\n", " ") for p in prompts) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"degrader command {command!r} failed: {result.stderr.strip()[-500:]}")
    lines = result.stdout.splitlines()
    if len(lines) != len(prompts):
        raise ValueError(
            f"degrader command {command!r} returned {len(lines)} lines for {len(prompts)} prompts"
        )
    return lines


def degrade(prompts: Sequence[str], spec: Mapping[str, Any], seed: int) -> list[str]:
    """Apply the configured degrader."""
    if spec["kind"] == "drop_words":
        rng = np.random.default_rng(seed)
        return drop_words(prompts, rng, spec["min_fraction"], spec["max_fraction"])
    if spec["kind"] == "command":
        return command_degrader(prompts, spec["command"])
    raise ValueError(f"unknown degrader kind {spec['kind']!r}; expected drop_words or command")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@torch.no_grad()
def make_ddspo_pairs(
    human_pairs: pd.DataFrame, base_model: str, cfg: Mapping[str, Any], device: str = "cpu"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Sample DDSPO pairs for prompts drawn (seeded) from the human pairs' captions.

    Returns the canonical pair table plus ``caption_l``, the degraded prompt of each
    rejected image, which the cache encodes as that image's condition.
    """
    captions = sorted(set(human_pairs["caption"]))
    rng = np.random.default_rng(cfg["seed"])
    chosen = [captions[i] for i in rng.permutation(len(captions))[: cfg["prompts"]]]
    degraded = degrade(chosen, cfg["degrader"], cfg["seed"])
    pipe = load_for_sampling(base_model, base_model, device=device)
    sampling_scheduler(pipe, "ddim")
    resolution = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (
        pipe.unet.config.in_channels,
        pipe.unet.config.sample_size,
        pipe.unet.config.sample_size,
    )
    rows = []
    batch = cfg["batch_size"]
    for start in tqdm(range(0, len(chosen), batch), desc="ddspo pairs", mininterval=5):
        good, bad = chosen[start : start + batch], degraded[start : start + batch]
        ids = range(start, start + len(good))
        latents = torch.stack([initial_noise(shape, i, cfg["seed"]) for i in ids]).to(device)
        images = {}
        for side, texts in (("w", good), ("l", bad)):
            images[side] = pipe(
                prompt=list(texts),
                latents=latents.to(pipe.unet.dtype),
                num_inference_steps=cfg["steps"],
                guidance_scale=cfg["guidance"],
                height=resolution,
                width=resolution,
                output_type="np",
            ).images
        for i, (c, c_minus) in enumerate(zip(good, bad, strict=True)):
            rows.append(
                {
                    "pair_id": start + i,
                    "prompt_id": prompt_id_of(c),
                    "caption": c,
                    "jpg_w": _png(images["w"][i]),
                    "jpg_l": _png(images["l"][i]),
                    "label_w": 1.0,
                    "source_row": start + i,
                    "caption_l": c_minus,
                }
            )
    table = pd.DataFrame(rows)
    stats = {
        "pairs": len(table),
        "mean_words_kept": float(
            np.mean(
                [
                    len(b.split()) / max(1, len(g.split()))
                    for g, b in zip(chosen, degraded, strict=True)
                ]
            )
        ),
        "examples": [
            {"prompt": g, "degraded": b} for g, b in zip(chosen[:3], degraded[:3], strict=True)
        ],
    }
    return table, stats
