"""The training guards' signal handling (dspo/training/guards.py), in this process.

A training run stops at the next step's end on any of ``SIGNALS``; that a stopped run
checkpoints and its rerun matches an uninterrupted one is tested end to end with SIGTERM
(tests/faults/test_train_faults.py), since every signal reaches the loop through this handler.
"""

from __future__ import annotations

import os
import signal

import pytest

from dspo.training.guards import SIGNALS, StopSignals


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_each_stop_signal_is_recorded_instead_of_ending_the_process(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with StopSignals() as signals:
        assert signals.reason == ""
        os.kill(os.getpid(), sig)
        assert signals.received == sig and signals.reason == f"{sig.name} received"
    assert signal.getsignal(sig) is before


def test_a_second_ctrl_c_interrupts_at_once() -> None:
    """The first SIGINT asks for a checkpoint at the step's end; the second does not wait;
    the handler in place before is back afterwards (whatever an earlier test left there)."""
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.reason == "SIGINT received"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
