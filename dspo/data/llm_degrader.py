"""An instruction-tuned causal LM that rewrites prompts: loading and batched, seeded decoding.

The model and its tokenizer load through ``AutoModelForCausalLM`` and ``AutoTokenizer`` from a
hub id (read offline from the local hub cache that ``dspo fetch`` fills) or a local folder.
Each request is the instruction with the prompt filled in, wrapped in the tokenizer's chat
template as one user turn when the tokenizer has a template, and given as plain text
otherwise.

Decoding is batched with left padding (explicit position ids, so a padded row sees the same
positions as alone) and runs its own loop so that every row draws from its own generator:
with ``temperature > 0`` row i samples with ``seeded_generator(seed, keys[i])``, so its text
depends on its key, never on the other rows of its batch. ``temperature == 0`` is greedy
decoding: deterministic, and the seed is unused. Decoding stops at the model's end-of-turn or
end-of-text tokens, or after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dspo.core.dtypes import resolve_dtype
from dspo.core.seeding import seeded_generator

PROMPT_FIELD = "{prompt}"


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen: greedy at ``temperature == 0``; otherwise sampled from the
    ``top_k`` most likely tokens (0: all) at that temperature."""

    max_new_tokens: int = 77
    temperature: float = 0.0
    top_k: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Decoding:
        return cls(
            int(spec.get("max_new_tokens", cls.max_new_tokens)),
            float(spec.get("temperature", cls.temperature)),
            int(spec.get("top_k", cls.top_k)),
        )


def load_llm(source: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """The causal LM and its tokenizer (left padding; end of text as padding when it has no
    padding token) from a hub id or a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype))
    return model.to(device).eval(), tokenizer


def request_text(tokenizer: Any, instruction: str, prompt: str) -> str:
    """The text the model reads: ``instruction`` with ``{prompt}`` replaced, as one user turn
    of the chat template (ready for the assistant's answer) when the tokenizer has one."""
    content = instruction.replace(PROMPT_FIELD, prompt)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return content


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end an answer: the tokenizer's and the generation config's end of
    text (Llama 3 instruct ends its turns with ``<|eot_id|>``, listed in the latter)."""
    found = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found |= set(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in found if i is not None}


def _next_tokens(
    logits: torch.Tensor, generators: Sequence[torch.Generator], decoding: Decoding
) -> torch.Tensor:
    """Each row's next token: the argmax (greedy) or a draw from the row's own generator."""
    if decoding.temperature == 0:
        return logits.argmax(-1)
    scaled = logits.float().cpu() / decoding.temperature
    if decoding.top_k:
        floor = scaled.topk(min(decoding.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < floor, float("-inf"))
    probs = scaled.softmax(-1)
    drawn = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(drawn).to(logits.device)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    keys: Sequence[int],
    seed: int,
    decoding: Decoding,
) -> list[str]:
    """The model's answer to each of ``texts`` (special tokens dropped, whitespace stripped),
    row i sampling with the generator of ``(seed, keys[i])``."""
    device = next(model.parameters()).device
    templated = bool(getattr(tokenizer, "chat_template", None))
    batch = tokenizer(
        list(texts), return_tensors="pt", padding=True, add_special_tokens=not templated
    )
    mask = batch["attention_mask"].to(device)
    step = batch["input_ids"].to(device)
    generators = [seeded_generator(seed, key) for key in keys]
    stops = torch.tensor(sorted(stop_ids(model, tokenizer)), device=device)
    done = torch.zeros(len(texts), dtype=torch.bool, device=device)
    answers: list[list[int]] = [[] for _ in texts]
    past = None
    for _ in range(decoding.max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1] :]
        out = model(
            input_ids=step,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        chosen = _next_tokens(out.logits[:, -1], generators, decoding)
        done |= torch.isin(chosen, stops)
        for i in (~done).nonzero().flatten().tolist():
            answers[i].append(int(chosen[i]))
        if bool(done.all()):
            break
        step = chosen[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
