"""Test hook: make a worker die at a named point of the delivery protocol, as a SIGKILL there would.

Off unless ``STREAMPIPE_TEST_CRASH_AT`` names a point. It exists for the fault suite
(``tests/chaos/test_crash_points.py``), which sets it on one worker process to prove what a crash at
exactly that point costs: which entries come back, how often, and that the dead-letter move is never
half done. It is not a setting (the operator never renders it); a Consumer reads it once, when it is
made, and the process exits with code 137 (what a SIGKILL reports) the first time it reaches the point.

- ``before-handler``: a batch was read (pending under this consumer), no handler call started;
- ``after-handler-before-ack``: the handler ran over the whole batch, its XACK was not sent;
- ``inside-dlq-move``: MULTI and the move's queued XADD/XACK reached the server, EXEC never did.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

ENV = "STREAMPIPE_TEST_CRASH_AT"
POINTS = ("before-handler", "after-handler-before-ack", "inside-dlq-move")
EXIT_CODE = 137


def armed_point(environ: Mapping[str, str] | None = None) -> str | None:
    """The point named by ``STREAMPIPE_TEST_CRASH_AT``; None when unset; ValueError when unknown."""
    value = (os.environ if environ is None else environ).get(ENV) or None
    if value is not None and value not in POINTS:
        raise ValueError(f"{ENV}={value!r} is not a crash point; use one of {', '.join(POINTS)}")
    return value


def crash(point: str) -> NoReturn:
    """Exit at once: no finally blocks, no flushed acks, no hand-back (the kernel closes the sockets)."""
    sys.stderr.write(f"streampipe-worker: test hook {ENV}: crashing at {point}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


async def crash_inside_transaction(client: Any, transaction: Any) -> NoReturn:
    """Send MULTI and the transaction's queued commands (not EXEC), wait for QUEUED, then crash.

    The server then holds an open transaction for a connection that is about to close: it must discard
    it. Standalone and Sentinel clients only (a cluster pipeline cannot send a bare MULTI).
    """
    queued = client.pipeline(transaction=False)
    queued.execute_command("MULTI")
    for args, _ in transaction.command_stack:
        queued.execute_command(*args)
    replies = await queued.execute()
    if replies[0] != "OK" or any(reply != "QUEUED" for reply in replies[1:]):
        raise RuntimeError(f"test hook: the server did not queue the dead-letter move: {replies!r}")
    crash("inside-dlq-move")
