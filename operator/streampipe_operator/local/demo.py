"""The built-in producer of ``streampipe up --demo``: a burst, then a trickle, with a few poison events.

It sends the quickstart's ``order.placed`` events (examples/quickstart) through the worker's
``AsyncProducer``, so that within a minute a person sees the fulfilment group scale up on the
burst, drain it, scale down during the trickle, retry a flaky gateway and dead-letter what can never
succeed. The schedule for a run of ``duration`` seconds:

- at once: a burst of :data:`BURST` orders (one pipelined round trip per 1000);
- then :data:`TRICKLE_RATE` orders a second until the end;
- when the run is long enough (``duration >= 40s``), a second burst half-way.

Orders are numbered from 1 across the run; the order number alone decides what an order is, so the
outcome of a run is known in advance (:class:`DemoCounts`):

- ``order_id % 25 == 0``: the quickstart handler's gateway times out on the first delivery (retried once);
- ``order_id % 500 == 123``: an amount above the card limit (dead-lettered at once);
- ``order_id % 500 == 321``: the "cursed-widget" item (fails every delivery, dead-lettered after
  maxDeliveries);
- ``order_id % 500 == 456``: a payload that is not an order (``"order_id": "abc"``: dead-lettered at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import AsyncProducer, Event

BURST = 1500
TRICKLE_RATE = 15.0
SECOND_BURST_AFTER = 40.0
EVENT_TYPE = "order.placed"
FLAKY_EVERY = 25
CARD_LIMIT = 10_000.0
CURSED_ITEM = "cursed-widget"
ITEMS = ("teapot", "kettle", "mug", "spoon", "tea-towel", "saucer")
CUSTOMERS = ("ada", "grace", "linus", "barbara", "ken", "margaret", "edsger")

OrderKind = Literal["ok", "flaky", "too_expensive", "cursed", "invalid"]


def order_kind(order_id: int) -> OrderKind:
    """What the quickstart handler will do with this order (see the module docstring)."""
    rest = order_id % 500
    if rest == 123:
        return "too_expensive"
    if rest == 321:
        return "cursed"
    if rest == 456:
        return "invalid"
    if order_id % FLAKY_EVERY == 0:
        return "flaky"
    return "ok"


def order_event(order_id: int) -> Event:
    """The ``order.placed`` event for ``order_id``; deliberately broken for the poison kinds."""
    kind = order_kind(order_id)
    if kind == "invalid":
        return Event(type=EVENT_TYPE, payload={"order_id": "abc", "note": "a producer bug: not an order"})
    amount = round(5 + (order_id * 7.31) % 120, 2)
    item = ITEMS[order_id % len(ITEMS)]
    if kind == "too_expensive":
        amount = CARD_LIMIT * 5
    elif kind == "cursed":
        item = CURSED_ITEM
    payload = {
        "order_id": order_id,
        "customer": CUSTOMERS[order_id % len(CUSTOMERS)],
        "item": item,
        "amount": amount,
    }
    return Event(type=EVENT_TYPE, payload=payload)


class DemoCounts(BaseModel):
    """What the demo producer sent, by what the quickstart handler will do with it."""

    sent: int = 0
    ok: int = Field(default=0, description="Processed on the first delivery")
    flaky: int = Field(default=0, description="Fail once (gateway timeout), then processed")
    too_expensive: int = Field(default=0, description="PermanentError: dead-lettered at once")
    cursed: int = Field(default=0, description="Fail every delivery: dead-lettered after maxDeliveries")
    invalid: int = Field(default=0, description="Not an OrderPlaced: dead-lettered at once")

    @property
    def poison(self) -> int:
        """Orders the fulfilment group will dead-letter."""
        return self.too_expensive + self.cursed + self.invalid

    def add(self, order_id: int) -> None:
        kind = order_kind(order_id)
        self.sent += 1
        setattr(self, kind, getattr(self, kind) + 1)


class DemoProducer:
    """Runs the schedule against a ``redis.asyncio`` client until its duration ends or it is stopped."""

    def __init__(
        self,
        client: Any,
        stream: str | PartitionLayout,
        *,
        duration: float | None,
        burst: int = BURST,
        trickle_rate: float = TRICKLE_RATE,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(stream, PartitionLayout):
            # The demo's orders carry their customer in the payload, not in a field of their own:
            # they are spread evenly over the partitions.
            stream = PartitionLayout(stream.base, stream.count)
        self.producer = AsyncProducer(client, stream)
        self.duration = duration
        self.burst = burst
        self.trickle_rate = trickle_rate
        self.counts = DemoCounts()
        self.phase = "waiting"
        self._on_phase = on_phase
        self._next_order = 1
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        if self._on_phase is not None:
            self._on_phase(phase)

    async def _send(self, count: int) -> None:
        ids = range(self._next_order, self._next_order + count)
        await self.producer.send_many(order_event(order_id) for order_id in ids)
        for order_id in ids:
            self.counts.add(order_id)
        self._next_order += count

    async def run(self) -> DemoCounts:
        """Burst, trickle (and a second burst on long runs); returns what was sent."""
        started = time.monotonic()
        second_burst_at = (
            self.duration / 2 if self.duration is not None and self.duration >= SECOND_BURST_AFTER else None
        )
        self._set_phase(f"burst of {self.burst} orders")
        await self._send(self.burst)
        self._set_phase(f"trickle of {self.trickle_rate:g} orders/s")
        interval = 1.0 / self.trickle_rate
        next_at = time.monotonic()
        while not self._stopped.is_set():
            elapsed = time.monotonic() - started
            if self.duration is not None and elapsed >= self.duration:
                break
            if second_burst_at is not None and elapsed >= second_burst_at:
                second_burst_at = None
                self._set_phase(f"second burst of {self.burst} orders")
                await self._send(self.burst)
                self._set_phase(f"trickle of {self.trickle_rate:g} orders/s")
                next_at = time.monotonic()
            # Catch up in one pipelined call if the loop fell behind (a busy machine).
            due = max(1, int((time.monotonic() - next_at) / interval) + 1)
            await self._send(due)
            next_at += due * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=max(0.0, next_at - time.monotonic()))
        self._set_phase("done")
        return self.counts
