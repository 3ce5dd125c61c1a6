"""Tokenizer folders with the real vocabulary sizes, built offline from synthetic merges.

CLIP's BPE (SD1.5, SDXL, the ViT-H-14 and ViT-L/14 reward models) has 49,408 entries: the 256
byte symbols, the same with the end-of-word mark, 48,894 merges and two special tokens, in
that order. BERT's uncased WordPiece vocabulary (ImageReward's tokenizer) has 30,522. The
real files cannot be downloaded here; these have the same classes, sizes, special-token ids
and save format, with merges made from the stand-in prompts' words first (so those are one
token each) and then systematic letter sequences until the size is reached.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BERT_VOCAB_SIZE = 30522
END = "</w>"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE uses, in CLIP's order.

    Printable Latin-1 bytes stand for themselves; the others map to code points from 256 up.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    symbols = [chr(b) for b in kept]
    extra = 0
    for b in range(256):
        if b not in kept:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _letter_sequences() -> Iterator[str]:
    """a, b, ..., z, aa, ab, ..., zz, aaa, ...: every lower-case sequence by length."""
    level = list(string.ascii_lowercase)
    while True:
        yield from level
        level = [p + c for p in level for c in string.ascii_lowercase]


def clip_merges(words: Iterable[str], n_merges: int) -> list[tuple[str, str]]:
    """``n_merges`` BPE merges, each producing a new token: ``words`` first, then letters."""
    known = set(byte_symbols()) | {s + END for s in byte_symbols()}
    merges: list[tuple[str, str]] = []

    def add(left: str, right: str) -> bool:
        if left + right in known:
            return False
        known.add(left + right)
        merges.append((left, right))
        return len(merges) == n_merges

    for word in sorted({w.lower() for w in words if w.isascii() and w.isalpha()}):
        pieces = [*word[:-1], word[-1] + END]
        while len(pieces) > 1:
            if pieces[0] + pieces[1] not in known and add(pieces[0], pieces[1]):
                return merges
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    # Only prefixes that are tokens already can be merged further.
    for prefix in _letter_sequences():
        if prefix not in known:
            continue
        for c in string.ascii_lowercase:
            for right in (c, c + END):
                if add(prefix, right):
                    return merges
    raise AssertionError("unreachable: letter sequences never run out")


def clip_tokenizer(words: Iterable[str], max_length: int = CLIP_MAX_LENGTH) -> object:
    """A ``CLIPTokenizer`` of CLIP's 49,408 entries (ids 49406/49407: start/end of text)."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    n_merges = CLIP_VOCAB_SIZE - 2 * len(symbols) - 2
    merges = clip_merges(words, n_merges)
    vocab = [*symbols, *(s + END for s in symbols), *(a + b for a, b in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        model_max_length=max_length,
    )
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise AssertionError(f"built {len(tokenizer)} CLIP tokens, not {CLIP_VOCAB_SIZE}")
    return tokenizer


def bert_vocab(words: Iterable[str]) -> list[str]:
    """BERT uncased's 30,522 entries: [PAD], [unused*], [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103, more [unused*] to 998, then characters, words and word pieces."""
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]
    chars = [c for c in string.printable[:94] if not c.isupper()]
    vocab += chars + [f"##{c}" for c in chars if c.isalnum()]
    seen = set(vocab)
    for word in sorted({w.lower() for w in words if w.isascii() and w.isalpha()}):
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    for sequence in _letter_sequences():
        for token in (sequence, f"##{sequence}"):
            if len(vocab) == BERT_VOCAB_SIZE:
                return vocab
            if token not in seen:
                seen.add(token)
                vocab.append(token)
    raise AssertionError("unreachable")


def write_bert_tokenizer(out: Path, words: Iterable[str]) -> None:
    """A ``bert-base-uncased``-style tokenizer folder (vocab.txt and its config)."""
    from transformers import BertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(bert_vocab(words)) + "\n")
    BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=512).save_pretrained(out)


def write_clip_tokenizer(out: Path, words: Iterable[str], *, with_json: bool = False) -> None:
    """A CLIP tokenizer folder as the hub repos hold it: ``vocab.json`` and ``merges.txt``
    (plus the configs), and ``tokenizer.json`` too where the repo has one (``with_json``)."""
    import json

    tokenizer = clip_tokenizer(words)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    vocab = tokenizer.get_vocab()
    (out / "vocab.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1]))))
    n_symbols = 2 * len(byte_symbols())
    ordered = sorted(vocab, key=vocab.get)[n_symbols : CLIP_VOCAB_SIZE - 2]
    merges = clip_merges(words, len(ordered))
    if [a + b for a, b in merges] != ordered:
        raise AssertionError("merges and vocabulary disagree")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
    if not with_json:
        (out / "tokenizer.json").unlink()
