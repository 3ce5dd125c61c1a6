"""What stops training early, and how: divergence (non-finite numbers) and preemption signals.

A non-finite loss or gradient must never end as a saved model: training stops with an error
naming the step and the metric, the last good checkpoint stays, and no model is written. With
``training.skip_nonfinite: N`` up to N isolated bad steps are skipped (no optimiser step) and
counted instead; the N+1st stops training.

SLURM sends SIGTERM at a time limit or preemption, and the SLURM profile asks for SIGURG ahead
of the time limit (``--signal=URG@LEAD``: every other process of the job, the Snakemake inside
it included, ignores SIGURG, while a SIGTERM would make that Snakemake report the job failed
even when training went on to finish); Ctrl-C sends SIGINT. Each signal sets a flag; the
trainer checks it at the next step boundary, writes a checkpoint and exits non-zero, so the
retried job resumes from there. A second Ctrl-C does not wait for the step: it interrupts at
once (checkpoints are written whole or not at all).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterable, Mapping
from types import FrameType

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGURG)


class DivergenceError(ValueError):
    """Training produced non-finite numbers; nothing was saved as a model."""


class Preempted(RuntimeError):
    """A signal asked training to stop; a checkpoint was written to resume from."""


class StopSignals:
    """Record SIGTERM, SIGUSR1, SIGINT and SIGURG instead of dying (or, for SIGURG, ignoring
    it), while the ``with`` block runs.

    A second SIGINT raises :class:`KeyboardInterrupt` as Python's default handler does.
    Handlers can be installed only in the main thread; elsewhere the signals keep their
    default effect.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def reason(self) -> str:
        """Why training should stop ('SIGTERM received'), or '' while no signal arrived."""
        return f"{signal.Signals(self.received).name} received" if self.received else ""


def first_nonfinite(metrics: Mapping[str, float]) -> str | None:
    """The name of the first metric that is NaN or infinite, if any."""
    return next((k for k, v in metrics.items() if not math.isfinite(v)), None)


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of tensors holding a NaN or an infinity."""
    return [name for name, t in named if t.is_floating_point() and not torch.isfinite(t).all()]


def check_weights_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse to save weights holding NaN or infinities."""
    bad = nonfinite_tensors(named)
    if bad:
        raise DivergenceError(
            f"{what}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); not saved"
        )
