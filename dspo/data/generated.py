"""A generated pair source: pairs sampled from a model and labelled by a reward (AI feedback).

Two scattered steps over ``shards`` parts, each a contiguous block of the prompts:

- :func:`make_images_part` samples ``images_per_prompt`` images of each prompt with the
  evaluation's sampling rules (:mod:`dspo.generation.sample`: the starting noise of a
  (prompt, seed) is the one every model gets, seeds ``seed .. seed + K - 1``), each PNG
  written as it is made and keyed by what made it, so a part killed and run again makes only
  the images it lacks;
- :func:`label_part` scores them with the labelling reward (one reward, or a weighted sum) and
  pairs them by the rule (:func:`form_pairs`) into a parquet file in the Pick-a-Pic columns
  (``caption, jpg_0, jpg_1, label_0, label_1``), which the pair source then reads as a local
  parquet folder: normalising, deduplicating, caching and every objective take it unchanged;
  each chunk of prompts is kept as it is labelled, so a part killed and run again scores only
  the chunks it lacks.

Labelling is its own step so that a changed labelling reward rescores the same images.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from dspo.core.content import combined_key, content_key
from dspo.core.files import write_bytes_atomic
from dspo.data.pairs import prompt_id_of
from dspo.data.prompts import COLUMNS, load_prompt_set

PROMPT_SET = "generated"
# The labelled pairs: Pick-a-Pic's columns, then where each image came from and its score.
PAIR_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("seed_0", pa.int64()),
        ("seed_1", pa.int64()),
        ("score_0", pa.float64()),
        ("score_1", pa.float64()),
    ]
)


def generated_prompts(prompts: Mapping[str, Any], toy_pairs: str | None = None,
                      toy_prompts: str | None = None) -> pd.DataFrame:  # fmt: skip
    """The source's prompts as a prompt table (prompt_set, prompt_id, prompt).

    ``prompts`` is a prompt source as a prompt set's; a toy source with no ``split`` gives the
    toy world's training captions (the distinct captions of its pairs, ``toy_pairs``).
    """
    if prompts["kind"] == "toy" and prompts.get("split") is None:
        if toy_pairs is None:
            raise ValueError("generated prompts: toy training captions need the toy pairs")
        files = (
            sorted(Path(toy_pairs).glob("*.parquet"))
            if Path(toy_pairs).is_dir()
            else [Path(toy_pairs)]
        )
        captions = pd.concat([pd.read_parquet(f, columns=["caption"]) for f in files])
        texts = sorted(set(captions["caption"].astype(str)))
        if prompts.get("limit"):
            texts = texts[: prompts["limit"]]
        ids = [prompt_id_of(t) for t in texts]
        return pd.DataFrame({"prompt_set": PROMPT_SET, "prompt_id": ids, "prompt": texts})[COLUMNS]
    return load_prompt_set(PROMPT_SET, {"source": dict(prompts)}, toy_prompts=toy_prompts)


def part_range(n: int, part: int, parts: int) -> tuple[int, int]:
    """The prompts ``[first, stop)`` of part ``part`` of ``parts``."""
    if not 0 <= part < parts:
        raise ValueError(f"generated part {part} is not in 0..{parts - 1}")
    return part * n // parts, (part + 1) * n // parts


def make_images_part(
    prompts: pd.DataFrame,
    model: str,
    base_model: str,
    settings: Mapping[str, Any],
    manifest: Path,
    *,
    part: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sample part ``part`` of ``settings['shards']`` of the prompts, K images each, into the
    folder of ``manifest``; write the manifest (and its sidecar) once every image is on disk.

    ``settings`` is the resolved source (:func:`~dspo.data.generated_config.generated_settings`)
    plus the evaluation's sampling slice (steps, scheduler, resolution, batch_size, dtype).
    """
    from dspo.generation.sample import (
        generate,
        load_for_sampling,
        run_key,
        sampling_dtype,
        write_manifest,
    )

    first, stop = part_range(len(prompts), part, settings["shards"])
    block = prompts.iloc[first:stop]
    k, seed0 = int(settings["images_per_prompt"]), int(settings["seed"])
    seeds = list(range(seed0, seed0 + k))
    dtype = sampling_dtype(settings.get("dtype", "float32"), device)
    shared = {key: settings[key] for key in ("steps", "scheduler", "resolution")}
    key = run_key(model, base_model, {**shared, "dtype": dtype})
    if len(block):
        pipe = load_for_sampling(model, base_model, dtype=dtype, device=device)
        frame = generate(
            pipe, block, manifest.parent, seeds=seeds, guidance=[settings["guidance"]],
            batch_size=settings["batch_size"], key=key, **shared,
        )  # fmt: skip
    else:
        from dspo.generation.sample import MANIFEST_COLUMNS

        frame = pd.DataFrame(columns=MANIFEST_COLUMNS)
    meta = {"model": model, "base": base_model, **shared, "key": key, "seeds": seeds,
            "guidance": settings["guidance"], "part": part, "prompts": [first, stop]}  # fmt: skip
    write_manifest(frame, manifest, meta)
    return {"part": part, "prompts": stop - first, "images": len(frame)}


