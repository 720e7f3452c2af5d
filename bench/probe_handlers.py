"""Handlers the benchmarks run inside real ``streampipe-worker`` processes (STREAMPIPE_HANDLER=...).

Kept apart from the benchmark modules so a worker imports nothing but this file.
"""

from __future__ import annotations

import atexit
import itertools
import json
import mmap
import os
import struct
import threading
import time
from array import array
from typing import Any


def noop(entry: Any) -> None:
    """Your business logic here: nothing, so the numbers are the runtime's own cost."""


_latencies = array("q")
_expected = int(os.environ.get("BENCH_LATENCY_EXPECTED", "0"))
_output = os.environ.get("BENCH_LATENCY_FILE", "")
_state = {"written": False}


def record_latency(entry: Any) -> None:
    """No-op work, then the time since the entry's scheduled send (``t``, CLOCK_MONOTONIC in ns).

    Every process on one Linux machine reads the same CLOCK_MONOTONIC, so producer and worker need
    no clock sync; the monotonic clock is also immune to NTP steps.
    """
    _latencies.append(time.monotonic_ns() - int(entry.fields["t"]))
    if _expected and len(_latencies) >= _expected:
        _write()


def _write() -> None:
    if _state["written"] or not _output:
        return
    _state["written"] = True
    with open(_output + ".tmp", "wb") as out:
        _latencies.tofile(out)
    os.replace(_output + ".tmp", _output)


atexit.register(_write)


COMPLETION = struct.Struct("qqq")  # done (CLOCK_MONOTONIC ns), scheduled (field t), partition (field p)
_completions: list[mmap.mmap] = []
_completion_slots = itertools.count()  # next() is atomic: partitions' handler threads share it
_completion_lock = threading.Lock()


def record_completion(entry: Any) -> None:
    """No-op work, then one record of when the entry was done, when it was scheduled and its partition.

    Records go straight into a shared memory map of ``BENCH_COMPLETIONS_FILE`` (room for
    ``BENCH_COMPLETIONS_MAX``), so what a SIGKILLed worker did is still there: the kernel keeps the
    written pages. An unused record is all zeros.
    """
    memory = _completions[0] if _completions else _map_completions()
    offset = next(_completion_slots) * COMPLETION.size
    if offset < len(memory):
        COMPLETION.pack_into(
            memory, offset, time.monotonic_ns(), int(entry.fields["t"]), int(entry.fields["p"])
        )


def _map_completions() -> mmap.mmap:
    with _completion_lock:
        if not _completions:
            size = int(os.environ["BENCH_COMPLETIONS_MAX"]) * COMPLETION.size
            with open(os.environ["BENCH_COMPLETIONS_FILE"], "w+b") as out:
                out.truncate(size)
                _completions.append(mmap.mmap(out.fileno(), size))
    return _completions[0]


def decode_json(entry: Any) -> None:
    """A handler that does what most do first: decode the payload (JSON) and nothing more."""
    json.loads(entry.fields["payload"])


async def noop_async(entry: Any) -> None:
    """The async no-op: runs on the worker's event loop, so no hand-off to the handler thread."""


def cyclic_garbage(entry: Any) -> None:
    """Leaves one reference cycle behind per entry, as catching an exception does (its traceback
    holds the frame that holds it): only the cyclic collector frees these, so how long it waits
    shows as memory (the ``soak`` comparison of bench/compare.py)."""
    node: dict[str, Any] = {"entry": entry.id}
    node["self"] = node
