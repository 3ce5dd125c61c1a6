"""The degrader settings a DDSPO job reads: the LLM's keys for kind ``llm`` only."""

from __future__ import annotations

from dspo.data.degrader_config import LLM_KEYS, degrader_settings


def test_only_the_llm_degrader_reads_the_llm_keys() -> None:
    spec = {"kind": "drop_words", "min_fraction": 0.4, "max_fraction": 0.7}
    spec |= {key: f"{key} value" for key in LLM_KEYS}
    assert degrader_settings(spec) == {
        "kind": "drop_words",
        "min_fraction": 0.4,
        "max_fraction": 0.7,
    }
    assert degrader_settings({**spec, "kind": "llm"}) == {**spec, "kind": "llm"}
