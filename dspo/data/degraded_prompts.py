"""DDSPO's prompts degraded by an LLM: instructions, a resumable cache, checks and a fallback.

The DDSPO paper degrades each prompt with an instruction-tuned LLM (LLaMA3-8B), by two kinds
of instruction: a compositional degradation (objects, attributes, counts and relations lost
or confused) and an aesthetic one (style, lighting and quality lost). Each prompt gets one
kind, drawn with the generator of ``(seed, prompt key)`` with probability
``aesthetic_share`` for the aesthetic one; the templates are
``ddspo.degrader.instructions`` (``{prompt}`` marks where the prompt goes).

Every answer is cached before it is checked, in part files of the folder ``cache``: one JSON
line per prompt, ``{"key", "answer"}``, each file written whole (atomically) after its batch.
A key is the content of what made the answer: the model's content key
(:func:`dspo.core.content.content_key`), the filled-in instruction, the decoding settings and,
when sampling, the seed. A killed job loses at most the batch it was decoding; a rerun, or a
run with more prompts, decodes only the prompts without a cached answer. Changing the model,
an instruction or the decoding settings changes the keys, so nothing stale is reused; old
part files stay (they are never deleted) and are simply not matched.

An answer is accepted when it is one line, not empty and not the prompt again (compared after
:func:`normalised`); the others get the ``fallback`` rule: ``drop_words`` (the built-in
degrader on that prompt, seeded by its key) or ``error`` (stop, naming the prompts; the cache
keeps every answer). The report counts both, by reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dspo.core.content import combined_key, content_key
from dspo.core.files import write_bytes_atomic, write_json_atomic
from dspo.core.seeding import seeded_generator
from dspo.data.ddspo import ddspo_prompts, drop_words
from dspo.data.llm_degrader import Decoding, generate, load_llm, request_text

KINDS = ("compositional", "aesthetic")
FALLBACKS = ("drop_words", "error")
COLUMNS = ["prompt", "degraded", "instruction", "source"]


def prompt_key(prompt: str) -> int:
    """A stable integer for a prompt's text (the position part of its generators)."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:7], "big")


def instruction_kinds(prompts: Sequence[str], seed: int, aesthetic_share: float) -> list[str]:
    """Each prompt's kind of degradation, drawn from its own generator: no prompt's kind
    depends on which other prompts are drawn."""
    draws = [
        float(torch.rand(1, generator=seeded_generator(seed, prompt_key(p), 1))) for p in prompts
    ]
    return [KINDS[1] if d < aesthetic_share else KINDS[0] for d in draws]


def normalised(text: str) -> str:
    """Lower-case words only: what must differ between a prompt and its degraded copy."""
    return " ".join(re.findall(r"\w+", text.lower()))


def check_answer(prompt: str, answer: str) -> str | None:
    """Why ``answer`` is no degraded copy of ``prompt`` (``empty``, ``lines``, ``unchanged``),
    or None when it is one."""
    if not answer.strip():
        return "empty"
    if re.search(r"[\r\n]", answer.strip()):
        return "lines"
    if normalised(answer) == normalised(prompt):
        return "unchanged"
    return None


def read_cache(folder: Path) -> dict[str, str]:
    """Every cached answer in ``folder``'s part files, by key."""
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            found[record["key"]] = record["answer"]
    return found


def write_cache_part(folder: Path, answers: Mapping[str, str]) -> Path:
    """One part file of ``answers`` (key: answer), written whole; named by its keys."""
    lines = [json.dumps({"key": k, "answer": a}) for k, a in answers.items()]
    name = hashlib.sha256("\n".join(sorted(answers)).encode()).hexdigest()[:16]
    path = folder / f"part-{name}.jsonl"
    write_bytes_atomic(("\n".join(lines) + "\n").encode(), path)
    return path


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _fallback(prompt: str, spec: Mapping[str, Any], seed: int) -> str:
    rng = np.random.default_rng([seed, prompt_key(prompt)])
    return drop_words([prompt], rng, spec["min_fraction"], spec["max_fraction"])[0]


