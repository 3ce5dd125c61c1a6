"""The experiment tracker of a training run: TensorBoard and/or Weights & Biases.

One project per workflow run (``training.tracker_project``; the workflow names it after the
preset) and one run per method, named by the method. The run's hyper-parameters are the
method's whole resolved config, flattened into scalars and strings, as TensorBoard's hparams
accept. TensorBoard writes to ``{run_dir}/{project}``, so ``tensorboard --logdir results/train``
lists one run per method.

A named tracker must be installed: accelerate drops a missing one with a warning and the run
then logs nowhere, so :func:`tracker_problem` makes that a config error (at plan time and in
`dspo train`'s settings check). A W&B run is opened under the id the training run keeps with
its checkpoints, so a resumed run continues the same W&B run instead of starting another.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

# accelerate (and torch with it) only types the run's functions: the config check reads
# tracker_problem while the workflow builds its DAG.
if TYPE_CHECKING:
    from accelerate import Accelerator

DEFAULT_PROJECT = "dspo"
# The trackers whose runs start_trackers configures and log_images writes images to.
TRACKERS = ("tensorboard", "wandb")
# training.report_to: one of them, "all" (every tracker accelerate finds installed) or None.
REPORT_TO = (None, "all", *TRACKERS)
Scalar = bool | int | float | str
# The package each tracker needs.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracker_problem(report_to: str | None) -> str | None:
    """Why ``report_to`` cannot log here (its tracker's package is not installed); None if
    it can. ``all`` takes whichever trackers are installed."""
    package = PACKAGES.get(report_to or "")
    if package and importlib.util.find_spec(package) is None:
        return (
            f"{report_to!r} needs the {package} package, which is not installed "
            f"(pip install {package}), and would log nowhere"
        )
    return None


def new_run_id() -> str:
    """A fresh tracker run id (W&B's form: 8 lowercase letters and digits)."""
    return secrets.token_hex(4)


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
    accelerator: Accelerator, cfg: Mapping[str, Any], method: str, start_step: int, run_id: str
) -> None:
    """Open the method's tracker run; a resumed run drops what a cut run logged after its
    checkpoint (TensorBoard's ``purge_step``), and continues the W&B run ``run_id`` (kept with
    the checkpoints), so the curves read as one run."""
    if cfg.get("report_to") not in REPORT_TO:
        raise ValueError(
            f"training.report_to {cfg.get('report_to')!r}; expected one of {REPORT_TO}"
        )
    accelerator.init_trackers(
        cfg.get("tracker_project") or DEFAULT_PROJECT,
        config=flat_config(cfg),
        init_kwargs={
            "tensorboard": {"purge_step": start_step + 1} if start_step else {},
            "wandb": {"name": method, "id": run_id, "resume": "allow"},
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
