"""The LLM degrader's model: loading from a folder in the hub layout, chat template, batched
seeded decoding (tests/data/llm_standin.py: a tiny random Llama, so the text is garbage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspo.data.llm_degrader import Decoding, generate, load_llm, request_text, stop_ids
from tests.data.llm_standin import EOT, write_tiny_llama

PROMPTS = [
    "a red cube",
    "a photo of two cats sleeping under a green tree, golden hour",
    "x",
    "a red cube on a blue sphere in a bright studio",
]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama")


def test_the_request_is_a_user_turn_of_the_chat_template(tiny_llm: Path) -> None:
    _, tokenizer = load_llm(str(tiny_llm))
    text = request_text(tokenizer, "Degrade: {prompt}. One line.", "a red cube")
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Degrade: a red cube. One line.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tokenizer.padding_side == "left"


def test_without_a_chat_template_the_instruction_is_plain_text(tmp_path: Path) -> None:
    model, tokenizer = load_llm(str(write_tiny_llama(tmp_path / "plain", chat=False)))
    assert request_text(tokenizer, "Degrade: {prompt}", "a red cube") == "Degrade: a red cube"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|end_of_text|>"
    answers = generate(model, tokenizer, ["Degrade: a", "b"], [1, 2], 0, Decoding(4))
    assert len(answers) == 2


def test_llama3_ends_its_turn_at_eot(tiny_llm: Path) -> None:
    model, tokenizer = load_llm(str(tiny_llm))
    assert tokenizer.convert_tokens_to_ids(EOT) in stop_ids(model, tokenizer)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_batch_answers_as_each_prompt_alone(tiny_llm: Path, temperature: float) -> None:
    """Left padding and per-row generators: a prompt's answer does not depend on its batch."""
    model, tokenizer = load_llm(str(tiny_llm))
    texts = [request_text(tokenizer, "Degrade: {prompt}", p) for p in PROMPTS]
    keys = [11, 12, 13, 14]
    decoding = Decoding(max_new_tokens=10, temperature=temperature)
    batched = generate(model, tokenizer, texts, keys, 0, decoding)
    alone = [
        generate(model, tokenizer, [t], [k], 0, decoding)[0]
        for t, k in zip(texts, keys, strict=True)
    ]
    assert batched == alone
    assert len(set(batched)) > 1  # the prompts reach the model
    reordered = generate(model, tokenizer, texts[::-1], keys[::-1], 0, decoding)
    assert reordered == batched[::-1]


def test_sampling_follows_the_seed_and_greedy_ignores_it(tiny_llm: Path) -> None:
    model, tokenizer = load_llm(str(tiny_llm))
    texts = [request_text(tokenizer, "Degrade: {prompt}", p) for p in PROMPTS]
    sampled = Decoding(max_new_tokens=10, temperature=1.0)
    runs = [generate(model, tokenizer, texts, [1, 2, 3, 4], s, sampled) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    greedy = Decoding(max_new_tokens=10)
    assert generate(model, tokenizer, texts, [1, 2, 3, 4], 0, greedy) == generate(
        model, tokenizer, texts, [5, 6, 7, 8], 9, greedy
    )
