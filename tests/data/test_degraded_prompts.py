"""DDSPO's LLM-degraded prompts: the instruction kinds, the resumable cache, the checks and
the fallback, and the table and report of the workflow step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import yaml

import dspo.data.degraded_prompts as degraded_prompts
from dspo.data.degraded_prompts import (
    check_answer,
    degrade_with_llm,
    instruction_kinds,
    llm_degrade,
    read_cache,
    read_degraded,
)
from tests.data.llm_standin import write_tiny_llama
from tests.workflow_run import REPO

PROMPTS = [
    f"a {c} cube on a {s} table in a bright studio"
    for c, s in [
        ("red", "wooden"),
        ("blue", "glass"),
        ("green", "stone"),
        ("pink", "metal"),
        ("black", "marble"),
    ]
]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama")


def spec_of(model: Path, **changes: Any) -> dict[str, Any]:
    spec = {
        "kind": "llm",
        "model": str(model),
        "instructions": {
            "compositional": "Confuse the objects of: {prompt}",
            "aesthetic": "Make it dull: {prompt}",
        },
        "aesthetic_share": 0.5,
        "batch_size": 2,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_k": 0,
        "dtype": "float32",
        "fallback": "drop_words",
        "min_fraction": 0.4,
        "max_fraction": 0.7,
    }
    return spec | changes


class Counting:
    """Wraps :func:`generate`: records the prompts it decodes; fails after ``fail_after``."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_after = fail_after

    def __call__(self, model: Any, tokenizer: Any, texts: Sequence[str], *rest: Any) -> list[str]:
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(len(texts))
        return REAL_GENERATE(model, tokenizer, texts, *rest)


REAL_GENERATE = degraded_prompts.generate


def test_each_prompt_gets_one_kind_whatever_the_others() -> None:
    many = [f"prompt number {i}" for i in range(400)]
    kinds = instruction_kinds(many, 0, 0.5)
    assert 150 < kinds.count("aesthetic") < 250 and set(kinds) == {"aesthetic", "compositional"}
    assert instruction_kinds(many[::-1][:50], 0, 0.5) == kinds[::-1][:50]
    assert set(instruction_kinds(many, 0, 0.0)) == {"compositional"}
    assert set(instruction_kinds(many, 0, 1.0)) == {"aesthetic"}


