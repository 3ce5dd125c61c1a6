"""B-VQA: T2I-CompBench's attribute-binding score, a product of "yes" probabilities.

T2I-CompBench (``BLIPvqa_eval/BLIP_vqa.py``) scores an image against its prompt so:

1. the prompt is split into noun phrases (spaCy ``en_core_web_sm`` noun chunks), at most 8;
2. for each phrase a BLIP VQA model is asked the question ``"<phrase>?"``, after BLIP's
   question cleaning (lower case; ``.!"()*#:;~`` removed);
3. the answer is read from the decoder's first token after ``[DEC]``: a softmax over the
   vocabulary, then ``p(yes) / (p(yes) + p(no))``;
4. the image's score is the product over its phrases (1 for a prompt with none).

:func:`noun_phrases` replaces step 1 by a rule (spaCy's English model is not a package on
PyPI): the prompt is cut at commas, at "and"/"or" and at the common prepositions. On the
benchmark's "a X and a Y" prompts both give the same phrases; docs/rewards.md lists where they
differ. Steps 2 to 4 are the benchmark's, through any answerer ``(images, which, phrases) ->
p(yes)``: :class:`dspo.rewards.blip_vqa.BlipYes` (transformers' ``BlipForQuestionAnswering``
from a hub id or a folder, ``Salesforce/blip-vqa-base`` by default) or the toy world's oracle
(:class:`dspo.toy.oracle.ToyPresence`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from dspo.rewards.checks import check_batch

# The benchmark's --np_num default: phrases past the eighth are not asked about.
MAX_PHRASES = 8

# Where the rule cuts a prompt: punctuation, conjunctions and prepositions (whole words).
_CUT_WORDS = (
    "and", "or", "with", "without", "on", "in", "inside", "of", "at", "by", "near", "beside",
    "behind", "under", "below", "above", "over", "into", "onto", "from", "against", "between",
    "among", "next to", "on top of", "in front of", "toward", "towards", "across", "around",
)  # fmt: skip
_CUT = re.compile(
    r"[,;]|\b(?:" + "|".join(sorted(map(re.escape, _CUT_WORDS), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# BLIP's pre_question: these characters are deleted from the lower-cased question.
_QUESTION_DROPPED = re.compile(r'[.!"()*#:;~]')

# (images, which image each question is about, phrases) -> p(yes) per question.
Answerer = Callable[[Sequence[Image.Image], np.ndarray, Sequence[str]], np.ndarray]


def noun_phrases(prompt: str, limit: int = MAX_PHRASES) -> list[str]:
    """The prompt's noun phrases by the rule: the pieces between cuts, first `limit` kept.

    ``"a red car and a blue bench"`` gives ``["a red car", "a blue bench"]``; ``"a cat on a
    mat, in the sun"`` gives ``["a cat", "a mat", "the sun"]``.
    """
    pieces = (piece.strip(" .!?'\"") for piece in _CUT.split(prompt))
    return [piece for piece in pieces if re.search(r"\w", piece)][:limit]


def question(phrase: str) -> str:
    """The benchmark's question about a phrase: ``"<phrase>?"``, cleaned as BLIP cleans it."""
    return _QUESTION_DROPPED.sub("", f"{phrase}?".lower()).rstrip(" ")


def product_scores(
    images: Sequence[Image.Image], prompts: Sequence[str], answer: Answerer
) -> np.ndarray:
    """Each image's product of p(yes) over its prompt's phrases (1.0 where it has none)."""
    check_batch(images, prompts)
    phrases = [noun_phrases(p) for p in prompts]
    which = np.repeat(np.arange(len(prompts)), [len(p) for p in phrases])
    flat = [phrase for each in phrases for phrase in each]
    scores = np.ones(len(prompts))
    if flat:
        yes = np.asarray(answer(images, which, flat), dtype=np.float64)
        if yes.shape != (len(flat),):
            raise ValueError(f"the answerer gave {yes.shape} answers to {len(flat)} questions")
        np.multiply.at(scores, which, yes)
    return scores


class BVQA:
    """B-VQA under any answerer: the reward kinds ``bvqa``
    (:func:`dspo.rewards.blip_vqa.blip_bvqa`) and ``toy_bvqa`` (the toy oracle)."""

    def __init__(self, answer: Answerer, version: str) -> None:
        self.answer = answer
        self.version = version

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return product_scores(images, prompts, self.answer)
