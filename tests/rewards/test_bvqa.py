"""B-VQA's scoring: the rule's noun phrases, BLIP's question cleaning, the product of the
answers (the BLIP answerer's own tests: tests/rewards/test_blip_vqa.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dspo.rewards.bvqa import noun_phrases, product_scores, question


@pytest.mark.parametrize(
    ("prompt", "phrases"),
    [
        # T2I-CompBench colour/shape/texture validation prompts are of this "X and Y" form.
        ("a green bench and a red car", ["a green bench", "a red car"]),
        ("an oval mirror and a rectangular rug", ["an oval mirror", "a rectangular rug"]),
        ("A cat on a mat, in the sun.", ["A cat", "a mat", "the sun"]),
        ("a red circle on a white background", ["a red circle", "a white background"]),
        ("a cup next to a bowl in front of a vase", ["a cup", "a bowl", "a vase"]),
        ("a brand new sandwich", ["a brand new sandwich"]),  # "and" inside "brand" is kept
        ("and", []),
    ],
)
def test_noun_phrases_cut_at_conjunctions_prepositions_and_commas(prompt, phrases) -> None:
    assert noun_phrases(prompt) == phrases


def test_at_most_eight_phrases_are_asked_about() -> None:
    prompt = " and ".join(f"a thing{i}" for i in range(10))
    assert noun_phrases(prompt) == [f"a thing{i}" for i in range(8)]


def test_question_is_the_phrase_cleaned_as_blip_cleans_questions() -> None:
    assert question('A "Red" Car (big)') == "a red car big?"


def test_score_is_the_product_of_yes_probabilities_per_prompt() -> None:
    asked = []

    def answer(images, which, phrases):
        asked.append((list(which), list(phrases)))
        return np.array([{"a red car": 0.5, "a blue bench": 0.4, "a cat": 0.9}[p] for p in phrases])

    images = [Image.new("RGB", (4, 4))] * 3
    scores = product_scores(images, ["a red car and a blue bench", "a cat", "."], answer)
    np.testing.assert_allclose(scores, [0.2, 0.9, 1.0])
    assert asked == [([0, 0, 1], ["a red car", "a blue bench", "a cat"])]
