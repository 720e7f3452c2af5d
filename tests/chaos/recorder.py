"""The fault suite's handler (``STREAMPIPE_HANDLER=tests.chaos.recorder:handle``), run by real workers.

Every handler call appends one line ``<n> <entry id> <deliveries> <started> <outcome>`` to a file of
its own process (``$CHAOS_RECORD_DIR/<consumer>-<pid>.log``), with one ``write(2)`` per call, before it
returns or raises. ``n`` is the producer's sequence number (field ``n``): the oracle's identity of an
entry, because an entry ID can be generated twice (a failed-over primary that lost the tail of the
stream hands out the same IDs again). ``started`` is CLOCK_MONOTONIC in ns when the call began: one
clock for every process of the machine, so the per-key order oracle can order calls of different
workers.

Why a file per process, and what survives which fault:

- a worker SIGKILL loses nothing written: ``write(2)`` has handed the bytes to the kernel, whose page
  cache outlives the process (a line is a few dozen bytes, written whole by one call);
- a Redis/Valkey crash, stall, partition or failover cannot touch it: the record is outside the system
  under test, so the oracle never trusts the faulty component to report on itself;
- a machine crash or power loss would lose unsynced lines; there is no fsync because this suite never
  simulates one (and an fsync per entry would measure the disk, not the pipeline).

The entry's ``behaviour`` field decides the outcome: ``ok`` (default), ``permanent`` (PermanentError:
dead-lettered at once), ``fail`` (always raises: dead-lettered after maxDeliveries), ``flaky:<k>``
(raises on the first k deliveries), ``hold:<seconds>`` (records ``hold`` at once, then waits that long
before going on as ``ok``: a test waits for that record to know that a handler is mid-call).

``CHAOS_HANDLER_DELAY`` (seconds) makes every call take that long, so that workers are busy and a kill
lands in the middle of a batch. With ``CHAOS_SIDE_EFFECT_URL`` set, a successful call also SADDs ``n``
to ``CHAOS_SIDE_EFFECT_KEY`` there, with a 1 s timeout: a side effect that can time out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from redis.backoff import NoBackoff
from redis.retry import Retry

import redis
from streampipe_worker.router import Entry, PermanentError

_DIRECTORY = Path(os.environ.get("CHAOS_RECORD_DIR", "."))
_CONSUMER = os.environ.get("STREAMPIPE_CONSUMER", "worker")
_FD = os.open(_DIRECTORY / f"{_CONSUMER}-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
_DELAY = float(os.environ.get("CHAOS_HANDLER_DELAY", "0"))
_SIDE_EFFECT_URL = os.environ.get("CHAOS_SIDE_EFFECT_URL")
_SIDE_EFFECT_KEY = os.environ.get("CHAOS_SIDE_EFFECT_KEY", "chaos:side-effects")
_side_effects = (
    # No client-side retries: a timeout must reach the handler, as an ambiguous outcome.
    redis.Redis.from_url(
        _SIDE_EFFECT_URL, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    if _SIDE_EFFECT_URL
    else None
)


def record(entry: Entry, outcome: str, started: int) -> None:
    """Append one call to this process's record file (one write(2))."""
    # The outcome last: tests count successes as lines ending in " ok".
    line = f"{entry.fields.get('n', '-')} {entry.id} {entry.deliveries} {started} {outcome}\n"
    os.write(_FD, line.encode())


def handle(entry: Entry) -> None:
    """Record the call, then succeed or fail as the entry's ``behaviour`` says."""
    started = time.monotonic_ns()
    if _DELAY:
        time.sleep(_DELAY)
    behaviour = entry.fields.get("behaviour", "ok")
    if behaviour.startswith("hold:"):
        record(entry, "hold", started)
        time.sleep(float(behaviour.split(":", 1)[1]))
    if behaviour == "permanent":
        record(entry, "permanent", started)
        raise PermanentError("this entry is poison by design (chaos suite)")
    if behaviour == "fail" or (
        behaviour.startswith("flaky:") and entry.deliveries <= int(behaviour.split(":", 1)[1])
    ):
        record(entry, "fail", started)
        raise RuntimeError(f"designed failure at delivery {entry.deliveries}")
    if _side_effects is not None:
        try:
            _side_effects.sadd(_SIDE_EFFECT_KEY, entry.fields.get("n", entry.id))
        except redis.RedisError as exc:
            # Ambiguous: the SADD may have happened. The entry must not be acked on it: raise.
            record(entry, "timeout", started)
            raise RuntimeError(f"side effect unconfirmed: {exc}") from exc
    record(entry, "ok", started)
