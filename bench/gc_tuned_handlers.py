"""The no-op handler, imported by a worker with its garbage collector tuned (the ``streampipe_gc`` variant).

A batch of 1000 entries allocates thousands of container objects (reply lists, field dicts, Entry
objects) that live until the batch is acked, so CPython's generation-0 collection (every 700 net
allocations) runs several times per batch and walks objects that are about to die anyway. Freezing
what start-up allocated and raising the first threshold is the change measured here; importing the
handler is simply the earliest hook a benchmark has into a real worker process.
"""

from __future__ import annotations

import gc
from typing import Any

import probe_handlers

gc.freeze()
gc.set_threshold(100_000, 50, 50)


def noop(entry: Any) -> None:
    """Nothing, as in probe_handlers.noop."""


def record_latency(entry: Any) -> None:
    """probe_handlers.record_latency, in a worker with the collector tuned."""
    probe_handlers.record_latency(entry)
