"""What a bootstrap interval resamples, in words: the one sentence every caption, plot note,
table note and the README's results block use.

The intervals are those of dspo/evaluation/statistics.py: percentile bootstraps over prompts
(the seeds of a prompt resampled together) and, for a model trained several times, over its
training replicates crossed with the prompts. Which of the two a figure's intervals are depends
only on how many replicates its models have, so the sentence is a function of those counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from numbers import Integral
from typing import Any

from dspo.config import experiments
from dspo.config.names import entries


def interval_sentence(
    n_replicates: int | Iterable[int],
    subject: str = "Intervals",
    ci: float = 0.95,
    n_boot: int | None = None,
) -> str:
    """The sentence saying what the intervals of a figure or table resample.

    ``n_replicates`` is the number of training replicates behind the intervals: one count, or
    one per model or row shown (the tables' ``n_replicates`` column). With none above one the
    intervals resample prompts; otherwise training replicates crossed with prompts, and the
    sentence says so for the models with one replicate (the base model, an ablation trained
    once) where those are shown too. ``subject`` names what shows the intervals ("Error bars",
    "Bands"); ``n_boot``, when given, is the number of resamples.
    """
    each = [n_replicates] if isinstance(n_replicates, Integral) else n_replicates
    counts = {int(n) for n in each}
    resamples = f", {n_boot} resamples" if n_boot else ""
    prompts = f"prompts (the seeds of a prompt resampled together{resamples})"
    several = sorted(n for n in counts if n > 1)
    if not several:
        over = prompts
    else:
        low, high = several[0], several[-1]
        per_model = f"{low}" if low == high else f"{low} to {high}"
        over = f"the training replicates ({per_model} per model) crossed with the {prompts}"
        if min(counts) <= 1:
            over += "; a model with one replicate resamples its prompts only"
    return f"{subject}: {ci * 100:g} % percentile bootstrap over {over}."


def caption_sentences(
    config: Mapping[str, Any], trained: Mapping[str, experiments.TrainedModel]
) -> dict[str, str]:
    """The sentences of the report's captions of the tables and plots, for the replicates of
    the models each shows (the base model has one): ``methods``, ``models`` (the base too) and
    ``sweeps`` as the tables write them; ``*_plot`` as the plots' notes do."""
    replicates = Counter(m.group for m in trained.values())
    methods = [replicates[m] for m in entries(config["methods"])]
    sweeps = experiments.sweep_points(config, trained).values()
    swept = [replicates[g] for s in sweeps for g in [*s["points"], *s["compare"]]] or [1]
    n_boot = config["evaluation"]["bootstrap"]["samples"]
    return {
        "methods": interval_sentence(methods, n_boot=n_boot),
        "models": interval_sentence([1, *methods], n_boot=n_boot),
        "sweeps": interval_sentence(swept, n_boot=n_boot),
        "methods_plot": interval_sentence(methods, "Error bars"),
        "models_plot": interval_sentence([1, *methods], "Error bars"),
        "sweeps_plot": interval_sentence(swept, "Bands"),
    }
