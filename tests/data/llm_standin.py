"""A tiny random-initialised Llama chat model saved in the hub's layout, for the degrader tests.

The folder holds what ``save_pretrained`` writes for meta-llama/Meta-Llama-3-8B-Instruct:
``config.json``, ``generation_config.json`` and ``model.safetensors`` of a
``LlamaForCausalLM``, and ``tokenizer.json`` + ``tokenizer_config.json`` of a fast byte-level
BPE tokenizer with Llama 3's special tokens and a chat template of Llama 3's form
(``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``). Its answers are
random tokens: tests check the mechanics, not the text.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
EOT = "<|eot_id|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS = [
    "a red cube on a blue sphere in a bright studio",
    "rewrite this image description so that it loses detail",
    "a photo of two cats sleeping under a green tree, golden hour, highly detailed",
    "reply with the rewritten description only, on one line",
]


def write_tokenizer(out: Path, *, chat: bool = True) -> None:
    """A byte-level BPE tokenizer (about 300 tokens) folder, trained offline on ``CORPUS``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[*SPECIALS, EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIALS[0],
        eos_token=EOT if chat else SPECIALS[1],
        chat_template=CHAT_TEMPLATE if chat else None,
    )
    tokenizer.save_pretrained(out)


def write_tiny_llama(out: Path, *, chat: bool = True, seed: int = 0) -> Path:
    """A random ``LlamaForCausalLM`` of two small layers and its tokenizer, in ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    write_tokenizer(out, chat=chat)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.5,  # large weights: answers that differ from prompt to prompt
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
