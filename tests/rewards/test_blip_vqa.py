"""B-VQA through a random-initialised BLIP VQA model in the hub layout.

The model folder is what ``Salesforce/blip-vqa-base`` holds (``BlipForQuestionAnswering``
weights and config, a BERT tokenizer with BLIP's added ``[DEC]`` and ``[ENC]`` tokens, the
``BlipImageProcessor`` config), saved with ``save_pretrained`` at a tiny size, and loaded by
the same code as the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessorPil,
)

from dspo.rewards import load_reward
from dspo.rewards.bvqa import noun_phrases

WORDS = ["a", "red", "blue", "green", "car", "bench", "cat", "mat", "the", "sun", "yes", "no"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blip")
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(SPECIAL + WORDS)})
    # BLIP's init_tokenizer: bos_token [DEC], one additional special token [ENC].
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(path)
    vocab = len(tokenizer)
    config = BlipConfig(
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
        },
        text_config={
            "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "encoder_hidden_size": 32,
            "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"), "pad_token_id": 0,
            "sep_token_id": tokenizer.sep_token_id, "max_position_embeddings": 64,
        },
    )  # fmt: skip
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(path)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, 40, 3), dtype=np.uint8)) for h in (40, 24)]


def test_blip_bvqa_reads_the_first_answer_token_of_the_hub_model(blip_dir: Path) -> None:
    reward = load_reward({"kind": "bvqa", "model": str(blip_dir)})
    images, prompts = _images(), ["a red car and a blue bench", "the cat"]
    scores = reward.score(images, prompts)
    assert str(blip_dir) in reward.version

    # The same numbers from transformers' own generate(): BLIP's question with [ENC] first,
    # one decoding step from [DEC], the first token's logits -> p(yes) / (p(yes) + p(no)).
    model = BlipForQuestionAnswering.from_pretrained(blip_dir).eval()
    tokenizer = BertTokenizer.from_pretrained(blip_dir)
    processor = BlipImageProcessorPil.from_pretrained(blip_dir)
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    expected = []
    for image, prompt in zip(images, prompts, strict=True):
        product = 1.0
        for phrase in noun_phrases(prompt):
            ids = tokenizer(f"{phrase}?".lower(), return_tensors="pt")["input_ids"]
            ids[:, 0] = tokenizer.convert_tokens_to_ids("[ENC]")
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            out = model.generate(
                input_ids=ids, pixel_values=pixels, max_new_tokens=1,
                output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
            p = torch.softmax(out.logits[0][0].float(), dim=-1)
            product *= float(p[yes] / (p[yes] + p[no]))
        expected.append(product)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert len(set(np.round(scores, 6))) == 2 and all(0 < s < 1 for s in scores)
    # Batched with other images, each score stays the same.
    again = reward.score(images[::-1] + images, prompts[::-1] + prompts)
    np.testing.assert_allclose(again, [*scores[::-1], *scores], rtol=1e-5)


def test_blip_folder_with_a_missing_weight_is_an_error(blip_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for file in blip_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in weights if "text_encoder" in k and "query.weight" in k)
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="weights do not match"):
        load_reward({"kind": "bvqa", "model": str(tmp_path)})


def test_bvqa_rejects_keys_it_does_not_read() -> None:
    with pytest.raises(ValueError, match="does not take"):
        load_reward({"kind": "bvqa", "model": "x/y", "checkpoint": "z.pt"})
