"""What counts as the same caption and the same pair: one normalisation, used everywhere.

A caption's *text* is its cell decoded (:func:`caption_text`); its *key* is that text
normalised (:func:`normalise_caption`). Keys decide which captions are blank, which pairs
are duplicates of each other (:func:`pair_key`), which pairs share a prompt in the one pair
per prompt table, and which training captions are evaluation prompts
(:func:`evaluation_keys`). The training table keeps each caption's text as the source wrote
it; only comparisons use the key.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Why a caption cell gives no prompt: no value (NULL), bytes that are not UTF-8 or a value that
# is not text, or nothing left after normalisation (empty, whitespace or punctuation only).
CAPTION_MISSING, CAPTION_UNREADABLE, CAPTION_BLANK = (
    "caption_missing",
    "caption_unreadable",
    "caption_blank",
)
_WHITESPACE = re.compile(r"\s+")


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def normalise_caption(text: str) -> str:
    """``text`` as compared: Unicode NFKC, case-folded, every run of whitespace one space,
    and punctuation and whitespace stripped from both ends ("  A Cat!! " -> "a cat").

    Punctuation is every Unicode category P* character (quotes, full stops, dashes,
    brackets); symbols (emoji, "$") and inner punctuation stay.
    """
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    start, stop = 0, len(text)
    while start < stop and (text[start] == " " or _is_punctuation(text[start])):
        start += 1
    while stop > start and (text[stop - 1] == " " or _is_punctuation(text[stop - 1])):
        stop -= 1
    return text[start:stop]


def caption_text(value: Any) -> tuple[str, str | None]:
    """A caption cell's text, and why it gives no prompt (None when it does).

    Strings are taken as they are; bytes (a column stored as binary) are decoded as UTF-8.
    NULL / NaN is ``caption_missing``; bytes that are not UTF-8 and values that are not text
    (numbers, lists) are ``caption_unreadable``; text that normalises to nothing is
    ``caption_blank``. The text is "" whenever a reason is given.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "", CAPTION_UNREADABLE
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "", CAPTION_MISSING
    if not isinstance(value, str):
        return "", CAPTION_UNREADABLE
    if not normalise_caption(value):
        return "", CAPTION_BLANK
    return value, None


def _digest(*chunks: bytes) -> int:
    """Signed 64-bit BLAKE2b of length-prefixed chunks (stable on every run and machine)."""
    h = hashlib.blake2b(digest_size=8)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return int.from_bytes(h.digest(), "little", signed=True)


def caption_group(text: str) -> int:
    """Id of a caption's key: captions with the same id are one prompt."""
    return _digest(normalise_caption(text).encode("utf-8"))


def pair_key(caption: str, preferred: bytes, other: bytes, tie: bool) -> int:
    """Id of a decided pair: equal ids are duplicate rows.

    Two rows are duplicates when their captions have the same key and they hold the same two
    images (by content) with the same preference, whichever source column each image came
    from. A tie has no preferred image, so its two images are taken in either order. Rows
    with the same images but opposite preferences are two votes, not duplicates.
    """
    images = sorted((preferred, other)) if tie else [preferred, other]
    hashes = [hashlib.blake2b(image, digest_size=16).digest() for image in images]
    return _digest(normalise_caption(caption).encode("utf-8"), b"tie" if tie else b"", *hashes)


