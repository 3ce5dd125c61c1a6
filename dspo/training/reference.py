"""The frozen reference's outputs, computed before training along the trainer's own batches.

Every pair a run will see, at every visit, is a pure function of (seed, step, place in the
step): its rows, prompt dropout, noise and timestep (:mod:`dspo.training.preference`). So the
reference, which never changes, can run in a job of its own, with no autograd and several
of the trainer's micro-batches per forward, scattered over GPUs like the cache; training
then runs no reference forward at all, and full fine-tuning holds no reference copy.

What is kept per pair-visit is what the objective uses (``ReferenceStats``): the reference's
squared error of each image (Diffusion-DPO, KTO: two float32, 8 bytes per pair), and for
DSPO and its variants also its prediction for the preferred image (one latent). DDSPO's
targets are the reference's full predictions of both images; it stays online.

Layout: ``{folder}/reference.json`` (the key, the parts) and per part
``part{k}/errors.npy`` (visits, 2 or 1) and ``part{k}/preferred.npy`` (visits, C, H, W),
read memory-mapped. Visit ``v = step * pairs_per_step + position``; part k holds steps
``[k * steps // parts, (k + 1) * steps // parts)``.

Exactness: with ``batch_factor`` 1 every forward is the trainer's own (same rows, same
batch), so on one machine training gives bit-identical weights; with more micro-batches per
forward the matrix kernels may sum in another order, a difference of float32 rounding
(tests/training/test_reference.py bounds it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dspo.core.files import part_folder, read_part_records
from dspo.families.base import Family
from dspo.objectives import Objective, get_objective
from dspo.objectives.terms import ReferenceStats, per_sample_mse
from dspo.training.fingerprint import PART_NAMES, recorded_parts
from dspo.training.policy import switch
from dspo.training.preference import micro_batch, noised_inputs, step_rows
from dspo.training.settings import REFERENCE_STORAGE, TrainSettings

MANIFEST = "reference.json"
# The training config that fixes the batches the reference sees; nothing else matters to it.
BATCH_KEYS = ("seed", "steps", "pairs_per_step", "local_pairs", "prompt_dropout", "family_settings")


def reference_slice(settings: TrainSettings, objective: Objective) -> dict[str, Any]:
    """What a precomputed reference depends on, besides the base model, cache and code.

    The batch keys as the run's config records them (``settings.resolved``), so the keys of
    references already computed stay valid.
    """
    return {
        **{k: settings.resolved.get(k) for k in BATCH_KEYS},
        "preferred_only": objective.preferred_only,
        "shared_noise": objective.shared_noise,
        "prediction": objective.uses_reference_prediction,
        "storage": settings.reference_storage,
    }


def reference_parts(
    settings: TrainSettings, objective: Objective, base_model: str, manifest: Mapping[str, Any]
) -> dict[str, str]:
    """Content keys of everything the reference outputs depend on, by part."""
    return recorded_parts(reference_slice(settings, objective), base_model, manifest)


def part_steps(steps: int, part: int, parts: int) -> range:
    return range(part * steps // parts, (part + 1) * steps // parts)


def _reference_denoiser(
    family: Family, base_model: str, device: str, dtype: torch.dtype, settings: TrainSettings
):
    """The frozen base denoiser, with the run's channels-last and reference-compile switches."""
    denoiser = family.load_denoiser(base_model)
    denoiser = denoiser.to(device=device, dtype=dtype).requires_grad_(False).eval()
    return switch(denoiser, settings, settings.compile.reference)


