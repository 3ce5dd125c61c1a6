"""What a site changes in the SLURM profile's requests, read from environment variables.

workflow/profiles/slurm/config.yaml calls these functions in its resource expressions (as
``__import__('dspo.config.slurm_site').slurm_site.NAME(...)``), so that a site sets variables
instead of editing the profile. A function returns ``None`` for a request left to the
cluster: Snakemake then leaves the resource unset and the SLURM plugin adds no option for it.
docs/cluster.md lists the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

GPU_STYLES = ("gpus", "gres")
# Seconds between SLURM's TERM and the time limit when DSPO_TRAIN_SIGNAL_LEAD is unset: the
# longest step plus the checkpoint write it must cover, with room (docs/cluster.md).
DEFAULT_SIGNAL_LEAD = 1800


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r}: expected at least 1")
    return value


def train_nodes(env: Mapping[str, str] | None = None) -> int:
    """Nodes of one training job (``DSPO_TRAIN_NODES``, default 1)."""
    return _positive(_env(env), "DSPO_TRAIN_NODES", 1)


def train_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs per node of one training job (``DSPO_TRAIN_GPUS``, default 4)."""
    return _positive(_env(env), "DSPO_TRAIN_GPUS", 4)


def gpu_style(env: Mapping[str, str] | None = None) -> str:
    """``gpus`` (``--gpus=[MODEL:]N``, the default) or ``gres`` (``--gres=gpu[:MODEL]:N``),
    from ``DSPO_SLURM_GPU_STYLE``. A job on several nodes always asks by ``--gres``, which
    counts per node, where ``--gpus`` counts for the whole job."""
    style = _env(env).get("DSPO_SLURM_GPU_STYLE") or "gpus"
    if style not in GPU_STYLES:
        raise ValueError(f"DSPO_SLURM_GPU_STYLE={style!r}: expected one of {GPU_STYLES}")
    return style


def _per_node(nodes: int, env: Mapping[str, str]) -> bool:
    return nodes > 1 or gpu_style(env) == "gres"


def gpu(gpus: int, nodes: int = 1, env: Mapping[str, str] | None = None) -> int | None:
    """The plugin's ``gpu`` resource: the count, when asked as ``--gpus``."""
    return None if _per_node(nodes, _env(env)) else gpus


def gpu_model(gpus: int, nodes: int = 1, env: Mapping[str, str] | None = None) -> str | None:
    """The plugin's ``gpu_model`` (``DSPO_SLURM_GPU_MODEL``), when asked as ``--gpus``."""
    env = _env(env)
    return None if _per_node(nodes, env) else (env.get("DSPO_SLURM_GPU_MODEL") or None)


def gres(gpus: int, nodes: int = 1, env: Mapping[str, str] | None = None) -> str | None:
    """The plugin's ``gres`` resource, ``gpu[:MODEL]:N`` per node, when asked that way."""
    env = _env(env)
    if not _per_node(nodes, env):
        return None
    model = env.get("DSPO_SLURM_GPU_MODEL")
    return f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"


def runtime(rule: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """Minutes of a rule's time limit: ``DSPO_SLURM_RUNTIME_<RULE>`` (e.g.
    ``DSPO_SLURM_RUNTIME_TRAIN``), else ``default``."""
    return _positive(_env(env), f"DSPO_SLURM_RUNTIME_{rule.upper()}", default)


def qos(env: Mapping[str, str] | None = None) -> str | None:
    """``--qos`` of every job (``DSPO_SLURM_QOS``; unset: none)."""
    return _env(env).get("DSPO_SLURM_QOS") or None


def constraint(kind: str, env: Mapping[str, str] | None = None) -> str | None:
    """``--constraint`` of the GPU or CPU rules (``DSPO_SLURM_GPU_CONSTRAINT``,
    ``DSPO_SLURM_CPU_CONSTRAINT``; unset: none)."""
    return _env(env).get(f"DSPO_SLURM_{kind.upper()}_CONSTRAINT") or None


def train_extra(env: Mapping[str, str] | None = None) -> str:
    """sbatch options of the training job: SIGURG ``DSPO_TRAIN_SIGNAL_LEAD`` seconds
    (default 1800) before the time limit, to every process of its steps.

    URG, not TERM: only the trainers (and their launcher) act on it; every other process
    ignores it by default, the Snakemake that runs the rule inside the job included. Given
    TERM, that Snakemake exits non-zero once the rule ends, however it ended, so a training
    that finished after the signal was reported failed, its model deleted and the retry
    started it again from step 0."""
    lead = _positive(_env(env), "DSPO_TRAIN_SIGNAL_LEAD", DEFAULT_SIGNAL_LEAD)
    return f"--signal=URG@{lead}"
