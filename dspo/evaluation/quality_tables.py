"""The image-quality table and the DDSPO comparison table, as CSV rows and Markdown.

- ``image_quality``: per prompt set, guidance and model, the Inception Score with its
  standard deviation over the splits, and FID where a reference set was configured
  (`dspo quality` rows; a model's replicates are averaged, ``n_replicates`` says how many).
- ``ddspo``: laid out like DDSPO's comparison tables: one row per model, the base model first,
  then Diffusion-DPO and DDSPO, then every other method; columns per reward model (every
  metric the score tables hold, e.g. a ``bvqa`` score: whichever rewards are given), the win
  rate against the base model and the mean score, then, with the attribute-binding table
  (`dspo binding-table`), the mean B-VQA with its interval per binding prompt set, read from
  that table as it is (the same in every block of a guidance), then IS (with its deviation)
  and FID where measured. One block per prompt set and guidance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from dspo.evaluation.binding import COLUMNS as BINDING_COLUMNS
from dspo.evaluation.binding import interval_cell
from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.statistics import order_rows

# The models DDSPO's tables compare, in its order, after the base model.
DDSPO_ROWS = ("diffusion_dpo", "ddspo")
QUALITY_KEYS = ["prompt_set", "guidance", "model"]
QUALITY_METRICS = ("inception_score", "fid")
# The attribute-binding table's columns the DDSPO table shows, as ``{prompt_set}_{suffix}``:
# suffixes no reward's column (``_win_rate``, ``_mean``) ends in.
BINDING_STATS = {"mean": "bvqa", "ci_low": "bvqa_ci_low", "ci_high": "bvqa_ci_high"}


def read_quality(paths: Sequence[str], groups: dict[str, Sequence[object]]) -> pd.DataFrame:
    """The `dspo quality` tables joined, each trained model's rows under its group
    (``groups`` as :func:`dspo.evaluation.sweeps.relabel_groups` reads it)."""
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    frame["model"] = frame["model"].map(lambda m: groups[m][0] if m in groups else m)
    return frame


def quality_summary(
    quality: pd.DataFrame, models: Sequence[str], prompt_sets: Sequence[str]
) -> pd.DataFrame:
    """One row per (prompt_set, guidance, model): ``inception_score``, ``inception_score_sd``
    and ``fid`` (NaN where not measured), each the mean over the model's replicates, and
    ``n_images`` (per replicate) and ``n_replicates``."""
    kept = quality[quality["model"].isin(models) & quality["prompt_set"].isin(prompt_sets)]
    rows = []
    for key, group in kept.groupby(QUALITY_KEYS, sort=False):
        per_metric = {m: group[group["metric"] == m] for m in QUALITY_METRICS}
        score = per_metric["inception_score"]
        rows.append(
            {
                **dict(zip(QUALITY_KEYS, key, strict=True)),
                "inception_score": score["value"].mean(),
                "inception_score_sd": score["sd"].mean(),
                "fid": per_metric["fid"]["value"].mean(),
                "n_images": int(score["n_images"].iloc[0]),
                "n_replicates": len(score),
            }
        )
    columns = [*QUALITY_KEYS, "inception_score", "inception_score_sd", "fid"]
    frame = pd.DataFrame(rows, columns=[*columns, "n_images", "n_replicates"])
    return order_rows(frame, {"prompt_set": prompt_sets, "model": models})


def read_binding(path: str) -> pd.DataFrame:
    """The attribute-binding table's rows (`dspo binding-table`'s CSV); a file without its
    columns, or without rows, is an error naming the file."""
    frame = pd.read_csv(path)
    missing = [c for c in BINDING_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not an attribute-binding table, no column(s) {missing}")
    if frame.empty:
        raise ValueError(f"{path}: the attribute-binding table has no rows")
    return frame


def binding_columns(binding: pd.DataFrame) -> pd.DataFrame:
    """One row per (guidance, model) of the attribute-binding table's rows: per binding prompt
    set, in the table's order, ``{set}_bvqa`` (the mean B-VQA), ``{set}_bvqa_ci_low`` and
    ``{set}_bvqa_ci_high``, as the table holds them."""
    keys = ["guidance", "model"]
    parts = [
        rows.set_index(keys)[list(BINDING_STATS)].rename(
            columns=lambda c, s=prompt_set: f"{s}_{BINDING_STATS[c]}"
        )
        for prompt_set, rows in binding.groupby("prompt_set", sort=False)
    ]
    return pd.concat(parts, axis=1).reset_index()


def ddspo_models(baseline: str, methods: Sequence[str]) -> list[str]:
    """The DDSPO table's rows: the base model, Diffusion-DPO, DDSPO, then the other methods."""
    first = [m for m in DDSPO_ROWS if m in methods]
    return [baseline, *first, *(m for m in methods if m not in first)]


