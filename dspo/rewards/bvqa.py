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
p(yes)``: :class:`BlipYes` (transformers' ``BlipForQuestionAnswering`` from a hub id or a
folder, ``Salesforce/blip-vqa-base`` by default) or the toy world's oracle
(:class:`dspo.toy.oracle.ToyPresence`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.checks import check_batch, check_keys
from dspo.rewards.common import spec_dtype
from dspo.rewards.hub_defaults import BVQA_MODEL
from dspo.rewards.transforms import to_rgb

# The benchmark's --np_num default: phrases past the eighth are not asked about.
MAX_PHRASES = 8
# BLIP's question tokenisation (models/blip_vqa.py): truncated to 35 tokens.
QUESTION_TOKENS = 35

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


class BlipYes:
    """p(yes) / (p(yes) + p(no)) of a transformers BLIP VQA model, read as T2I-CompBench does.

    The question's first token is BLIP's ``[ENC]`` where the tokenizer knows it (the original
    BLIP code sets it; transformers' processor leaves ``[CLS]``); the decoder starts from
    the model's ``bos_token_id`` (``[DEC]``) and the first output token is read.
    """

    def __init__(self, model: str, dtype: torch.dtype, device: str) -> None:
        from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessorPil

        self.device = device
        self.image_processor = BlipImageProcessorPil.from_pretrained(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        loaded, info = BlipForQuestionAnswering.from_pretrained(
            model, dtype=dtype, output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if k.endswith("_keys") and v}
        if problems:
            raise ValueError(f"BLIP VQA model {model}: weights do not match: {problems}")
        self.model = loaded.to(device).eval()
        vocab = self.tokenizer.get_vocab()
        missing = [w for w in ("yes", "no") if w not in vocab]
        if missing:
            raise ValueError(f"BLIP VQA model {model}: its tokenizer has no token {missing}")
        self.yes, self.no = vocab["yes"], vocab["no"]
        self.enc = vocab.get("[ENC]")
        self.bos = self.model.config.text_config.bos_token_id

    @torch.no_grad()
    def __call__(
        self, images: Sequence[Image.Image], which: np.ndarray, phrases: Sequence[str]
    ) -> np.ndarray:
        rgb = [to_rgb(image) for image in images]
        pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        vision = self.model.vision_model(
            pixel_values=pixels.to(self.device, self.model.dtype)
        ).last_hidden_state
        tokens = self.tokenizer(
            [question(p) for p in phrases], truncation=True, max_length=QUESTION_TOKENS
        )["input_ids"]
        # Questions of one length go together: no padding, whose masks transformers 5's BLIP
        # decoder does not apply to its cross-attention (the original masks them).
        yes = np.empty(len(phrases))
        lengths = np.array([len(ids) for ids in tokens])
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            ids = torch.tensor([tokens[i] for i in rows], device=self.device)
            yes[rows] = self._yes(ids, vision[torch.as_tensor(which[rows], device=self.device)])
        return yes

    def _yes(self, ids: torch.Tensor, vision: torch.Tensor) -> np.ndarray:
        """p(yes) / (p(yes) + p(no)) for unpadded questions ``ids`` about images ``vision``."""
        if self.enc is not None:
            ids[:, 0] = self.enc
        seen = torch.ones(vision.shape[:-1], dtype=torch.long, device=self.device)
        states = self.model.text_encoder(
            input_ids=ids, encoder_hidden_states=vision, encoder_attention_mask=seen
        )[0]
        start = torch.full((len(ids), 1), self.bos, dtype=torch.long, device=self.device)
        logits = self.model.text_decoder(input_ids=start, encoder_hidden_states=states).logits
        probs = torch.softmax(logits[:, 0, :].float(), dim=-1)
        yes, no = probs[:, self.yes], probs[:, self.no]
        return (yes / (yes + no)).cpu().numpy().astype(np.float64)


class BVQA:
    """B-VQA under any answerer: the reward kinds ``bvqa`` (:func:`blip_bvqa`) and
    ``toy_bvqa`` (the toy oracle)."""

    def __init__(self, answer: Answerer, version: str) -> None:
        self.answer = answer
        self.version = version

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return product_scores(images, prompts, self.answer)


def blip_bvqa(spec: Mapping[str, Any], device: str = "cpu") -> BVQA:
    """B-VQA through a BLIP VQA model; config key `model`: a hub id or a local folder holding
    the model, its tokenizer and image processor (``BVQA_MODEL`` when unset)."""
    check_keys(spec, {"model"})
    model = spec.get("model", BVQA_MODEL)
    return BVQA(BlipYes(model, spec_dtype(spec), device), f"bvqa {model} rule phrases")
