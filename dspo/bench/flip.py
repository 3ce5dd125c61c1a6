"""`dspo bench flip`: is mirroring a latent the same as encoding the mirrored image?

A per-visit cache (``cache.per_visit`` with ``cache.flip``) could store one orientation and
mirror the latent at each visit, at half the storage, if the VAE's encoder commuted with a
left-right mirror. This measures how far it is from that on a model's VAE and real pairs:
for each image x, ``E(mirror(x))`` against ``mirror(E(x))`` (posterior means, in the
denoiser's space), as a fraction of the latent's size and in units of the posterior's own
deviation, beside how far the two orientations' latents are apart at all.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch


def measure(model: str, pairs_path: str, resolution: int, images: int) -> dict[str, Any]:
    from dspo.data.cache_images import load_image
    from dspo.data.pair_table import read_pairs
    from dspo.families import load_family
    from dspo.families.sd_pipeline import load_pipeline

    family = load_family(model)
    pipe = load_pipeline(model, without=(family.denoiser,))
    table = read_pairs(pairs_path)
    data = [*table["jpg_w"][:images], *table["jpg_l"][: max(0, images - len(table))]]
    data = data[:images]
    pixels = torch.from_numpy(np.stack([load_image(d, resolution).pixels for d in data]))
    with torch.no_grad():
        mean, std = family.encode_posterior(pipe, pixels)
        mirror_mean, _ = family.encode_posterior(pipe, pixels.flip(-1))
    flipped = mean.flip(-1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).norm(dim=1)

    gap = norm(flipped - mirror_mean)
    return {
        "model": model,
        "images": len(data),
        "latent_shape": list(mean.shape[1:]),
        # ||mirror(E(x)) - E(mirror(x))|| / ||E(mirror(x))||, mean over images
        "relative_gap": float((gap / norm(mirror_mean)).mean()),
        # the same gap, per element, over the posterior's mean deviation
        "gap_over_posterior_std": float(
            (flipped - mirror_mean).abs().mean() / std.mean().clamp_min(1e-12)
        ),
        # how far the two orientations are apart at all: ||E(x) - E(mirror(x))|| / ||E(x)||
        "orientation_gap": float((norm(mean - mirror_mean) / norm(mean)).mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="dspo bench flip", description=__doc__)
    parser.add_argument("--model", required=True, help="a diffusers pipeline folder or hub id")
    parser.add_argument("--pairs", required=True, help="a pair table (results/data/*.parquet)")
    parser.add_argument("--resolution", type=int, required=True, help="training resolution")
    parser.add_argument("--images", type=int, default=256, help="images measured (default 256)")
    args = parser.parse_args(argv)
    result = measure(args.model, args.pairs, args.resolution, args.images)
    print(
        f"{result['images']} images, latents {tuple(result['latent_shape'])} of {args.model}\n"
        f"  ||mirror(E(x)) - E(mirror(x))|| / ||E(mirror(x))||: {result['relative_gap']:.4f}\n"
        f"  the same gap per element / posterior std:          "
        f"{result['gap_over_posterior_std']:.3f}\n"
        f"  ||E(x) - E(mirror(x))|| / ||E(x)|| (orientations):  "
        f"{result['orientation_gap']:.4f}"
    )
    return result
