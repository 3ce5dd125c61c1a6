"""Validation images while training: fixed prompts and seeds sampled with the current policy.

The prompts are ``training.validation.prompts``, then the first ``count`` prompts of the prompt
set ``training.validation.from_prompt_set`` names (an entry of ``evaluation.prompt_sets``, read
from its table in its stored order: :func:`validation_prompts`). Every ``validate_every`` steps
and at the end, the main process samples them from the same initial noise each time
(:func:`dspo.generation.sample.initial_noise`, as evaluation does), so the images of one run
differ between steps only by what training changed. Each call saves a strip (one column per
prompt and seed) as ``{run_dir}/validation/step_{N:06d}.png`` and records it in ``index.json``.

Sampling leaves training exactly as it was: the policy goes back to train mode and the global
random state is restored, so a run with validation ends with the same weights as one
without. A resumed run keeps the images of the steps up to its checkpoint that were sampled
with the same settings and prompts. The prompts, fixed or from the set, enter no checkpoint
fingerprint (``validation`` is resume-neutral: :mod:`dspo.training.fingerprint`): they do not
shape the weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dspo.core.files import write_json_atomic

# torch, diffusers and the sampler load in the functions that sample: the training view
# only reads the index, and each of its jobs would spend seconds importing them.
if TYPE_CHECKING:
    import torch

VALIDATION_DIR = "validation"
INDEX = "index.json"


@dataclass(frozen=True)
class ValidationSettings:
    """What every validation strip of a run is sampled with."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    resolution: int

    @classmethod
    def from_config(
        cls, every: int, block: Mapping[str, Any], prompts: Sequence[str], resolution: int
    ) -> ValidationSettings | None:
        """``training.validate_every`` and ``training.validation`` with its ``prompts``
        (:func:`validation_prompts`); None when ``every`` is 0."""
        if not every:
            return None
        return cls(
            prompts=tuple(prompts),
            seeds=tuple(int(s) for s in block["seeds"]),
            steps=int(block["steps"]),
            guidance=float(block["guidance"]),
            resolution=resolution,
        )

    def columns(self) -> list[dict[str, Any]]:
        """One entry per image of a strip, left to right: each prompt at each seed."""
        return [
            {"prompt_id": i, "prompt": prompt, "seed": seed}
            for i, prompt in enumerate(self.prompts)
            for seed in self.seeds
        ]


def validation_set(cfg: Mapping[str, Any]) -> str | None:
    """The prompt set whose table a run's validation reads: the name in
    ``validation.from_prompt_set`` of a run that validates (``validate_every`` > 0); else None."""
    chosen = (cfg.get("validation") or {}).get("from_prompt_set")
    return chosen["name"] if cfg.get("validate_every") and chosen else None


def validation_problems(
    block: Mapping[str, Any], prompt_sets: Mapping[str, Any], where: str
) -> list[str]:
    """Plan-time problems of a ``training.validation`` block at config key ``where``: a
    ``from_prompt_set`` naming no entry of ``prompt_sets`` (``evaluation.prompt_sets``), or
    asking more prompts than that set's ``limit`` keeps, and a block with no prompt at all."""
    chosen = block.get("from_prompt_set")
    if not chosen:
        if block.get("prompts"):
            return []
        return [
            f"{where}: no validation prompt: {where}.prompts is empty and "
            f"{where}.from_prompt_set names no prompt set"
        ]
    name, count = chosen["name"], chosen["count"]
    if name not in prompt_sets:
        return [
            f"{where}.from_prompt_set.name: {name!r} is not a configured prompt set "
            f"(evaluation.prompt_sets: {', '.join(sorted(prompt_sets))})"
        ]
    limit = prompt_sets[name]["source"].get("limit")
    if limit and limit < count:
        return [
            f"{where}.from_prompt_set.count: {count} prompts of {name!r}, whose "
            f"evaluation.prompt_sets.{name}.source.limit keeps {limit}"
        ]
    return []