def ddspo_frame(
    wins: pd.DataFrame,
    means: pd.DataFrame,
    quality: pd.DataFrame | None,
    baseline: str,
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    binding: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (prompt_set, guidance, model) in :func:`ddspo_models` order: per reward
    ``{reward}_win_rate`` (empty for the base model) and ``{reward}_mean``; with ``quality``,
    ``inception_score``, ``inception_score_sd`` and ``fid``; with ``binding`` (the
    attribute-binding table's rows), the :func:`binding_columns` of the row's guidance and
    model (empty for a model the binding table lacks)."""
    models = ddspo_models(baseline, methods)
    keys = ["prompt_set", "guidance", "model"]
    mean = means[means["model"].isin(models)].pivot_table(
        index=keys, columns="reward", values="mean", aggfunc="first"
    )
    win = (
        wins.rename(columns={"method": "model"})
        .pivot_table(index=keys, columns="reward", values="win_rate", aggfunc="first")
        .reindex(mean.index)
    )
    parts = []
    for reward in rewards:
        parts.append(
            win.get(reward, pd.Series(np.nan, index=mean.index)).rename(f"{reward}_win_rate")
        )
        parts.append(mean.get(reward, pd.Series(np.nan, index=mean.index)).rename(f"{reward}_mean"))
    frame = pd.concat(parts, axis=1).reset_index()
    if quality is not None:
        columns = ["inception_score", "inception_score_sd", "fid"]
        frame = frame.merge(quality[keys + columns], on=keys, how="left")
    if binding is not None:
        frame = frame.merge(binding_columns(binding), on=["guidance", "model"], how="left")
    frame = frame[frame["prompt_set"].isin(prompt_sets)]
    return order_rows(frame, {"prompt_set": prompt_sets, "model": models})


def _number(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _with_sd(value: float, sd: float) -> str:
    return f"{_number(value, 2)} ± {_number(sd, 2)}"


def quality_markdown(frame: pd.DataFrame, name: Callable[[str], str], classifier: str) -> str:
    """The image-quality table as Markdown, one block per prompt set and guidance."""
    lines = [
        "# Image quality",
        "",
        f"Inception Score ± its standard deviation over the splits, and FID against the "
        f"reference image set where one is configured (lower is better), from {classifier}. "
        "A model's replicates are averaged.",
    ]
    for (prompt_set, guidance), block in frame.groupby(["prompt_set", "guidance"], sort=False):
        lines += ["", f"## {name(prompt_set)}, guidance {guidance:g}", ""]
        lines += ["| Model | IS | FID | Images |", "|---|---|---|---|"]
        for row in block.itertuples():
            score = f"{_number(row.inception_score, 2)} ± {_number(row.inception_score_sd, 2)}"
            lines.append(
                f"| {name(row.model)} | {score} | {_number(row.fid, 2)} | {row.n_images} |"
            )
    return "\n".join(lines) + "\n"


def binding_note(binding: pd.DataFrame | None, models: Sequence[str], n_boot: int | None) -> str:
    """The DDSPO table's sentences on its B-VQA columns: what they show and what their
    intervals resample (for the replicates of `models`), or that they are absent."""
    if binding is None:
        return " B-VQA: absent (no attribute-binding prompt sets are evaluated)."
    shown = binding.loc[binding["model"].isin(models), "n_replicates"]
    return (
        " B-VQA: T2I-CompBench's attribute-binding score per binding prompt set, the mean "
        "[interval] of the attribute-binding table (the same in every block of a guidance). "
        + interval_sentence(shown, subject="B-VQA intervals", n_boot=n_boot)
    )


def ddspo_markdown(
    frame: pd.DataFrame,
    rewards: Sequence[str],
    name: Callable[[str], str],
    baseline: str,
    binding: pd.DataFrame | None = None,
    n_boot: int | None = None,
) -> str:
    """The DDSPO table as Markdown: win rate (per cent) / mean score per reward, then, with
    ``binding`` (the attribute-binding table's rows, whose columns `frame` holds), the mean
    B-VQA [interval] per binding prompt set, then IS and FID where measured; one block per
    prompt set and guidance. ``n_boot``: the binding table's resamples, for its note."""
    has_quality = "inception_score" in frame.columns
    has_fid = has_quality and bool(frame["fid"].notna().any())
    sets = [] if binding is None else list(dict.fromkeys(binding["prompt_set"]))
    head = (
        [name(r) for r in rewards]
        + [f"{name(s)} B-VQA" for s in sets]
        + (["IS"] if has_quality else [])
        + (["FID"] if has_fid else [])
    )
    lines = [
        "# DDSPO comparison",
        "",
        f"Rows as in DDSPO's comparison tables: {name(baseline)}, Diffusion-DPO, DDSPO, then the "
        f"other methods. Each reward column gives the win rate against {name(baseline)} (per "
        "cent) / the mean score."
        + binding_note(binding, list(dict.fromkeys(frame["model"])), n_boot)
        + " IS: the Inception Score ± its deviation over the splits." * has_quality
        + " FID: the distance to the reference image set (lower is better)." * has_fid,
    ]
    for (prompt_set, guidance), block in frame.groupby(["prompt_set", "guidance"], sort=False):
        lines += ["", f"## {name(prompt_set)}, guidance {guidance:g}", ""]
        lines += ["| Model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for row in block.to_dict("records"):
            cells = []
            for reward in rewards:
                rate = row[f"{reward}_win_rate"]
                win = "–" if pd.isna(rate) else f"{rate * 100:.1f}"
                cells.append(f"{win} / {_number(row[f'{reward}_mean'], 3)}")
            for s in sets:
                stats = [row[f"{s}_{suffix}"] for suffix in BINDING_STATS.values()]
                cells.append(interval_cell(*stats))
            if has_quality:
                cells.append(_with_sd(row["inception_score"], row["inception_score_sd"]))
            if has_fid:
                cells.append(_number(row["fid"], 2))
            lines.append(f"| {name(row['model'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def extra_tables(
    wins: pd.DataFrame,
    means: pd.DataFrame,
    quality_files: Sequence[str],
    groups: dict[str, Sequence[object]],
    methods: Sequence[str],
    rewards: Sequence[str],
    prompt_sets: Sequence[str],
    name: Callable[[str], str],
    baseline: str = "base",
    binding_file: str | None = None,
    n_boot: int | None = None,
) -> dict[str, tuple[pd.DataFrame, str]]:
    """``ddspo`` always, and ``image_quality`` when `dspo quality` tables are given: each as
    its CSV rows (rounded to 6 decimals, so files are byte-identical) and its Markdown. `wins`
    and `means` are the win-rate and mean-score tables' rows; ``binding_file``, the
    attribute-binding table (`dspo binding-table`'s CSV, made with ``n_boot`` resamples), adds
    its B-VQA columns to the ``ddspo`` table."""
    binding = read_binding(binding_file) if binding_file else None
    quality = None
    tables = {}
    if quality_files:
        rows = read_quality(quality_files, groups)
        quality = quality_summary(rows, [baseline, *methods], prompt_sets)
        classifier = ", ".join(sorted(rows["classifier"].unique()))
        tables["image_quality"] = (quality, quality_markdown(quality, name, classifier))
    frame = ddspo_frame(wins, means, quality, baseline, methods, rewards, prompt_sets, binding)
    markdown = ddspo_markdown(frame, rewards, name, baseline, binding, n_boot)
    tables["ddspo"] = (frame, markdown)
    return {key: (table.round(6), md) for key, (table, md) in tables.items()}
