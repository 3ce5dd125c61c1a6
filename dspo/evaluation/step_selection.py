"""Choosing each trained model's step as the DSPO authors did: on a validation prompt set.

A trained model's candidates are its kept steps (``training.evaluate_steps``, scored as
models ``dspo@100``) and its last step (the model itself). The candidate with the highest
mean score of one reward over the validation set's images (every prompt, seed and guidance)
is picked; a tie goes to the later step. The validation set is no test set: the tables that
report test sets then show each model's picked step (:func:`use_picked`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pandas as pd

COLUMNS = ["model", "step", "row", "prompt_set", "reward", "mean", "n_images", "picked"]


def pick_steps(
    scores: pd.DataFrame,
    candidates: Mapping[str, Mapping[int, str]],
    prompt_set: str,
    reward: str,
) -> pd.DataFrame:
    """One row per (trained model, candidate step): the candidate's row name, its mean
    ``reward`` on ``prompt_set`` and whether it is picked. A candidate without such scores is
    an error naming it."""
    block = scores[(scores["prompt_set"] == prompt_set) & (scores["reward"] == reward)]
    rows = []
    for model, steps in candidates.items():
        means = {}
        for step, row in steps.items():
            values = block.loc[block["model"] == row, "score"]
            if values.empty:
                raise ValueError(
                    f"no {reward!r} scores of {row!r} on the prompt set {prompt_set!r}"
                )
            means[int(step)] = (row, float(values.mean()), len(values))
        best = max(means, key=lambda s: (means[s][1], s))
        rows += [
            [model, step, row, prompt_set, reward, mean, n, step == best]
            for step, (row, mean, n) in sorted(means.items())
        ]
    return pd.DataFrame(rows, columns=COLUMNS)


def picked_rows(selection: pd.DataFrame) -> dict[str, str]:
    """Each trained model's picked row: ``{"dspo": "dspo@100"}``."""
    picked = selection[selection["picked"]]
    return dict(zip(picked["model"], picked["row"], strict=True))


def use_picked(scores: pd.DataFrame, picks: Mapping[str, str]) -> pd.DataFrame:
    """``scores`` with each trained model's rows replaced by its picked row's, under the
    model's name; the kept steps' own rows are left as they are."""
    moved = {row: model for model, row in picks.items() if row != model}
    if not moved:
        return scores
    kept = scores[~scores["model"].isin(moved.values())]
    copies = scores[scores["model"].isin(moved)]
    copies = copies.assign(model=copies["model"].map(moved))
    return pd.concat([kept, copies], ignore_index=True)


def selection_markdown(selection: pd.DataFrame, name: Callable[[str], str]) -> str:
    """The step-selection table: each model's candidates with their validation means."""
    first = selection.iloc[0]
    lines = [
        "# Step selection",
        "",
        f"Each trained model's training step, picked by the highest mean {name(first['reward'])} "
        f"on the validation prompt set {name(first['prompt_set'])} (every prompt, seed and "
        "guidance; not a test set). The last step is always a candidate; a tie goes to the "
        "later step. The paper-layout tables use the picked step's row.",
        "",
        "| Model | Step | Row | Mean | Images | Picked |",
        "|---|---:|---|---:|---:|---|",
    ]
    for entry in selection.itertuples():
        mark = "**yes**" if entry.picked else ""
        lines.append(
            f"| {entry.model} | {entry.step} | {entry.row} | {entry.mean:.4g} | "
            f"{entry.n_images} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def shared_prompts(
    scores: pd.DataFrame, prompt_set: str, test_sets: Iterable[str]
) -> tuple[int, dict[str, int]]:
    """The validation set's number of prompts, and how many of them each test set also holds
    (the same text; only the sets that share one): a validation set that is not a test set
    shares none, which the step-selection table states."""
    texts = scores.groupby("prompt_set")["prompt"].unique()
    own = set(texts.get(prompt_set, []))
    shared = {s: len(own & set(texts[s])) for s in test_sets if s != prompt_set and s in texts}
    return len(own), {s: n for s, n in shared.items() if n}


def overlap_sentence(n_prompts: int, shared: Mapping[str, int], name: Callable[[str], str]) -> str:
    """What the step-selection table says of the validation set's overlap with the test sets."""
    if not shared:
        return "The validation set shares no prompt with the test sets."
    parts = ", ".join(f"{n} with {name(s)}" for s, n in shared.items())
    return (
        f"**The validation set is not disjoint from the test sets**: of its {n_prompts} "
        f"prompts, {parts} (the same text); the step was chosen on prompts that are tested."
    )


def selection_note(selection: pd.DataFrame, name: Callable[[str], str]) -> str:
    """What a paper table says of its rows: the step each trained model's row comes from."""
    first = selection.iloc[0]
    last = selection.groupby("model", sort=False)["step"].max()
    picked = selection[selection["picked"]]
    steps = ", ".join(
        f"{entry.model} step {entry.step} of {last[entry.model]}" for entry in picked.itertuples()
    )
    return (
        f"Each trained model's row is its training step picked on the validation prompt set "
        f"{name(first['prompt_set'])} by {name(first['reward'])} (step_selection.md): {steps}."
    )
