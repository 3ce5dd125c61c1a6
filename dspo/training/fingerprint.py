"""Checkpoint fingerprints: what shapes a run's trained weights, by part, and what changed.

A training checkpoint (:mod:`dspo.training.checkpoints`) and a precomputed reference
(:mod:`dspo.training.reference`) are valid only for the run they were made for. Their fingerprint
has four parts: the trajectory-relevant config (every key but :data:`RESUME_NEUTRAL`), the base
model's content key (:mod:`dspo.core.content`), the cache's manifest (every shard's SHA-256), and
the code the training step runs: the package version and the source of :data:`TRAINING_ENTRY`
and every ``dspo`` module it imports, transitively (evaluation, rewards, reporting, the CLI
and tooling are not among them). Besides the parts' keys a checkpoint records the details
(:func:`fingerprint_details`) that let the log name what changed: config keys, source files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspo
from dspo.core.content import combined_key, content_key, source_files, source_hashes, source_key

if TYPE_CHECKING:
    from dspo.training.settings import TrainSettings

# Keys that do not change the training trajectory up to a given step: a checkpoint stays
# valid when only these change (e.g. more steps resume a finished run's last checkpoint; a
# run that diverged resumes its last good checkpoint with skipping allowed).
RESUME_NEUTRAL = frozenset(
    {
        "name",
        "steps",
        "checkpoint_every",
        "checkpoint_every_minutes",
        "keep_checkpoints",
        "evaluate_steps",
        "checkpoints_kept",
        "log_every",
        "report_to",
        "tracker_project",
        "validate_every",
        "validation",
        "skip_nonfinite",
        "resume_across_code_change",
    }
)
# The training step: its module and every dspo module it imports are the code a checkpoint
# depends on (dspo.core.content.imported_modules), and nothing else of the package.
TRAINING_ENTRY = "dspo.training.train"
# What each fingerprint part is called in the log when it differs.
PART_NAMES = {
    "config": "the training config",
    "base_model": "the base model's contents",
    "cache": "the cache's contents",
    "source": "the training code or dspo version",
}


def training_code() -> list[Path]:
    """The source files of the training step (:data:`TRAINING_ENTRY` and its imports)."""
    return source_files(TRAINING_ENTRY)


def _trajectory_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    relevant = {k: v for k, v in cfg.items() if k not in RESUME_NEUTRAL}
    return json.loads(json.dumps(relevant, sort_keys=True, default=str))


def recorded_parts(
    recorded: Mapping[str, Any], base_model: str, cache_manifest: Mapping[str, Any]
) -> dict[str, str]:
    """Content keys by part, the config part being that of a recorded config mapping (a
    run's ``TrainSettings.resolved``, or the slice of it a precomputed reference uses)."""
    return {
        "config": combined_key(config=json.dumps(_trajectory_config(recorded), sort_keys=True)),
        "base_model": content_key(base_model),
        "cache": combined_key(manifest=json.dumps(cache_manifest, sort_keys=True, default=str)),
        "source": source_key(training_code()),
    }


def fingerprint_parts(
    settings: TrainSettings, base_model: str, cache_manifest: Mapping[str, Any]
) -> dict[str, str]:
    """Content keys of everything that determines the run's trajectory, by part: its config
    as recorded (``settings.resolved``), so keys stay those of checkpoints already written."""
    return recorded_parts(settings.resolved, base_model, cache_manifest)


def fingerprint_details(settings: TrainSettings | None) -> dict[str, Any]:
    """What a checkpoint records to say later what changed: its trajectory config (none
    without ``settings``), the package version and each training source file's hash."""
    return {
        "config": _trajectory_config(settings.resolved if settings else {}),
        "version": dspo.__version__,
        "code": source_hashes(training_code()),
    }


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def describe_change(
    parts: Mapping[str, str],
    details: Mapping[str, Any],
    state: Mapping[str, Any],
) -> str:
    """What differs between this run and a checkpoint's ``state``, part by part, naming the
    config keys and source files where the checkpoint recorded them."""
    old_parts, old = state.get("parts"), state.get("details") or {}
    if not isinstance(old_parts, Mapping):
        return "its fingerprint predates content keys"
    said = []
    for part in [k for k in PART_NAMES if old_parts.get(k) != parts.get(k)]:
        if part == "config" and "config" in old:
            said.append(f"config keys {', '.join(_differing(old['config'], details['config']))}")
        elif part == "source" and "code" in old:
            changed = _differing(old["code"], details["code"])
            if old.get("version") != details["version"]:
                changed.append(f"dspo version {old.get('version')} -> {details['version']}")
            said.append(f"training code ({', '.join(changed) or 'the file list'})")
        else:
            said.append(PART_NAMES[part])
    return "; ".join(said) or "its fingerprint"


def only_code_differs(parts: Mapping[str, str], state: Mapping[str, Any]) -> bool:
    """Whether the checkpoint's parts differ from ``parts`` in the code part alone."""
    old = state.get("parts")
    if not isinstance(old, Mapping):
        return False
    return [k for k in PART_NAMES if old.get(k) != parts.get(k)] == ["source"]