def validation_prompts(block: Mapping[str, Any], table: Path | None) -> tuple[str, ...]:
    """The prompts of every validation strip, left to right: ``block["prompts"]`` (the fixed
    ones), then the first ``from_prompt_set.count`` prompts of ``table``, the named prompt
    set's table (``dspo prompts``; columns prompt_set, prompt_id, prompt), in its stored order.

    Errors name the key: a set named without its table or a table given for none, a table of
    another set, one holding fewer prompts than counted, and no prompt at all.
    """
    where = "training.validation"
    chosen = block.get("from_prompt_set")
    prompts = tuple(block.get("prompts") or ())
    if chosen and table is None:
        raise ValueError(
            f"{where}.from_prompt_set names {chosen['name']!r}, but no table of its prompts "
            "was given (dspo train --validation-prompts)"
        )
    if table is not None and not chosen:
        raise ValueError(f"a validation prompt table {table} was given, but {where} names no set")
    if chosen:
        import pandas as pd

        frame = pd.read_parquet(table, columns=["prompt_set", "prompt"])
        sets = sorted(set(frame["prompt_set"]))
        if sets != [chosen["name"]]:
            raise ValueError(
                f"{where}.from_prompt_set.name {chosen['name']!r}: {table} holds the prompt "
                f"set(s) {', '.join(map(repr, sets)) or 'none'}"
            )
        if len(frame) < chosen["count"]:
            raise ValueError(
                f"{where}.from_prompt_set.count {chosen['count']}: {table} holds "
                f"{len(frame)} prompts"
            )
        prompts += tuple(frame["prompt"].iloc[: chosen["count"]])
    if not prompts:
        raise ValueError(f"{where}: no validation prompt (prompts is empty, no from_prompt_set)")
    return prompts


def is_due(done: int, steps: int, every: int) -> bool:
    """Whether step ``done`` is validated: every ``every`` steps and the last; never for 0."""
    return every > 0 and (done % every == 0 or done == steps)


def read_index(run_dir: Path) -> dict[str, Any] | None:
    """The run's validation index, or None when it has none."""
    path = run_dir / VALIDATION_DIR / INDEX
    return json.loads(path.read_text()) if path.exists() else None


def restart_validation(run_dir: Path, start_step: int, settings: ValidationSettings | None) -> None:
    """Keep the strips of the steps up to ``start_step`` made with the same settings.

    Strips of later steps belong to a cut run's steps that are trained again, and strips of
    other settings cannot be compared with the new ones: both are removed.
    """
    folder = run_dir / VALIDATION_DIR
    index = read_index(run_dir)
    # Compared as JSON reads them back (tuples become lists).
    record_of = json.loads(json.dumps(asdict(settings))) if settings is not None else None
    same = index is not None and record_of is not None and index["settings"] == record_of
    kept = [e for e in index["images"] if e["step"] <= start_step] if same else []
    for png in folder.glob("step_*.png"):
        if png.name not in {e["file"] for e in kept}:
            png.unlink()
    if settings is None:
        (folder / INDEX).unlink(missing_ok=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    record = {"settings": asdict(settings), "columns": settings.columns(), "images": kept}
    write_json_atomic(record, folder / INDEX)


class Validator:
    """Samples the validation prompts with the policy denoiser, in the base model's pipeline."""

    def __init__(
        self, base_model: str, denoiser: torch.nn.Module, settings: ValidationSettings, device
    ) -> None:
        import torch

        from dspo.families import pipeline_family
        from dspo.families.sd_pipeline import load_pipeline
        from dspo.generation.sample import initial_noise

        pipe = load_pipeline(base_model)
        self.family = pipeline_family(pipe)
        self.family.sampling_scheduler(pipe, self.family.default_sampler)
        # The pipeline runs the policy itself (adapters on, for LoRA): the base denoiser it
        # loaded is dropped, so nothing but text encoder(s) and VAE is held in addition.
        setattr(pipe, self.family.denoiser, denoiser)
        self.pipe = pipe.to(device)
        self.denoiser = denoiser
        self.settings = settings
        shape = self.family.latent_shape(pipe, settings.resolution)
        self.columns = settings.columns()
        self.noise = torch.stack(
            [initial_noise(shape, c["prompt_id"], c["seed"]) for c in self.columns]
        )

    def sample(self, model: torch.nn.Module) -> np.ndarray:
        """Images (N, H, W, 3) in [0, 1]; ``model`` (holding the policy) is in eval mode
        meanwhile, and the global random state is the same afterwards."""
        import torch

        device = self.denoiser.device
        devices = [device] if device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                return self.family.sample(
                    self.pipe,
                    [c["prompt"] for c in self.columns],
                    self.noise,
                    steps=self.settings.steps,
                    guidance=self.settings.guidance,
                    resolution=self.settings.resolution,
                )
        finally:
            model.train(was_training)


def save_strip(run_dir: Path, step: int, images: np.ndarray) -> Path:
    """The images side by side as ``validation/step_{step:06d}.png``, added to the index."""
    from dspo.generation.sample import save_image

    folder = run_dir / VALIDATION_DIR
    path = folder / f"step_{step:06d}.png"
    save_image(np.concatenate(list(images), axis=1), path)
    index = json.loads((folder / INDEX).read_text())
    entries = [e for e in index["images"] if e["step"] != step]
    index["images"] = [*entries, {"step": step, "file": path.name}]
    write_json_atomic(index, folder / INDEX)
    return path