def test_a_killed_run_resumes_without_redoing_finished_prompts(
    tiny_llm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(tiny_llm)
    whole, _ = llm_degrade(PROMPTS, spec, 0, tmp_path / "one-go")

    killed = Counting(fail_after=2)
    monkeypatch.setattr(degraded_prompts, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        llm_degrade(PROMPTS, spec, 0, tmp_path / "cache")
    assert killed.calls == [2, 2] and len(read_cache(tmp_path / "cache")) == 4
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 2

    resumed = Counting()
    monkeypatch.setattr(degraded_prompts, "generate", resumed)
    table, report = llm_degrade(PROMPTS, spec, 0, tmp_path / "cache")
    assert resumed.calls == [1]  # only the prompt the kill left
    assert report["decoded"] == 1 and report["cached"] == 4
    pd.testing.assert_frame_equal(table, whole)  # batches of 2 then 1: the same answers


def test_the_cache_key_changes_with_the_instruction(
    tiny_llm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(tiny_llm)
    table, _ = llm_degrade(PROMPTS, spec, 0, tmp_path)
    aesthetic = int((table["instruction"] == "aesthetic").sum())
    assert 0 < aesthetic < len(PROMPTS)
    changed = spec | {"instructions": spec["instructions"] | {"aesthetic": "Ugly: {prompt}"}}
    counting = Counting()
    monkeypatch.setattr(degraded_prompts, "generate", counting)
    _, report = llm_degrade(PROMPTS, changed, 0, tmp_path)
    assert sum(counting.calls) == report["decoded"] == aesthetic
    _, report = llm_degrade(PROMPTS, spec_of(tiny_llm, max_new_tokens=9), 0, tmp_path)
    assert report["decoded"] == len(PROMPTS)  # decoding settings are part of the key too


def test_answers_are_checked() -> None:
    prompt = "A red cube, on a table."
    assert check_answer(prompt, "  ") == "empty"
    assert check_answer(prompt, "a cube\nSure! Here it is") == "lines"
    assert check_answer(prompt, "a red cube on a TABLE") == "unchanged"
    assert check_answer(prompt, "a cube on a table\n") is None


def _answering(answers: list[str]):  # noqa: ANN202
    def fake(model: Any, tokenizer: Any, texts: Sequence[str], *rest: Any) -> list[str]:
        return [answers.pop(0) for _ in texts]

    return fake


def test_bad_answers_fall_back_to_dropping_words_and_are_counted(
    tiny_llm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = ["", "one\ntwo", PROMPTS[2].upper() + "!", "a cube in a studio", " a table "]
    monkeypatch.setattr(degraded_prompts, "generate", _answering(answers))
    spec = spec_of(tiny_llm)
    table, report = llm_degrade(PROMPTS, spec, 0, tmp_path)
    assert table["source"].tolist() == ["drop_words"] * 3 + ["llm"] * 2
    assert table["degraded"].tolist()[3:] == ["a cube in a studio", "a table"]
    for prompt, bad in zip(PROMPTS[:3], table["degraded"][:3], strict=True):
        assert set(bad.split()) < set(prompt.split())
    assert report["accepted"] == 2 and report["fallback"] == {"rule": "drop_words", "used": 3}
    assert report["rejected"] == {"empty": 1, "lines": 1, "unchanged": 1}
    again, _ = llm_degrade(PROMPTS, spec, 0, tmp_path)  # cached, and the fallback is seeded
    pd.testing.assert_frame_equal(again, table)

    with pytest.raises(ValueError, match=r"no usable answer for 3 of 5 prompts.*\(empty\)"):
        llm_degrade(PROMPTS, spec | {"fallback": "error"}, 0, tmp_path)
    assert len(read_cache(tmp_path)) == 5  # the answers are kept for the next try


def test_the_step_writes_the_table_and_its_report(tiny_llm: Path, tmp_path: Path) -> None:
    captions = PROMPTS * 2  # the pair table repeats captions; DDSPO draws distinct ones
    cfg = {"prompts": 4, "seed": 3, "degrader": spec_of(tiny_llm)}
    out, report = tmp_path / "degraded.parquet", tmp_path / "degraded.json"
    counts = degrade_with_llm(captions, cfg, cache=tmp_path / "c", out=out, report=report)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["prompt", "degraded", "instruction", "source"]
    assert len(table) == 4 and table["prompt"].is_unique and set(table["prompt"]) <= set(PROMPTS)
    written = json.loads(report.read_text())
    assert written["prompts"] == counts["prompts"] == 4 and written["model"] == str(tiny_llm)
    assert written["accepted"] + written["fallback"]["used"] == 4
    assert read_degraded(out) == dict(zip(table["prompt"], table["degraded"], strict=True))
    assert all(table["degraded"].str.strip() != "") and "\n" not in "".join(table["degraded"])


def test_the_default_instructions_are_valid_and_each_must_place_the_prompt() -> None:
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    node = schema["properties"]["ddspo"]["properties"]["degrader"]
    degrader = yaml.safe_load((REPO / "config/config.yaml").read_text())["ddspo"]["degrader"]
    jsonschema.validate(degrader | {"kind": "llm"}, node)
    assert all("{prompt}" in text for text in degrader["instructions"].values())
    no_prompt = degrader["instructions"] | {"aesthetic": "Make it dull."}
    with pytest.raises(jsonschema.ValidationError, match="prompt"):
        jsonschema.validate(degrader | {"instructions": no_prompt}, node)
