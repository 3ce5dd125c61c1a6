"""DDSPO's self-generated pairs: the reference model against itself with a degraded prompt.

For each prompt c the base (reference) model samples the preferred image from c and the
rejected image from a degraded prompt c_minus, starting from the same noise, so the pair
differs by what the prompt lost. The degrader is pluggable: the built-in one deletes a random
40-70 % of the words (seeded); an instruction-tuned LLM can rewrite the prompts as the paper
does (kind ``llm``, :mod:`dspo.data.degraded_prompts`, run beforehand by its own job); any
external command can replace either.

Generation is scattered over ``ddspo.shards`` part jobs (contiguous blocks of sampling
batches) that stream their PNGs to disk, and gathered into one table, like the other data
steps; the result does not depend on the number of parts.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from dspo.core.files import part_folder, png_bytes
from dspo.data.pair_table import PART_TABLE, PairWriter, read_block_parts
from dspo.data.pairs import prompt_id_of
from dspo.families import pipeline_family
from dspo.families.base import Family
from dspo.generation.sample import initial_noise, load_for_sampling


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


def _drop_words(prompts: Sequence[str], spec: Mapping[str, Any], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return drop_words(prompts, rng, spec["min_fraction"], spec["max_fraction"])


def _command(prompts: Sequence[str], spec: Mapping[str, Any], seed: int) -> list[str]:
    return command_degrader(prompts, spec["command"])


def _llm(prompts: Sequence[str], spec: Mapping[str, Any], seed: int) -> list[str]:
    raise ValueError(
        "degrader kind llm runs in its own step (dspo ddspo-degrade, rule ddspo_degrade), "
        "whose table the parts read (dspo ddspo-part --degraded)"
    )


# ddspo.degrader.kind: each degrades (prompts, degrader config, seed); the LLM's prompts are
# made beforehand (dspo.data.degraded_prompts).
DEGRADERS: dict[str, Callable[[Sequence[str], Mapping[str, Any], int], list[str]]] = {
    "drop_words": _drop_words,
    "command": _command,
    "llm": _llm,
}


def degrade(prompts: Sequence[str], spec: Mapping[str, Any], seed: int) -> list[str]:
    """Apply the configured degrader."""
    if spec["kind"] not in DEGRADERS:
        raise ValueError(
            f"unknown degrader kind {spec['kind']!r}; expected {' or '.join(DEGRADERS)}"
        )
    return DEGRADERS[spec["kind"]](prompts, spec, seed)


def ddspo_prompts(captions: Sequence[str], cfg: Mapping[str, Any]) -> list[str]:
    """The prompts DDSPO samples: ``cfg['prompts']`` distinct captions, drawn with its seed.

    Every part computes the whole list (text only, a few MB at the paper's 200k prompts), so
    all parts agree on it whatever their number.
    """
    unique = sorted(set(captions))
    rng = np.random.default_rng(cfg["seed"])
    return [unique[i] for i in rng.permutation(len(unique))[: cfg["prompts"]]]


def part_batches(n_prompts: int, batch_size: int, part: int, parts: int) -> tuple[int, int]:
    """The sampling batches ``[first, stop)`` of part ``part`` of ``parts``.

    Parts split at batch boundaries, so each batch holds the same prompts and noise whatever
    the number of parts, and the images are bit-identical to a one-part run.
    """
    if not 0 <= part < parts:
        raise ValueError(f"ddspo part {part} is not in 0..{parts - 1}")
    batches = -(-n_prompts // batch_size)
    return part * batches // parts, (part + 1) * batches // parts


def _degraded(
    chosen: Sequence[str],
    first: int,
    stop: int,
    cfg: Mapping[str, Any],
    llm: Mapping[str, str] | None,
) -> list[str]:
    """The degraded prompts of ``chosen[first:stop]``.

    The built-in degrader draws from one seeded stream over every prompt (cheap, and the same
    in every part); an external command sees only this part's prompts; the LLM's are read
    from ``llm`` (prompt: degraded copy), made beforehand by one job
    (:mod:`dspo.data.degraded_prompts`).
    """
    if cfg["degrader"]["kind"] == "llm":
        missing = [p for p in chosen[first:stop] if llm is None or p not in llm]
        if missing:
            raise ValueError(
                f"degrader kind llm: no degraded copy of {len(missing)} prompts of this part "
                f"(e.g. {missing[0]!r}); pass the table of `dspo ddspo-degrade` as --degraded"
            )
        return [llm[p] for p in chosen[first:stop]]
    if cfg["degrader"]["kind"] == "drop_words":
        return degrade(chosen, cfg["degrader"], cfg["seed"])[first:stop]
    return degrade(chosen[first:stop], cfg["degrader"], cfg["seed"])


@torch.no_grad()
def make_ddspo_part(
    captions: Sequence[str],
    base_model: str,
    cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    part: int = 0,
    parts: int = 1,
    device: str = "cpu",
    degraded: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Sample part ``part`` of ``parts`` of DDSPO's pairs into the folder ``out_dir``.

    The pairs are the canonical pair table plus ``caption_l``, the degraded prompt of each
    rejected image, which the cache encodes as that image's condition. Each batch's PNGs go
    to disk as soon as they are made (at most one row group is held), so memory does not grow
    with the number of prompts. ``degraded`` holds the LLM degrader's copies (prompt: its
    degraded copy), needed for degrader kind ``llm``.
    """
    chosen = ddspo_prompts(captions, cfg)
    batch = cfg["batch_size"]
    first_batch, stop_batch = part_batches(len(chosen), batch, part, parts)
    first, stop = first_batch * batch, min(stop_batch * batch, len(chosen))
    good_all, bad_all = chosen[first:stop], _degraded(chosen, first, stop, cfg, degraded)
    pipe, family = None, None
    if stop > first:
        pipe = load_for_sampling(base_model, base_model, device=device)
        family = pipeline_family(pipe)
        family.sampling_scheduler(pipe, family.default_sampler)
    with part_folder(Path(out_dir), "DDSPO pairs") as (tmp, record):
        with PairWriter(tmp / PART_TABLE, rejected_caption=True) as writer:
            for start in tqdm(range(first, stop, batch), desc=f"ddspo part {part}", mininterval=5):
                good = good_all[start - first : start - first + batch]
                bad = bad_all[start - first : start - first + batch]
                writer.write(_sample_batch(pipe, family, good, bad, start, cfg, device))
        record |= {
            "part": part,
            "parts": parts,
            "settings": {**cfg, "chosen": len(chosen)},
            "n_blocks": -(-len(chosen) // batch),
            "blocks": [first_batch, stop_batch],
            "pairs": stop - first,
        }
    return {"part": part, "pairs": stop - first, "batches": [first_batch, stop_batch]}


def _sample_batch(
    pipe: Any,
    family: Family,
    good: Sequence[str],
    bad: Sequence[str],
    start: int,
    cfg: Mapping[str, Any],
    device: str,
) -> pd.DataFrame:
    """One batch of pairs: both prompts from the same per-pair noise, encoded as PNG rows."""
    resolution = family.native_resolution(pipe)
    shape = family.latent_shape(pipe, resolution)
    ids = range(start, start + len(good))
    latents = torch.stack([initial_noise(shape, i, cfg["seed"]) for i in ids]).to(device)
    images = {}
    for side, texts in (("w", good), ("l", bad)):
        images[side] = family.sample(
            pipe,
            list(texts),
            latents,
            steps=cfg["steps"],
            guidance=cfg["guidance"],
            resolution=resolution,
        )
    return pd.DataFrame(
        {
            "pair_id": list(ids),
            "prompt_id": [prompt_id_of(c) for c in good],
            "caption": list(good),
            "jpg_w": [png_bytes(image) for image in images["w"]],
            "jpg_l": [png_bytes(image) for image in images["l"]],
            "label_w": 1.0,
            "source_row": list(ids),
            "caption_l": list(bad),
        }
    )


def gather_ddspo(part_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Join the parts of :func:`make_ddspo_part` into one pair table, one row group at a time.

    Pair ids are the prompts' positions in the drawn list, so they run 0..n-1 already.
    """
    records = read_block_parts(part_dirs)
    kept_words: list[float] = []
    examples: list[dict[str, str]] = []
    n = 0
    with PairWriter(out, rejected_caption=True) as writer:
        for folder in (record["dir"] for record in records):
            table = pq.ParquetFile(folder / PART_TABLE)
            for group in range(table.num_row_groups):
                rows = table.read_row_group(group).to_pandas()
                if not (rows["pair_id"].to_numpy() == np.arange(n, n + len(rows))).all():
                    raise ValueError(f"{folder}: pair ids do not continue from {n}")
                n += len(rows)
                writer.write(rows)
                pairs = zip(rows["caption"], rows["caption_l"], strict=True)
                for good, bad in pairs:
                    kept_words.append(len(bad.split()) / max(1, len(good.split())))
                    if len(examples) < 3:
                        examples.append({"prompt": good, "degraded": bad})
    if n != records[0]["settings"]["chosen"]:
        raise ValueError(f"the parts hold {n} pairs, expected {records[0]['settings']['chosen']}")
    return {
        "pairs": n,
        "parts": len(records),
        "mean_words_kept": float(np.mean(kept_words)) if kept_words else 0.0,
        "examples": examples,
    }
