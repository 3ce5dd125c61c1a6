"""B-VQA's answerer on a BLIP VQA model: transformers' ``BlipForQuestionAnswering``, read as
T2I-CompBench reads it (the scoring itself is `dspo.rewards.bvqa`'s); the reward kind ``bvqa``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.bvqa import BVQA, question
from dspo.rewards.checks import check_keys
from dspo.rewards.common import spec_dtype
from dspo.rewards.hub_defaults import BVQA_MODEL
from dspo.rewards.transforms import to_rgb

# BLIP's question tokenisation (models/blip_vqa.py): truncated to 35 tokens.
QUESTION_TOKENS = 35


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


def blip_bvqa(spec: Mapping[str, Any], device: str = "cpu") -> BVQA:
    """B-VQA through a BLIP VQA model; config key `model`: a hub id or a local folder holding
    the model, its tokenizer and image processor (``BVQA_MODEL`` when unset)."""
    check_keys(spec, {"model"})
    model = spec.get("model", BVQA_MODEL)
    return BVQA(BlipYes(model, spec_dtype(spec), device), f"bvqa {model} rule phrases")
