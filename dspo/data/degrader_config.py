"""The settings of DDSPO's prompt degrader (``ddspo.degrader``), read at plan time.

Kind ``drop_words`` is the built-in degrader (:mod:`dspo.data.ddspo`); kind ``llm`` is an
instruction-tuned LLM (:mod:`dspo.data.llm_degrader`, run by :mod:`dspo.data.degraded_prompts`)
and alone reads the keys :data:`LLM_KEYS`. This module imports nothing heavy, so the workflow
reads it while it builds its DAG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The keys of ``ddspo.degrader`` that only kind ``llm`` reads.
LLM_KEYS = (
    "model",
    "instructions",
    "aesthetic_share",
    "batch_size",
    "max_new_tokens",
    "temperature",
    "top_k",
    "dtype",
    "fallback",
)


def degrader_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``ddspo.degrader`` that its kind reads: the LLM's keys only for kind
    ``llm``, so that the LLM's defaults leave the other degraders' jobs (and their reruns)
    alone."""
    return {k: v for k, v in spec.items() if spec["kind"] == "llm" or k not in LLM_KEYS}
