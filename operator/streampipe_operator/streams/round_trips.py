"""Commands of concurrent callers on one client, sent to the server in one pipelined round trip.

The operator observes every pipeline every ``pollInterval``; with 1,000 pipelines on one server that
is hundreds of small pipelines a second, and on a virtual machine each one's send (a loopback write
that wakes the server) cost more CPU than everything the operator did with the replies. Callers that
ask in the same turn of the event loop now share one pipeline: :meth:`RoundTrips.execute` queues the
caller's commands on the pending pipeline and the pipeline is sent once the loop has run every
callback that was ready, so passes woken by the same tick of the clock share one write and one read.

Each caller gets exactly its own replies, an error reply in place of the command that failed (as
``execute(raise_on_error=False)`` gives them); a failure of the whole round trip (the connection
dropped, a timeout) is raised to every caller that shared it. A cluster client is not shared: there a
round trip spans several nodes, and one node's failure must not fail pipelines on the others.

One :class:`RoundTrips` per client, found with :func:`round_trips` (kept as long as the client is).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from streampipe_worker.connection import AsyncClient

# A caller's commands: a function that queues them on a pipeline with redis-py's command methods,
# so that their reply callbacks (XINFO's parsing, for example) apply as they would on their own.
Queue = Callable[[Any], object]


class RoundTrips:
    """The pending pipeline of one client and the callers waiting for its replies."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.shared = not hasattr(client, "get_default_node")  # see the module docstring on clusters
        self._pipe: Any = None
        self._waiting: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.sent = 0  # round trips sent (what the sharing saves is callers served / sent)
        self.served = 0

    async def execute(self, queue: Queue) -> list[Any]:
        """Queue commands with ``queue(pipeline)``; their replies once the shared round trip is back."""
        self.served += 1
        if not self.shared:
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            self.sent += 1
            return list(await pipe.execute(raise_on_error=False))
        if self._pipe is None:
            self._pipe = self.client.pipeline(transaction=False)
            # Sent on the loop's next turn: every caller made ready by this one joins it first.
            task = asyncio.get_running_loop().create_task(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        start = len(self._pipe)
        queue(self._pipe)
        replies: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((start, len(self._pipe), replies))
        return await replies

    async def _send(self) -> None:
        pipe, waiting = self._pipe, self._waiting
        self._pipe, self._waiting = None, []
        self.sent += 1
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except BaseException as exc:
            for _, _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for start, end, future in waiting:
            if not future.done():  # a caller cancelled meanwhile
                future.set_result(replies[start:end])


_round_trips: weakref.WeakKeyDictionary[Any, RoundTrips] = weakref.WeakKeyDictionary()


def round_trips(client: AsyncClient) -> RoundTrips:
    """The :class:`RoundTrips` of ``client``, shared by everything that uses that client object."""
    found = _round_trips.get(client)
    if found is None:
        found = _round_trips[client] = RoundTrips(client)
    return found
