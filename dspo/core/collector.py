"""CPython's cyclic garbage collector in a process that runs one job.

A job imports torch, diffusers and transformers before it works: millions of objects
(4.5 million for ``dspo generate``) that live until it exits. CPython's collector walks every
one of them in each full collection. With its default thresholds that is about eight full
collections during the imports and several more in the interpreter's teardown: 1.3 s of the
5.3 s of CPU a toy-world ``dspo generate`` takes (docs/development.md, "Job start-up").

:func:`job_collector` changes two things, and only for a process of its own (the ``dspo``
console script and ``python -m dspo.cli.commands``; never a call of ``main`` from a library or
a test, whose frozen objects would stay for the rest of that process):

- a full collection waits for :data:`FULL_AFTER` middle-generation collections instead of 10.
  After start-up CPython already holds full collections back until the long-lived objects
  have grown by a quarter (over a million objects once diffusers is imported): a toy training
  of 60 steps ran none after its imports, with either setting. The young and middle
  generations, which free a step's garbage, and the explicit ``gc.collect()`` calls (the
  scorer's, between reward models) are unchanged.
- at exit, one full collection finalises the garbage in cycles, and what survives it is
  frozen, so the teardown's collections have nothing left to walk.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

FULL_AFTER = 1000


@contextmanager
def job_collector() -> Iterator[None]:
    """The collector as a job's process wants it, for the length of the ``with`` block
    (the rest of the process: see the module's doc)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