def label_scores(scores: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    """The labelling reward of each image of a long score table (one row per image and reward,
    images in manifest order): the weighted sum of its rewards' scores."""
    total = None
    for name, weight in weights.items():
        values = scores.loc[scores["reward"] == name, "score"].to_numpy(np.float64)
        total = weight * values if total is None else total + weight * values
    if total is None:
        raise ValueError("the labelling reward names no reward")
    return total


def form_pairs(scores: Sequence[float], rule: str, margin: float) -> list[tuple[int, int, float]]:
    """The pairs of one prompt's images as (i, j, label_i), i < j in sampling order.

    ``best_worst``: the highest-scoring image against the lowest (the first of equals);
    ``margin``: every pair. label_i is 1 or 0 by which image scores higher, 0.5 (a tie) when the
    gap is at most ``margin``.
    """
    values = np.asarray(scores, np.float64)
    if len(values) < 2:
        return []
    if rule == "best_worst":
        best, worst = int(np.argmax(values)), int(np.argmin(values))
        if best == worst:  # all equal
            best, worst = 0, 1
        candidates = [tuple(sorted((best, worst)))]
    elif rule == "margin":
        candidates = list(combinations(range(len(values)), 2))
    else:
        raise ValueError(f"unknown pairing rule {rule!r}; expected best_worst or margin")
    pairs = []
    for i, j in candidates:
        gap = values[i] - values[j]
        pairs.append((i, j, 0.5 if abs(gap) <= margin else float(gap > 0)))
    return pairs


def label_part(
    manifest_path: Path,
    rewards: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    out: Path,
    *,
    device: str = "cpu",
    prompts_per_chunk: int = 256,
) -> dict[str, Any]:
    """Score one part's images with the labelling reward and write its pairs to ``out``.

    ``rewards`` holds the config entries of the rewards ``settings['weights']`` names. Every
    image is checked against its manifest's key first. Prompts are scored a chunk at a time,
    each chunk's pairs written whole to the scratch folder :func:`chunk_folder` under a name
    holding :func:`chunk_key`, so a part killed and run again scores only the chunks it lacks;
    ``out`` is joined from the chunks and renamed into place once whole, and the scratch folder
    is then removed (every chunk of it is in ``out``).
    """
    from dspo.core.image_keys import check_manifest_images
    from dspo.rewards import score_manifest

    manifest = pd.read_parquet(manifest_path)
    check_manifest_images(manifest, manifest_path, "generated")
    weights = settings["weights"]
    specs = {name: rewards[name] for name in weights}
    order = list(dict.fromkeys(manifest["prompt_id"]))
    counts = {"prompts": len(order), "pairs": 0, "ties": 0, "chunks_resumed": 0}
    scratch = chunk_folder(out)
    scratch.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(order), prompts_per_chunk)
    files = []
    for index, start in enumerate(tqdm(starts, desc="label", mininterval=5)):
        chunk = manifest[manifest["prompt_id"].isin(order[start : start + prompts_per_chunk])]
        done = scratch / f"chunk{index:05d}-{chunk_key(chunk, specs, settings)}.parquet"
        if done.exists():
            counts["chunks_resumed"] += 1
        else:
            scored = score_manifest(chunk, manifest_path.parent, specs, model_name="generated",
                                    device=device)  # fmt: skip
            chunk = chunk.assign(label_score=label_scores(scored, weights))
            rows = _pair_rows(chunk, manifest_path.parent, settings["rule"], settings["margin"])
            write_chunk(rows, done)
        files.append(done)
    tmp = out.with_name(f".{out.name}.tmp")
    with pq.ParquetWriter(tmp, PAIR_SCHEMA) as writer:
        for done in files:
            table = pq.read_table(done, schema=PAIR_SCHEMA)
            counts["pairs"] += table.num_rows
            counts["ties"] += int(pc.sum(pc.equal(table["label_0"], 0.5)).as_py() or 0)
            writer.write_table(table)
    tmp.replace(out)
    shutil.rmtree(scratch)
    return counts


def chunk_folder(out: Path) -> Path:
    """The scratch folder of the chunks of the labelled part ``out``, beside it."""
    return out.with_name(f".{out.stem}.chunks")


def chunk_key(
    chunk: pd.DataFrame, specs: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
) -> str:
    """The key of a chunk's pairs: its images' keys (in order), the labelling rewards' entries
    (with the content of any local file or folder they name), the weights and the pairing rule."""
    rewards = {
        name: {
            key: content_key(value) if isinstance(value, str) and Path(value).exists() else value
            for key, value in spec.items()
        }
        for name, spec in specs.items()
    }
    return combined_key(
        images=chunk[["prompt_id", "seed", "path", "key"]].to_json(orient="values"),
        rewards=json.dumps(rewards, sort_keys=True, default=str),
        weights=json.dumps(dict(settings["weights"]), sort_keys=True),
        rule=settings["rule"],
        margin=float(settings["margin"]),
    )


def write_chunk(rows: pd.DataFrame, path: Path) -> None:
    """A chunk's pair rows as a parquet file in :data:`PAIR_SCHEMA`, written atomically."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(rows, schema=PAIR_SCHEMA, preserve_index=False), buffer)
    write_bytes_atomic(buffer.getvalue(), path)


def _pair_rows(images: pd.DataFrame, folder: Path, rule: str, margin: float) -> pd.DataFrame:
    """The Pick-a-Pic rows of a block of images (all images of each of its prompts)."""
    rows = []
    for _, group in images.groupby("prompt_id", sort=False):
        group = group.sort_values("seed")
        values = group["label_score"].tolist()
        for i, j, label in form_pairs(values, rule, margin):
            a, b = group.iloc[i], group.iloc[j]
            rows.append(
                {
                    "caption": a["prompt"],
                    "jpg_0": (folder / a["path"]).read_bytes(),
                    "jpg_1": (folder / b["path"]).read_bytes(),
                    "label_0": label,
                    "label_1": 1.0 - label,
                    "seed_0": int(a["seed"]),
                    "seed_1": int(b["seed"]),
                    "score_0": float(values[i]),
                    "score_1": float(values[j]),
                }
            )
    return pd.DataFrame(rows, columns=PAIR_SCHEMA.names)


def write_prompts(table: pd.DataFrame, out: Path) -> None:
    """The prompt table, written atomically."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    write_bytes_atomic(buffer.getvalue(), out)
