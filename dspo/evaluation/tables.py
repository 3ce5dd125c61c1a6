"""Result tables: win rates, mean scores, head to head and the paper's layouts, as CSV and
Markdown."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.statistics import (
    BLOCK,
    PAIR,
    check_columns,
    head_to_head,
    holm,
    mean_scores,
    order_rows,
    sign_test,
    win_rates,
)


def write_tables(scores: pd.DataFrame, out_dir: Path, *args: Any, **kwargs: Any) -> list[Path]:
    """Build the result tables (:func:`build_tables`, same arguments) and write them."""
    return save_tables(build_tables(scores, *args, **kwargs), out_dir)


def build_tables(
    scores: pd.DataFrame,
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    labels: Mapping[str, str] | None = None,
    baseline: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    paper_tables: Mapping[str, Mapping[str, Any]] | None = None,
    data_note: str = "",
    paper_scores: pd.DataFrame | None = None,
    paper_note: str = "",
) -> dict[str, tuple[pd.DataFrame, str]]:
    """The result tables by name: each one's rows as its CSV holds them, and its Markdown.

    win_rates (every method against `baseline`, with a sign test), mean_scores, head_to_head
    (every model against every other), and one table per entry of `paper_tables` in the
    layout of a paper table (keys: title, methods, optional prompt_sets and paper, the id of
    the paper table whose published numbers are shown beside the reproduced ones, and
    paper_rows, a row shown with another paper row's numbers: :func:`paper_figures`).
    Only the given methods, rewards and prompt sets are kept, in the given order. CSVs use
    internal names and fractions; Markdown uses `labels` and per cent for win rates.
    `data_note` (what the training data dropped) closes every Markdown table.
    `paper_scores`: the scores the paper-layout tables use instead of `scores` (each method's
    picked training step: :mod:`dspo.evaluation.step_selection`), which `paper_note` states.
    """
    scores = _kept_scores(scores, [baseline, *methods], rewards, prompt_sets)
    name = labeller(labels)
    orders = {"prompt_set": prompt_sets, "reward": rewards}
    wins = _wins(scores, baseline, methods, orders, (n_boot, seed, ci))
    means = order_rows(
        mean_scores(scores, n_boot, seed, ci), {**orders, "model": [baseline, *methods]}
    )
    layout = _Layout(
        baseline=baseline,
        baseline_scores=scores[scores["model"] == baseline],
        rewards=list(rewards),
        prompt_sets=list(prompt_sets),
        name=name,
        interval=lambda n_replicates: interval_sentence(n_replicates, ci=ci, n_boot=n_boot),
        level=f"{ci * 100:g} %",
    )

    win_md = _win_table(
        wins, {"title": f"Win rate against {name(baseline)}", "methods": methods}, layout
    )[1]
    mean_md = _markdown(
        means,
        "model",
        [baseline, *methods],
        layout,
        title="# Mean reward score",
        intro=(
            f"Mean reward score of each model, with its {layout.level} interval in brackets. "
            f"{layout.interval(means['n_replicates'])} Highest per prompt set and reward in "
            "**bold**."
        ),
        value="mean",
        cell={r: _score_cell(means.loc[means["reward"] == r, "mean"]) for r in rewards},
    )

    models = [baseline, *methods]
    matrix = with_holm(
        order_rows(
            head_to_head(scores, models, n_boot, seed, ci),
            {**orders, "model": models, "opponent": models},
        )
    )
    tables = {
        "win_rates": (with_holm(wins), win_md),
        "mean_scores": (means, mean_md),
        "head_to_head": (
            matrix,
            _matrix_markdown(matrix, models, name, layout.interval(means["n_replicates"])),
        ),
    }
    paper_wins = wins
    if paper_scores is not None and paper_tables:
        kept = _kept_scores(paper_scores, [baseline, *methods], rewards, prompt_sets)
        paper_wins = _wins(kept, baseline, methods, orders, (n_boot, seed, ci))
    for table, spec in (paper_tables or {}).items():
        sets = [p for p in spec.get("prompt_sets", prompt_sets) if p in prompt_sets]
        frame, md = _win_table(paper_wins, spec, replace(layout, prompt_sets=sets))
        tables[table] = (frame, md + (f"\n{paper_note}\n" if paper_note else ""))

    # Rounding keeps the files byte-identical even if float sums differ in the last bit.
    stats = dict.fromkeys(
        ["win_rate", "mean", "ci_low", "ci_high", "p_value", "p_holm", "replicate_sd"], 6
    )
    closing = f"\n{data_note}\n" if data_note else ""
    return {name: (frame.round(stats), md + closing) for name, (frame, md) in tables.items()}


def _kept_scores(
    scores: pd.DataFrame, models: Sequence[str], rewards: Sequence[str], prompt_sets: Sequence[str]
) -> pd.DataFrame:
    """The scores of those models, rewards and prompt sets; an error naming any without."""
    check_columns(scores, "scores")
    for column, wanted in (("model", models), ("reward", rewards), ("prompt_set", prompt_sets)):
        absent = sorted(set(wanted) - set(scores[column].unique()))
        if absent:
            raise ValueError(f"no scores with {column} in {absent}")
    return scores[
        scores["model"].isin(models)
        & scores["reward"].isin(rewards)
        & scores["prompt_set"].isin(prompt_sets)
    ]


def _wins(
    scores: pd.DataFrame,
    baseline: str,
    methods: Sequence[str],
    orders: Mapping[str, Sequence[str]],
    bootstrap: tuple[int, int, float],
) -> pd.DataFrame:
    """Win rates against ``baseline`` with their sign tests, rows in order."""
    wins = win_rates(scores, baseline, *bootstrap).merge(
        sign_test(scores, baseline), on=[*BLOCK, "method"], how="left"
    )
    return order_rows(wins, {**orders, "method": methods})


def save_tables(tables: Mapping[str, tuple[pd.DataFrame, str]], out_dir: Path) -> list[Path]:
    """Each table as ``{name}.csv`` and ``{name}.md`` in ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table, (frame, markdown) in tables.items():
        csv, md = out_dir / f"{table}.csv", out_dir / f"{table}.md"
        frame.to_csv(csv, index=False, lineterminator="\n")
        md.write_text(markdown)
        paths += [csv, md]
    return paths


ALPHA = 0.05
_BETTER, _WORSE = "▲", "▼"


def with_holm(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``p_holm``: its sign tests' p-values Holm-adjusted over all its rows, the
    family of comparisons one table shows (a model against itself is no comparison)."""
    tested = frame["p_value"].notna()
    if "opponent" in frame.columns:
        tested &= frame["model"] != frame["opponent"]
    adjusted = np.full(len(frame), np.nan)
    adjusted[tested.to_numpy()] = holm(frame.loc[tested, "p_value"].to_numpy())
    return frame.assign(p_holm=adjusted)


def _mark(entry: pd.Series) -> str:
    """▲ or ▼ where the Holm-adjusted sign test rejects parity, by the side it falls on."""
    if not entry["p_holm"] < ALPHA:
        return ""
    return f" {_BETTER}" if entry["win_rate"] > 0.5 else f" {_WORSE}"


def _marks_text(against: str, n_tests: int) -> str:
    return (
        f"{_BETTER} / {_WORSE}: significantly better / worse than {against}: a two-sided sign "
        f"test over prompts of the difference averaged over seeds and training replicates, "
        f"Holm-corrected over the {n_tests} comparisons of this table (family-wise error "
        f"{ALPHA:g})."
    )


def _significance(prompt_set: str, method: str, reward: str, entry: pd.Series) -> str:
    return _mark(entry)


def published_results() -> pd.DataFrame:
    """The win rates (%) the DSPO paper publishes, one row per (table, prompt set, method,
    reward), as shipped in dspo/resources/paper_results.csv."""
    return pd.read_csv(Path(__file__).parents[1] / "resources" / "paper_results.csv")


def paper_figures(table: str, aliases: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The published win rates of one paper table. ``aliases`` (our row: the paper's row)
    show a paper row's figures beside another row as well: a released checkpoint that the
    paper scored under the method's name."""
    published = published_results()
    published = published[published["table"] == table]
    copies = [
        published[published["method"] == paper].assign(method=row)
        for row, paper in (aliases or {}).items()
    ]
    return pd.concat([published, *copies], ignore_index=True)


@dataclass(frozen=True)
class _Layout:
    """What the Markdown tables of one run share: the baseline and its scores (for the sample
    sizes), the rewards and prompt sets in order, display names, the intervals' level and
    what they resample, given the replicates of the rows a table shows."""

    baseline: str
    baseline_scores: pd.DataFrame
    rewards: list[str]
    prompt_sets: list[str]
    name: Callable[[str], str]
    interval: Callable[[pd.Series], str]
    level: str

    def sample_sizes(self) -> dict[float, str]:
        """Per guidance, a line giving prompts x seeds of each prompt set."""
        lines = {}
        for guidance, block in self.baseline_scores.groupby("guidance", sort=True):
            parts = []
            for prompt_set in self.prompt_sets:
                pairs = block.loc[block["prompt_set"] == prompt_set, PAIR].drop_duplicates()
                n_prompts, n_seeds = pairs["prompt_id"].nunique(), pairs["seed"].nunique()
                label = self.name(prompt_set)
                if len(pairs) == n_prompts * n_seeds:
                    parts.append(f"{label} {n_prompts} × {n_seeds}")
                else:
                    parts.append(f"{label} {len(pairs)} samples of {n_prompts} prompts")
            lines[guidance] = "Prompts × seeds: " + ", ".join(parts) + "."
        return lines


def _win_table(
    wins: pd.DataFrame, spec: Mapping[str, Any], layout: _Layout
) -> tuple[pd.DataFrame, str]:
    """A paper-layout table of win rates for `spec` (title, methods, optional paper), with
    the published figure beside each cell when `spec` names a paper table."""
    methods = list(spec["methods"])
    prompt_sets = layout.prompt_sets
    frame = wins[wins["method"].isin(methods) & wins["prompt_set"].isin(prompt_sets)]
    frame = order_rows(
        frame, {"prompt_set": prompt_sets, "reward": layout.rewards, "method": methods}
    )
    frame = with_holm(frame)
    baseline = layout.name(layout.baseline)
    intro = (
        f"Win rate (%) of each method against {baseline} on the same prompt, seed and initial "
        f"noise (ties count half), with its {layout.level} interval in brackets. "
        f"{layout.interval(frame['n_replicates'])} Best per prompt set and reward in **bold**. "
        f"{_marks_text(baseline, int(frame['p_holm'].notna().sum()))}"
    )
    note = _significance
    if spec.get("paper"):
        paper = paper_figures(spec["paper"], spec.get("paper_rows")).set_index(
            ["prompt_set", "method", "reward"]
        )
        frame = frame.merge(
            paper["win_rate"].div(100).rename("paper_win_rate").reset_index(),
            on=["prompt_set", "method", "reward"],
            how="left",
        )
        intro += f" In parentheses: the figure published in the paper's {spec['paper']}."

        def note(prompt_set: str, method: str, reward: str, entry: pd.Series) -> str:
            key = (prompt_set, method, reward)
            published = f" ({paper.at[key, 'win_rate']:.1f})" if key in paper.index else ""
            return _significance(prompt_set, method, reward, entry) + published

    markdown = _markdown(
        frame,
        "method",
        methods,
        layout,
        title=f"# {spec['title']}",
        intro=intro,
        value="win_rate",
        cell={r: _percent_cell for r in layout.rewards},
        note=note,
    )
    return frame, markdown


def _matrix_markdown(
    matrix: pd.DataFrame, models: Sequence[str], name: Callable[[str], str], interval: str
) -> str:
    """One square table per (prompt set, guidance, reward): row model's win rate vs column's."""
    lines = [
        "# Head to head",
        "",
        f"Win rate (%) of the row model against the column model on the same prompt, seed and "
        f"initial noise (ties count half). The intervals are in head_to_head.csv. {interval} "
        + _marks_text("the column model", int(matrix["p_holm"].notna().sum())),
    ]
    for (prompt_set, guidance, reward), block in matrix.groupby(BLOCK, sort=False):
        cells = block.set_index(["model", "opponent"])
        lines += ["", f"## {name(prompt_set)}, guidance {float(guidance)}, {name(reward)}", ""]
        lines.append("| | " + " | ".join(name(m) for m in models) + " |")
        lines.append("|---|" + "---:|" * len(models))
        for row in models:
            values = []
            for column in models:
                if (row, column) not in cells.index:
                    values.append("–")
                    continue
                entry = cells.loc[(row, column)]
                values.append(f"{100 * entry['win_rate']:.1f}{_mark(entry)}")
            lines.append(f"| {name(row)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def labeller(labels: Mapping[str, str] | None) -> Callable[[str], str]:
    labels = dict(labels or {})
    return lambda key: labels.get(key, key)


def _percent_cell(value: float, low: float, high: float) -> tuple[str, str]:
    return f"{100 * value:.1f}", f"[{100 * low:.1f}, {100 * high:.1f}]"


def _score_cell(values: pd.Series) -> Callable[[float, float, float], tuple[str, str]]:
    """Cell formatter showing four significant digits of the largest mean of one reward."""
    largest = float(values.abs().max()) if len(values) else 0.0
    digits = max(0, 3 - int(np.floor(np.log10(largest)))) if largest > 0 else 3
    return lambda v, lo, hi: (f"{v:.{digits}f}", f"[{lo:.{digits}f}, {hi:.{digits}f}]")


def _markdown(
    frame: pd.DataFrame,
    who: str,
    rows: Sequence[str],
    layout: _Layout,
    *,
    title: str,
    intro: str,
    value: str,
    cell: Mapping[str, Callable[[float, float, float], tuple[str, str]]],
    note: Callable[[str, str, str, pd.Series], str] | None = None,
) -> str:
    """Paper-style tables, one per guidance: rows prompt set x `who`, columns reward models."""
    name, rewards, sizes = layout.name, layout.rewards, layout.sample_sizes()
    header = ["Prompt set", who.capitalize(), *(name(r) for r in rewards)]
    lines = [title, "", intro]
    for guidance in sorted(frame["guidance"].unique()):
        lines += ["", f"## guidance {float(guidance)}", "", sizes.get(guidance, ""), ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * len(rewards))
        block = frame[frame["guidance"] == guidance].set_index(["prompt_set", who, "reward"])
        best = block.groupby(level=["prompt_set", "reward"])[value].max()
        for prompt_set in layout.prompt_sets:
            for i, row in enumerate(rows):
                cells = [name(prompt_set) if i == 0 else "", name(row)]
                for reward in rewards:
                    key = (prompt_set, row, reward)
                    if key not in block.index:
                        cells.append("–")
                        continue
                    entry = block.loc[key]
                    point, interval = cell[reward](entry[value], entry["ci_low"], entry["ci_high"])
                    bold = entry[value] == best[(prompt_set, reward)]
                    text = f"**{point}** {interval}" if bold else f"{point} {interval}"
                    if note is not None:
                        text += note(prompt_set, row, reward, entry)
                    cells.append(text)
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
