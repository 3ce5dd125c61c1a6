"""The experiment tracker of a training run: TensorBoard and/or Weights & Biases.

One project per workflow run (``training.tracker_project``; the workflow names it after the
preset) and one run per method, named by the method. The run's hyper-parameters are the
method's whole resolved config, flattened into scalars and strings, as TensorBoard's hparams
accept. TensorBoard writes to ``{run_dir}/{project}``, so ``tensorboard --logdir results/train``
lists one run per method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from accelerate import Accelerator

DEFAULT_PROJECT = "dspo"
# The trackers whose runs start_trackers configures and log_images writes images to.
TRACKERS = ("tensorboard", "wandb")
# training.report_to: one of them, "all" (every tracker accelerate finds installed) or None.
REPORT_TO = (None, "all", *TRACKERS)
Scalar = bool | int | float | str


def flat_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested keys joined by '/'; lists as JSON and None as 'null' (hparams drop None)."""
    flat: dict[str, Scalar] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def start_trackers(
    accelerator: Accelerator, cfg: Mapping[str, Any], method: str, start_step: int
) -> None:
    """Open the method's tracker run; a resumed run drops what a cut run logged after its
    checkpoint (TensorBoard's ``purge_step``), so the curves read as one run."""
    if cfg.get("report_to") not in REPORT_TO:
        raise ValueError(
            f"training.report_to {cfg.get('report_to')!r}; expected one of {REPORT_TO}"
        )
    accelerator.init_trackers(
        cfg.get("tracker_project") or DEFAULT_PROJECT,
        config=flat_config(cfg),
        init_kwargs={
            "tensorboard": {"purge_step": start_step + 1} if start_step else {},
            "wandb": {"name": method},
        },
    )


def log_images(
    accelerator: Accelerator, images: np.ndarray, captions: Sequence[str], step: int
) -> None:
    """Images (N, H, W, 3) in [0, 1] under the tag 'validation' of every open tracker."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step, dataformats="NHWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            pictures = [
                wandb.Image(image, caption=c) for image, c in zip(images, captions, strict=True)
            ]
            tracker.run.log({"validation": pictures}, step=step)