@torch.no_grad()
def compute_part(
    cfg: Mapping[str, Any],
    cache_dir: Path,
    base_model: str,
    out_dir: Path,
    *,
    part: int = 0,
    parts: int = 1,
    batch_factor: int = 1,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Compute part ``part`` of ``parts`` of a method's reference outputs into ``out_dir``.

    Stored in the form the loss takes: scaled to noise space when the family is set to
    ``noise_form``, as the trainer scales its own predictions.
    """
    from dspo.data.cache_load import load_cache
    from dspo.families import load_family

    started = time.time()
    settings = TrainSettings.from_config(cfg)
    objective = get_objective(settings.objective)
    if not objective.reference_precomputable:
        raise ValueError(
            f"objective {objective.name!r} cannot use a precomputed reference "
            f"({'its targets are the reference' if objective.needs_reference else 'it has none'})"
        )
    cache = load_cache(cache_dir)
    family = load_family(base_model, **settings.family_settings)
    denoiser = _reference_denoiser(family, base_model, device, dtype, settings)
    steps, per_step, local = settings.steps, settings.pairs_per_step, settings.local_pairs
    mine = part_steps(steps, part, parts)
    visits = len(mine) * per_step
    latent = tuple(cache.manifest["latent_shape"])
    storage = REFERENCE_STORAGE[settings.reference_storage]
    with part_folder(out_dir, "reference") as (tmp, record):
        columns = 1 if objective.preferred_only else 2
        errors = np.lib.format.open_memmap(tmp / "errors.npy", "w+", np.float32, (visits, columns))
        preferred = None
        if objective.uses_reference_prediction:
            shape = (visits, *latent)
            preferred = np.lib.format.open_memmap(tmp / "preferred.npy", "w+", storage, shape)
        autocast = (
            torch.autocast(device_type=torch.device(device).type, dtype=dtype)
            if dtype != torch.float32
            else nullcontext()
        )
        # The trainer's micro-batches of one step, in order, run `batch_factor` at a time.
        starts = list(range(0, per_step, local))
        groups = [starts[i : i + batch_factor] for i in range(0, len(starts), batch_factor)]
        bar = tqdm(mine, desc=f"reference part {part}", mininterval=5)
        for row, step in enumerate(bar):
            rows = step_rows(len(cache), per_step, settings.seed, step)
            for group in groups:
                inputs = [
                    noised_inputs(
                        micro_batch(cache, rows, step, s, settings, family, objective.shared_noise),
                        objective,
                        family,
                    )
                    for s in group
                ]
                x, t = (torch.cat([getattr(i, k) for i in inputs]).to(device) for k in ("x", "t"))
                cond = {
                    k: torch.cat([i.cond[k] for i in inputs]).to(device) for k in inputs[0].cond
                }
                with autocast:
                    out = family.predict(denoiser, x, t, cond)
                predictions = out.float().cpu().split([len(i.x) for i in inputs])
                for s, inp, ref in zip(group, inputs, predictions, strict=True):
                    _, ref, target = family.objective_inputs(None, ref, inp.target, inp.t)
                    stats = stats_of(ref, target, objective)
                    first = row * per_step + s
                    errors[first : first + local] = stats.errors.reshape(columns, local).T.numpy()
                    if preferred is not None:
                        preferred[first : first + local] = stats.preferred.numpy().astype(storage)
        errors.flush()
        if preferred is not None:
            preferred.flush()
        record |= {
            "part": part,
            "parts": parts,
            "steps": [mine.start, mine.stop],
            "visits": visits,
            "columns": columns,
            "latent_shape": list(latent),
            "storage": settings.reference_storage,
            "key": reference_parts(settings, objective, base_model, cache.manifest),
            "batch_factor": batch_factor,
            "seconds": round(time.time() - started, 1),
        }
    bytes_total = sum(f.stat().st_size for f in out_dir.glob("*.npy"))
    return {**record, "bytes_per_visit": round(bytes_total / max(1, visits), 1)}


def stats_of(ref: torch.Tensor, target: torch.Tensor, objective: Objective) -> ReferenceStats:
    """What ``objective`` uses of the reference's prediction ``ref`` (2B or B rows)."""
    errors = per_sample_mse(ref, target)
    preferred = None
    if objective.uses_reference_prediction:
        preferred = ref if objective.preferred_only else ref.chunk(2)[0]
    return ReferenceStats(errors, preferred)


def gather(part_dirs: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """Move the parts into one folder and write its manifest last."""
    records = read_part_records(part_dirs, "reference")
    for r in records[1:]:
        if r["key"] != records[0]["key"]:
            raise ValueError(f"{r['dir']}: computed for another run than part 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for r in records:
        target = out_dir / f"part{r['part']}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(r["dir"], target, copy_function=_link)
    manifest = {
        "key": records[0]["key"],
        "parts": [{k: r[k] for k in ("part", "steps", "visits")} for r in records],
        "columns": records[0]["columns"],
        "storage": records[0]["storage"],
        "bytes": sum(f.stat().st_size for f in out_dir.glob("part*/*.npy")),
    }
    manifest["bytes_per_visit"] = round(
        manifest["bytes"] / max(1, sum(r["visits"] for r in records)), 1
    )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _link(src: str, dst: str) -> None:
    # Parts are deleted after gathering: a hard link keeps their bytes without a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class PrecomputedReference:
    """A gathered reference folder, checked against the run that reads it."""

    def __init__(self, folder: Path, expected: Mapping[str, str], pairs_per_step: int) -> None:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the reference job has not finished")
        manifest = json.loads(path.read_text())
        changed = [PART_NAMES[p] for p in expected if manifest["key"].get(p) != expected[p]]
        if changed:
            raise ValueError(
                f"{folder} was computed for another run: {', '.join(changed)} changed; "
                "rerun the reference job"
            )
        self.per_step = pairs_per_step
        self.parts = []
        for entry in manifest["parts"]:
            sub = Path(folder) / f"part{entry['part']}"
            preferred = sub / "preferred.npy"
            self.parts.append(
                (
                    range(*entry["steps"]),
                    np.load(sub / "errors.npy", mmap_mode="r"),
                    np.load(preferred, mmap_mode="r") if preferred.exists() else None,
                )
            )

    def stats(self, step: int, start: int, n: int, device: torch.device | str) -> ReferenceStats:
        """The reference's outputs for ``n`` pairs from position ``start`` of step ``step``."""
        for steps, errors, preferred in self.parts:
            if step in steps:
                first = (step - steps.start) * self.per_step + start
                block = torch.from_numpy(np.array(errors[first : first + n]))
                pred = None
                if preferred is not None:
                    pred = torch.from_numpy(np.array(preferred[first : first + n])).float()
                    pred = pred.to(device)
                # (n, 2) -> (2n,): the preferred rows first, as the objectives take them.
                return ReferenceStats(block.T.reshape(-1).to(device), pred)
        raise ValueError(f"the precomputed reference has no step {step}")
