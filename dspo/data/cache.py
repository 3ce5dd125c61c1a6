"""A cache of VAE latents and text embeddings for preference pairs.

Training reads latents instead of decoding JPEGs and running the VAE and text encoder at
every step. The cache is a folder of sharded safetensors plus ``manifest.json``:

- ``latents-NNNNN.safetensors``: ``latents_w``, ``latents_l`` (pairs, C, h, w), as the
  denoiser sees them (shifted and scaled as the model family does, `Family.encode_images`);
  ``text_w``, ``text_l`` (pairs,) row indices into the text embeddings (equal for human pairs;
  DDSPO's rejected image has its own prompt); ``pair_id`` (pairs,).
  ``original_size_w``, ``original_size_l`` (pairs, 2): each image's (height, width) before
  resizing; ``crop_w``, ``crop_l`` (pairs, 2): the (top, left) corner of its crop in the resized
  (and, when flipped, mirrored) image. SDXL's UNet is conditioned on both (its time ids).
- ``text.safetensors``: each prompt tensor the family declares (`Family.text_keys`), for the
  unique prompts, and beside it the empty prompt's (one row, used for prompt dropout) under
  `dspo.families.base.empty_name`: ``embeddings`` (unique prompts, tokens, dim) and ``empty``
  (1, tokens, dim) for every family; for families with pooled text (SDXL, SD3, FLUX) also
  ``pooled`` (unique prompts, dim) and ``empty_pooled`` (1, dim).
- ``manifest.json``: the model, its family (a name of `dspo.families`), resolution, crop and flip
  settings, dtype and scaling factor it was built with, the shards and their sizes, and the
  bytes per pair. It is written last: a folder with a manifest is a complete cache.

At scale the cache is built by scatter/gather: `dspo.data.cache_encode.encode_part` encodes
part k of N (a contiguous block of latent files and of the sorted unique prompts, see
`dspo.data.cache_encode.PartPlan`) into its own folder with ``part.json``, renamed into place
when complete; `dspo.data.cache_gather.gather_cache` joins the N folders. The blocks follow
fixed grids, so the result does not depend on N. :func:`build_cache` (here) is the same in one
process, one part. Images are prepared for the VAE by :mod:`dspo.data.cache_images`; the
cache is read by :mod:`dspo.data.cache_load`.

By default each image is encoded once, as its VAE posterior mean, with its crop and flip drawn
once at caching time. The upstream recipe redraws all three at every visit of a pair. With
``per_visit`` the cache keeps what the trainer needs to redraw two of them
(`dspo.training.preference.make_batch`): the posterior's standard deviation (``std_w``, ``std_l``),
so a new posterior sample is drawn at each visit; and with ``flip`` both orientations of each image
(``mirror_w``, ``mirror_l``, ``mirror_std_w``, ``mirror_std_l``, ``crop_mirror_w``,
``crop_mirror_l``), one chosen at each visit. The mirror is encoded from the mirrored pixels: a
VAE encoder is not mirror-symmetric, so mirroring the latent is not the same
(docs/benchmarks.md gives the measured difference). Storage per pair: 2 latents by default, 4
with ``per_visit``, 8 with ``per_visit`` and ``flip``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dspo.data.cache_encode import CacheSettings, encode_part
from dspo.data.cache_gather import gather_cache
from dspo.data.pair_table import REJECTED_CAPTION


def build_cache(
    pairs: pd.DataFrame,
    model: str,
    out_dir: Path,
    *,
    resolution: int,
    dtype: str = "float16",
    shard_size: int = 4096,
    batch_size: int = 64,
    device: str = "cpu",
    prompts_l: Sequence[str] | None = None,
    crop: str = "center",
    flip: bool = False,
    seed: int = 0,
    per_visit: bool = False,
) -> dict[str, Any]:
    """Encode ``pairs`` (the canonical pair table) with ``model``'s VAE and text encoder(s).

    One process, one part: the same code and result as the workflow's sharded build.
    ``prompts_l`` gives each rejected image its own prompt (DDSPO's degraded prompts);
    by default both images of a pair share the caption. ``crop`` is ``center`` or ``random``;
    ``flip`` mirrors half the images; both are seeded per image by ``seed`` and the pair id.
    ``per_visit`` keeps what lets the trainer redraw posterior samples and flips per visit.
    """
    settings = CacheSettings(resolution, dtype, shard_size, batch_size, crop, flip, seed, per_visit)
    texts = pairs[["caption"]]
    if prompts_l is not None:
        texts = texts.assign(**{REJECTED_CAPTION: list(prompts_l)})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        part_dir = Path(tmp) / "part-0"
        encode_part(texts, lambda a, b: pairs.iloc[a:b], model, part_dir, settings, device=device)
        return gather_cache([part_dir], out_dir)