def _checked(
    prompts: Sequence[str], answers: Sequence[str], spec: Mapping[str, Any], seed: int
) -> tuple[list[str], list[str], dict[str, int]]:
    """The degraded prompts, where each came from (``llm`` or the fallback), and the
    rejected answers' counts by reason; raises under ``fallback: error``."""
    degraded, sources, reasons, failed = [], [], {}, []
    for prompt, answer in zip(prompts, answers, strict=True):
        reason = check_answer(prompt, answer)
        if reason is None:
            degraded.append(answer.strip())
            sources.append("llm")
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        failed.append(f"{prompt!r} ({reason})")
        if spec["fallback"] == "drop_words":
            degraded.append(_fallback(prompt, spec, seed))
            sources.append("drop_words")
    if failed and spec["fallback"] == "error":
        raise ValueError(
            f"the LLM degrader gave no usable answer for {len(failed)} of {len(prompts)} "
            f"prompts (ddspo.degrader.fallback is error), e.g. {'; '.join(failed[:5])}; "
            "their answers are cached: set fallback to drop_words or change the instructions"
        )
    return degraded, sources, reasons


def llm_degrade(
    prompts: Sequence[str],
    spec: Mapping[str, Any],
    seed: int,
    cache: Path,
    *,
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Degrade ``prompts`` with the LLM of ``spec`` (``ddspo.degrader``), answers cached in
    the folder ``cache``: the table (``prompt``, ``degraded``, ``instruction``, ``source``) in
    the prompts' order, and the report."""
    if spec["fallback"] not in FALLBACKS:
        raise ValueError(f"ddspo.degrader.fallback {spec['fallback']!r} is not one of {FALLBACKS}")
    decoding = Decoding.from_spec(spec)
    kinds = instruction_kinds(prompts, seed, float(spec["aesthetic_share"]))
    model_key = content_key(spec["model"])
    settings = {"decoding": vars(decoding), "dtype": spec["dtype"]}
    if decoding.temperature > 0:
        settings["seed"] = seed
    keys = [
        combined_key(
            model=model_key,
            instruction=spec["instructions"][kind].replace("{prompt}", prompt),
            settings=settings,
        )
        for prompt, kind in zip(prompts, kinds, strict=True)
    ]
    cache.mkdir(parents=True, exist_ok=True)
    cached = read_cache(cache)
    todo = [i for i, key in enumerate(keys) if key not in cached]
    if todo:
        model, tokenizer = load_llm(spec["model"], spec["dtype"], device)
        for rows in tqdm(list(_chunks(todo, int(spec["batch_size"]))), desc="degrade prompts"):
            texts = [
                request_text(tokenizer, spec["instructions"][kinds[i]], prompts[i]) for i in rows
            ]
            found = generate(
                model, tokenizer, texts, [prompt_key(prompts[i]) for i in rows], seed, decoding
            )
            answers = dict(zip([keys[i] for i in rows], found, strict=True))
            write_cache_part(cache, answers)
            cached |= answers
    degraded, sources, reasons = _checked(prompts, [cached[k] for k in keys], spec, seed)
    table = pd.DataFrame(
        {"prompt": list(prompts), "degraded": degraded, "instruction": kinds, "source": sources}
    )
    report = {
        "prompts": len(prompts),
        "decoded": len(todo),
        "cached": len(prompts) - len(todo),
        "accepted": sources.count("llm"),
        "fallback": {"rule": spec["fallback"], "used": len(prompts) - sources.count("llm")},
        "rejected": reasons,
        "instructions": {kind: kinds.count(kind) for kind in KINDS},
        "model": spec["model"],
        "model_key": model_key,
        "examples": table.head(3).to_dict("records"),
    }
    return table, report


def degrade_with_llm(
    captions: Sequence[str],
    cfg: Mapping[str, Any],
    *,
    cache: Path,
    out: Path,
    report: Path,
    device: str = "cpu",
) -> dict[str, Any]:
    """Degrade the prompts DDSPO draws from ``captions`` (``cfg``: the ``ddspo`` settings)
    into the parquet table ``out`` and its report ``report``; the report's counts."""
    table, counts = llm_degrade(
        ddspo_prompts(captions, cfg), cfg["degrader"], cfg["seed"], cache, device=device
    )
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(out)
    write_json_atomic(counts, report)
    return {k: counts[k] for k in ("prompts", "decoded", "cached", "accepted", "fallback")}


def read_degraded(path: Path) -> dict[str, str]:
    """The degraded copy of each prompt in a table of :func:`degrade_with_llm`."""
    table = pd.read_parquet(path, columns=["prompt", "degraded"])
    return dict(zip(table["prompt"], table["degraded"], strict=True))