class GroupVisits:
    """What a pairs part learns from the candidates it visits: per duplicate group
    (:func:`pair_key`), the smallest sample key met and whether its images are readable
    (decoded once per group), the unreadable visits as [key, group] and the keys of
    duplicates of a group already met with a smaller key.

    The ``max_pairs`` stopping rule counts readable groups, not rows, so duplicates never
    make a part stop before a pair that the whole table's sample takes.
    """

    def __init__(self) -> None:
        self.smallest: dict[int, float] = {}
        self.readable: dict[int, bool] = {}
        self.unreadable: list[list[float | int]] = []
        self.duplicate_keys: list[float] = []
        self._best: list[float] = []  # the first keys of readable groups, negated (a max-heap)

    def sample_full(self, max_pairs: int | None) -> bool:
        """Whether ``max_pairs`` readable groups have been met (never, without a sample)."""
        if max_pairs is None:
            return False
        while len(self._best) > max_pairs:
            heapq.heappop(self._best)
        return len(self._best) == max_pairs

    def cut(self) -> float:
        """The largest key of the sample so far (once :meth:`sample_full`)."""
        return -self._best[0]

    def visit(self, key: float, group: int, readable: Callable[[], bool]) -> bool:
        """Whether the row is written: it is readable and the smallest key of its group yet.

        ``readable`` decodes the row's images; it is called once per group.
        """
        if group in self.smallest and key >= self.smallest[group]:
            self.duplicate_keys.append(key)
            return False
        new_group = group not in self.readable
        if new_group:
            self.readable[group] = readable()
        self.smallest[group] = key
        if not self.readable[group]:
            self.unreadable.append([key, group])
            return False
        if new_group:
            heapq.heappush(self._best, -key)
        return True


def first_of_groups(keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mask of the entry with the smallest key of each group."""
    order = np.lexsort((keys, groups))
    first = np.ones(len(keys), dtype=bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    mask = np.zeros(len(keys), dtype=bool)
    mask[order[first]] = True
    return mask


def evaluation_keys(prompt_files: Iterable[Path]) -> frozenset[str]:
    """The keys of every prompt of the evaluation prompt tables (``prompt`` column)."""
    keys: set[str] = set()
    for path in prompt_files:
        frame = pd.read_parquet(path, columns=["prompt"])
        keys.update(normalise_caption(str(p)) for p in frame["prompt"].dropna())
    keys.discard("")
    return frozenset(keys)


def keys_digest(keys: Iterable[str]) -> str:
    """A short fingerprint of a set of keys (parts of one table must share it)."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(keys):
        h.update(key.encode("utf-8") + b"\0")
    return h.hexdigest()


# The pairs report's counts as the tables' note words them, in the order the checks run.
_REASON_WORDS = {
    CAPTION_MISSING: "without a caption",
    CAPTION_UNREADABLE: "with a caption that is not UTF-8 text",
    CAPTION_BLANK: "with a blank caption",
    "unlabelled": "unlabelled",
    "invalid_label": "with an invalid label",
    "identical": "with two identical images",
    "ties_dropped": "ties",
    "eval_prompt": "whose caption is an evaluation prompt",
    "duplicate": "duplicates of another row",
    "unreadable": "with an unreadable image",
    "not_sampled": "not drawn in the max_pairs sample",
}


def pairs_note(counts: Mapping[str, int]) -> str:
    """One sentence on the training pairs for the tables: kept of read, and each drop."""
    dropped = [
        f"{counts[reason]} {words}"
        for reason, words in _REASON_WORDS.items()
        if counts.get(reason, 0) > 0
    ]
    text = f"Training pairs: {counts['kept']} kept of {counts['input']} source rows"
    return text + (f"; dropped: {', '.join(dropped)}." if dropped else "; none dropped.")


def nodup_note(counts: Mapping[str, int]) -> str:
    """One sentence on the one pair per prompt set: pairs kept, prompts and captions merged."""
    return (
        f"One pair per prompt (nodup): {counts['kept']} of {counts['input']} pairs, one for "
        f"each prompt after normalisation ({counts['captions']} distinct caption strings)."
    )


def data_note(pairs_report: str | Path | None, nodup_report: str | Path | None = None) -> str:
    """The tables' note on the training data, from the reports the pair gathers write."""
    sentences = []
    if pairs_report:
        sentences.append(pairs_note(json.loads(Path(pairs_report).read_text())["counts"]))
    if nodup_report:
        sentences.append(nodup_note(json.loads(Path(nodup_report).read_text())["counts"]))
    return " ".join(sentences)
