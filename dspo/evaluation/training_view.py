"""The training view of one method: its curves over steps and its validation images.

Reads the run folder the trainer writes (``metrics.jsonl``, ``validation/index.json`` and
the strips it lists) and draws one figure: a row of curves (loss, implicit accuracy, reward
margin, gradient norm, learning rate; only those the objective records), and below it the
validation images, one row per validated step, one column per prompt and seed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from dspo.training.metrics import METRICS_JSONL
from dspo.training.validation import read_index

# (metric, panel title, reference line) in drawing order.
CURVES: tuple[tuple[str, str, float | None], ...] = (
    ("loss", "Loss", None),
    ("implicit_acc", "Implicit accuracy", 0.5),
    ("reward_margin", "Reward margin", 0.0),
    ("grad_norm", "Gradient norm (before clipping)", None),
    ("lr", "Learning rate", None),
)
# More validated steps than this are thinned to evenly spaced ones (the last always shown).
MAX_IMAGE_ROWS = 8
PANEL_WIDTH, PANEL_HEIGHT = 2.7, 2.1


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """The run's metric records, one row per logged step (empty when there are none)."""
    path = run_dir / METRICS_JSONL
    if not path.exists():
        return pd.DataFrame()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame.from_records(records)


def shown_steps(steps: list[int], limit: int = MAX_IMAGE_ROWS) -> list[int]:
    """At most ``limit`` of the validated steps, evenly spaced, the first and last included."""
    if len(steps) <= limit:
        return steps
    picks = np.unique(np.linspace(0, len(steps) - 1, limit).round().astype(int))
    return [steps[i] for i in picks]


def _draw_curve(ax, metrics: pd.DataFrame, key: str, title: str, line: float | None) -> None:
    data = metrics[["step", key]].dropna()
    ax.plot(data["step"], data[key], color="tab:blue", linewidth=0.8, alpha=0.45, marker=".")
    if len(data) >= 20 and key != "lr":  # the rate follows its schedule: nothing to smooth
        # A rolling mean over a tenth of the records shows the trend through per-batch noise.
        smooth = data[key].rolling(max(2, len(data) // 10), min_periods=1).mean()
        ax.plot(data["step"], smooth, color="tab:blue", linewidth=1.6, label="rolling mean")
        ax.legend(fontsize=7, loc="best")
    if line is not None:
        ax.axhline(line, color="0.4", linestyle="--", linewidth=0.8, zorder=0)
    if key == "implicit_acc":
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.grid(alpha=0.3)


def _image_rows(run_dir: Path, index: dict[str, Any], steps: list[int]) -> np.ndarray:
    """The strips of ``steps`` stacked top to bottom, with a white gap between rows."""
    files = {e["step"]: e["file"] for e in index["images"]}
    strips = [
        np.asarray(Image.open(run_dir / "validation" / files[s]).convert("RGB")) for s in steps
    ]
    gap = np.full((max(1, strips[0].shape[0] // 8), strips[0].shape[1], 3), 255, np.uint8)
    rows = []
    for strip in strips:
        rows += [strip, gap]
    return np.concatenate(rows[:-1])


def _draw_images(ax, run_dir: Path, index: dict[str, Any], steps: list[int], total: int) -> None:
    mosaic = _image_rows(run_dir, index, steps)
    ax.imshow(mosaic, interpolation="nearest")
    columns = index["columns"]
    side = index["settings"]["resolution"]
    pitch = side + max(1, side // 8)
    ax.set_yticks([pitch * i + side / 2 for i in range(len(steps))], [f"step {s}" for s in steps])
    # Numbered columns, the prompts spelled out below: whole prompts overlap over small cells.
    labels = [f"prompt {c['prompt_id'] + 1}\nseed {c['seed']}" for c in columns]
    ax.set_xticks([side * i + side / 2 for i in range(len(columns))], labels)
    ax.xaxis.tick_top()
    for i in range(1, len(columns)):
        ax.axvline(side * i - 0.5, color="white", linewidth=1.5)
    ax.tick_params(labelsize=7, length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    settings = index["settings"]
    shown = f"{len(steps)} of {total} validations" if len(steps) < total else "every validation"
    prompts = "\n".join(
        textwrap.shorten(f"prompt {i + 1}: {prompt}", 110)
        for i, prompt in enumerate(settings["prompts"])
    )
    ax.set_xlabel(
        f"Validation images ({shown}; {settings['steps']} DDIM steps, "
        f"guidance {settings['guidance']:g}, same initial noise at every step)\n{prompts}",
        fontsize=8,
    )


def plot_training_view(run_dir: Path, out_png: Path, title: str) -> dict[str, Any]:
    """Draw the training view of the run in ``run_dir``; what it shows, for the job's log."""
    metrics = read_metrics(run_dir)
    curves = [c for c in CURVES if c[0] in metrics and metrics[c[0]].notna().any()]
    index = read_index(run_dir)
    validated = sorted(e["step"] for e in index["images"]) if index else []
    steps = shown_steps(validated)
    n_panels = max(len(curves), 1)
    width = max(PANEL_WIDTH * n_panels, 7.0)
    image_height = 0.0
    if steps:
        n_columns = len(index["columns"])
        # Rows of at most 0.9 inch (the images keep their aspect ratio), plus the labels.
        n_prompts = len(index["settings"]["prompts"])
        image_height = min(width / n_columns, 0.9) * len(steps) * 1.15 + 1.0 + 0.15 * n_prompts
    fig = Figure(figsize=(width, PANEL_HEIGHT + 0.7 + image_height), layout="constrained")
    ratios = [PANEL_HEIGHT] + ([image_height] if steps else [])
    grid = fig.add_gridspec(len(ratios), n_panels, height_ratios=ratios)
    for i, (key, panel_title, line) in enumerate(curves):
        _draw_curve(fig.add_subplot(grid[0, i]), metrics, key, panel_title, line)
    if not curves:
        ax = fig.add_subplot(grid[0, :])
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center")
        ax.set_axis_off()
    if steps:
        _draw_images(fig.add_subplot(grid[1, :]), run_dir, index, steps, len(validated))
    fig.suptitle(f"Training view: {title}", fontsize=11)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return {
        "figure": str(out_png),
        "curves": [c[0] for c in curves],
        "records": len(metrics),
        "validation_steps": steps,
    }
