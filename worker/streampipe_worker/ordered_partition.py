"""One partition of a per-key ordering worker (``ordering: PerKey``), worked under its lease.

:class:`OrderedPartition` runs while this process holds the partition's lease
(:mod:`streampipe_worker.ownership`). It first takes over what is pending (its own earlier entries,
then, through the fenced reclaim, what earlier owners left), then reads new entries with fenced,
non-blocking reads. Between reads it waits on a doorbell: a plain ``XREAD BLOCK`` on the partition's
stream from the last id it has seen, on a connection of its own (one per partition, so it works on a
cluster, where one XREAD over keys of different slots fails with CROSSSLOT). The doorbell reads
nothing for the group; it only says when to read again.

Entries wait in memory per key (:class:`KeyQueues`), in id order. The handler runs with concurrency
one, over batches of at most one entry per key: the head of each key that may run. A failing head is
retried after the :class:`~streampipe_worker.retry.RetryPolicy` backoff while the rest of its key
waits behind it, unacked; other keys go on. After the last delivery (or at once for a
``PermanentError``, such as an event the Router cannot decode) it moves to the partition's
dead-letter stream through a fenced script, and its key's next entry runs.

After the layout grew (:mod:`streampipe_worker.epochs`), a key that moved here waits, head and
successors, until its old partition is settled up to the switch's cutoff for the group; the other keys
go on.

A hand-over (:meth:`OrderedPartition.close`: a pod joined, or a stop) ends the running handler call,
acks, and then hands the entries still waiting back with the attempts they really had, so the next
owner's claim does not count a delivery that never ran.

Every read, ack and dead-letter move is fenced. On a lost lease the partition stops at once: its
in-memory entries are dropped unacked (they stay pending, and the next owner reclaims them in id
order), and a handler call already running finishes but is not acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from streampipe_worker.deadletter import DeadLetter, DeadLetterEnvelope
from streampipe_worker.entry_ids import order_key
from streampipe_worker.epochs import LayoutEpochs
from streampipe_worker.handler_runner import HandlerRunner
from streampipe_worker.metrics import OwnershipMetrics, Stats, WorkerMetrics
from streampipe_worker.ownership import (
    MAX_PAGE,
    LeaseFencedError,
    PartitionEntry,
    PartitionLease,
    PartitionLeases,
)
from streampipe_worker.retry import RetryPolicy, drop_exhausted
from streampipe_worker.router import Entry, LoadedHandler, PermanentError

log = logging.getLogger("streampipe.worker")

ACK_DELAY = 0.05  # seconds an ack may wait for others to share its round trip
BUFFER_BATCHES = 10  # entries held in memory per partition: this many batches (at least MAX_PAGE)
_first = itemgetter(0)


@dataclass
class KeyLine:
    """One key's entries of a partition, in id order; the head may run from ``ready_at`` on."""

    entries: deque[Entry] = field(default_factory=deque)
    ready_at: float = 0.0


class KeyQueues:
    """A partition's entries read and not yet settled, per key (the ``key_field`` value; every entry
    has the same key without one). Only a key's head may run, so a key's entries run in id order."""

    def __init__(self, key_field: str | None) -> None:
        self.key_field = key_field
        self._lines: dict[str, KeyLine] = {}
        self._order: dict[str, tuple[int, int]] = {}  # every entry held: its id's sort key

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._order

    def key_of(self, entry: Entry) -> str:
        return entry.fields.get(self.key_field, "") if self.key_field else ""

    def add(self, entry: Entry, order: tuple[int, int] | None = None) -> None:
        """Append ``entry`` behind its key's entries (the caller adds them in id order; ``order`` is
        its id's :func:`order_key` if the caller has it already)."""
        self._lines.setdefault(self.key_of(entry), KeyLine()).entries.append(entry)
        self._order[entry.id] = order if order is not None else order_key(entry.id)

    def ready(self, now: float, limit: int, held: Callable[[str], bool] | None = None) -> list[Entry]:
        """Up to ``limit`` heads whose wait is over, in id order; ``held(key)`` True keeps a key's head
        back (its older entries are still in another partition: :mod:`streampipe_worker.epochs`)."""
        heads = [
            line.entries[0]
            for key, line in self._lines.items()
            if line.ready_at <= now and (held is None or not held(key))
        ]
        order = self._order
        heads.sort(key=lambda entry: order[entry.id])
        return heads[:limit]

    def next_ready_at(self) -> float | None:
        """When the earliest waiting head may run again (None: no head waits)."""
        return min((line.ready_at for line in self._lines.values()), default=None)

    def settle(self, entry: Entry) -> None:
        """``entry`` (its key's head) is done: acked or dead-lettered."""
        key = self.key_of(entry)
        line = self._lines[key]
        line.entries.popleft()
        self._order.pop(entry.id, None)
        if line.entries:
            line.ready_at = 0.0
        else:
            del self._lines[key]

    def postpone(self, entry: Entry, until: float) -> None:
        """Hold ``entry``'s key (the entry stays its head) until ``until``."""
        self._lines[self.key_of(entry)].ready_at = until

    def entries(self) -> Iterator[Entry]:
        """Every entry held, key by key."""
        for line in self._lines.values():
            yield from line.entries

    def clear(self) -> None:
        self._lines.clear()
        self._order.clear()


class LeasedRunner(HandlerRunner):
    """A handler runner that starts no further entry once its partition's lease has run out locally:
    checked before each entry, also on the handler thread, so a worker that was paused (a stall, a
    stopped process) does not go on with a batch whose partition may have a new owner by now."""

    def __init__(self, handler: LoadedHandler, lease: PartitionLease) -> None:
        self.lease = lease
        self._stopped = False
        super().__init__(handler, 1)

    @property
    def stop_now(self) -> bool:
        return self._stopped or not self.lease.valid()

    @stop_now.setter
    def stop_now(self, value: bool) -> None:
        self._stopped = value


@dataclass(frozen=True)
class PartitionParts:
    """What every partition of one ordered worker shares."""

    leases: PartitionLeases
    handler: LoadedHandler
    policy: RetryPolicy
    key_field: str | None
    batch_size: int
    block: float  # the doorbell's longest wait, seconds
    ownership: OwnershipMetrics
    stats: Stats
    epochs: LayoutEpochs | None  # None: no key field, so no key moves when the layout grows


class OrderedPartition:
    """Works one partition under ``lease`` until :meth:`close` (a hand-over or a stop) or until the
    lease is lost; ``await run()``."""

    def __init__(self, parts: PartitionParts, lease: PartitionLease, metrics: WorkerMetrics) -> None:
        self.parts = parts
        self.lease = lease
        self.metrics = metrics
        self.leases = parts.leases
        self.client: Any = parts.leases.client
        self.stream = parts.leases.layout.stream(lease.partition)
        self.queues = KeyQueues(parts.key_field)
        self.runner = LeasedRunner(parts.handler, lease)
        self.buffer_limit = max(parts.batch_size * BUFFER_BATCHES, MAX_PAGE)
        self.in_flight = 0
        self.lost = False
        self._closing = False
        self._acks: list[str] = []
        self._acks_since = 0.0
        self._own_pending_done = False
        self._cursor = "0-0"  # the doorbell rings for entries after this id
        self._wake = asyncio.Event()

    # --- control, from the owner loop -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """:meth:`close` or :meth:`lose` was called: the partition is being given up."""
        return self._closing

    def close(self) -> None:
        """Stop reading and starting entries; the running batch ends after its current call, what
        succeeded is acked, and :meth:`run` returns (the lease is then released by the caller)."""
        self._closing = True
        self.runner.stop()
        self._wake.set()

    def lose(self, reason: str) -> None:
        """The lease is gone: stop touching the partition now, and ack nothing more."""
        if self.lost:
            return
        self.lost = True
        self.lease.end()
        self.parts.ownership.leases_lost.inc()
        dropped = len(self.queues) + len(self._acks)
        self.queues.clear()
        self._acks.clear()
        log.warning(
            "partition %s: lease %s lost (%s); %d entries read here stay pending for the next owner",
            self.stream,
            self.lease.value,
            reason,
            dropped,
        )
        self.close()

    # --- the loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._take_over()
            while not self._closing:
                await self._fill()
                epochs = self.parts.epochs
                if epochs is not None:
                    await epochs.poll()
                held = self._held if epochs is not None and epochs.switching else None
                batch = self.queues.ready(time.monotonic(), self.parts.batch_size, held)
                if batch:
                    await self._handle(batch)
                    if self._acks_due():
                        await self.flush()
                    continue
                await self.flush()
                await self._wait()
            await self.flush()
            await self._hand_back()
        except LeaseFencedError as exc:
            self.lose(str(exc))
        finally:
            self.runner.close()
            self.queues.clear()
            self.metrics.in_flight.set(0)

    async def flush(self) -> None:
        """Ack (fenced, one multi-id call) what was handled; nothing after the lease is lost."""
        if not self._acks or self.lost:
            return
        ids, self._acks = self._acks, []
        await self.leases.ack(self.lease, ids)

    async def _hand_back(self) -> None:
        """Closing (a hand-over or a stop), with no handler call running: the entries still waiting
        here go back with the deliveries they really had (an entry's ``deliveries`` is the number of
        its next attempt), so the next owner's claim counts one delivery, not two."""
        if self.lost or not len(self.queues):
            return
        attempts: dict[int, list[str]] = {}
        for entry in self.queues.entries():
            attempts.setdefault(entry.deliveries - 1, []).append(entry.id)
        await self.leases.hand_back(self.lease, attempts)
        self.queues.clear()

    def _acks_due(self) -> bool:
        return len(self._acks) >= self.parts.batch_size or (
            bool(self._acks) and time.monotonic() - self._acks_since >= ACK_DELAY
        )

    def _ack_later(self, entry_id: str) -> None:
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.append(entry_id)

    async def _take_over(self) -> None:
        """This consumer's own pending entries (an earlier run under the same name), then what earlier
        owners left (claimed, fenced), all in id order, before any new entry."""
        own = await self.leases.read(self.lease, count=MAX_PAGE, pending=True)
        self._own_pending_done = len(own) < MAX_PAGE
        claimed: list[PartitionEntry] = []
        start: str | None = None
        while True:
            page = await self.leases.reclaim(self.lease, count=MAX_PAGE, start=start)
            claimed += page.entries
            if page.next_start is None:
                break
            start = page.next_start
        self.metrics.reclaimed.inc(len(claimed))
        self.parts.stats.reclaimed += len(claimed)
        self._ingest([*own, *claimed], await self._deliveries())
        self._cursor = await self._last_delivered()
        if self.parts.epochs is not None:
            await self.parts.epochs.refresh()

    async def _deliveries(self) -> dict[str, int]:
        """The PEL's delivery count of each entry this consumer holds (the reads above counted)."""
        counts: dict[str, int] = {}
        low = "-"
        while True:
            rows = await self.client.xpending_range(
                self.stream, self.leases.group, low, "+", MAX_PAGE, consumername=self.lease.consumer
            )
            counts.update({str(row["message_id"]): int(row["times_delivered"]) for row in rows})
            if len(rows) < MAX_PAGE:
                return counts
            low = "(" + str(rows[-1]["message_id"])

    async def _last_delivered(self) -> str:
        for group in await self.client.xinfo_groups(self.stream):
            if group["name"] == self.leases.group:
                return str(group["last-delivered-id"])
        return "0-0"

    def _ingest(self, entries: Iterable[PartitionEntry], deliveries: dict[str, int]) -> None:
        for order, item in sorted(((order_key(entry.id), entry) for entry in entries), key=_first):
            if item.id in self.queues or item.id in self._acks:
                continue
            if item.fields is None:  # deleted (trimmed) while pending: nothing to run
                self.metrics.trimmed.inc()
                self.parts.stats.trimmed += 1
                self._ack_later(item.id)
                continue
            entry = Entry(item.id, item.fields, deliveries.get(item.id, 1), self.stream, self.leases.group)
            self.queues.add(entry, order)

    async def _fill(self) -> None:
        """Read more while there is room: own pending pages first (rare: over MAX_PAGE of them), then
        new entries."""
        room = self.buffer_limit - len(self.queues)
        if room <= 0:
            return
        if not self._own_pending_done:
            if len(self.queues):
                return  # the next page waits until this one is settled
            await self.flush()
            own = await self.leases.read(self.lease, count=MAX_PAGE, pending=True)
            self._own_pending_done = len(own) < MAX_PAGE
            self._ingest(own, await self._deliveries())
            return
        read = await self.leases.read(self.lease, count=min(room, MAX_PAGE))
        if read:
            self._cursor = read[-1].id
            self._ingest(read, {})
            if self.parts.epochs is not None:
                # After the read: a producer writes with a grown count only once the switch is
                # recorded, so a record read now knows every switch these entries may be behind.
                await self.parts.epochs.refresh()

    def _held(self, key: str) -> bool:
        epochs = self.parts.epochs
        return epochs is not None and epochs.held(key, self.lease.partition)

    async def _handle(self, batch: list[Entry]) -> None:
        dead: list[DeadLetter] = []
        runnable = drop_exhausted(batch, None, self.parts.policy.max_deliveries, dead).entries
        for item in dead:
            await self._dead_letter(item)
        if not runnable:
            return
        if not self.lease.valid():
            raise LeaseFencedError(self.lease, "its local deadline has passed")
        self.in_flight = len(runnable)
        self.metrics.in_flight.set(len(runnable))
        try:
            result = await self.runner.run(runnable)
        finally:
            self.in_flight = 0
            self.metrics.in_flight.set(0)
        if self.lost:
            return  # ran after the lease went: the next owner runs these again
        self.metrics.batch_size.observe(len(runnable))
        self.metrics.handler_duration.observe_many(result.durations)
        failures = dict(result.failures)
        now = time.monotonic()
        processed = 0
        for position, entry in enumerate(runnable[: result.started]):
            error = failures.get(position)
            if error is None:
                self.queues.settle(entry)
                self._ack_later(entry.id)
                processed += 1
            else:
                await self._failed(entry, error, now)
        self.metrics.processed.inc(processed)
        self.parts.stats.processed += processed

    async def _failed(self, entry: Entry, error: BaseException, now: float) -> None:
        self.metrics.failed.inc()
        self.parts.stats.failed += 1
        policy = self.parts.policy
        if isinstance(error, PermanentError) or policy.exhausted(entry.deliveries):
            await self._dead_letter(DeadLetter(entry, error, rejected=isinstance(error, PermanentError)))
            return
        self.queues.postpone(entry, now + policy.backoff(entry.deliveries))
        entry.deliveries += 1
        self.metrics.retried.inc()

    async def _dead_letter(self, dead: DeadLetter) -> None:
        entry, error, rejected = dead
        envelope = DeadLetterEnvelope.for_failure(
            entry_id=entry.id,
            fields=entry.fields,
            stream=self.stream,
            group=self.leases.group,
            consumer=self.lease.consumer,
            deliveries=entry.deliveries,
            error=error,
        )
        moved = await self.leases.dead_letter(self.lease, entry.id, envelope.to_fields())
        self.queues.settle(entry)
        if not moved:
            return  # not pending any more: an earlier move landed and its reply was lost
        (self.metrics.dead_rejected if rejected else self.metrics.dead_max_deliveries).inc()
        self.parts.stats.dead_lettered += 1
        log.warning(
            "entry %s moved to %s after %d deliveries: %s",
            entry.id,
            self.leases.layout.dead_letter(self.lease.partition),
            entry.deliveries,
            envelope.error,
        )

    async def _wait(self) -> None:
        """Until the doorbell rings, a waiting key's head may run, :meth:`close`, or ``block``."""
        timeout = self.parts.block
        if self.parts.epochs is not None and self.parts.epochs.holding:
            timeout = min(timeout, self.parts.epochs.poll_interval)
        ready_at = self.queues.next_ready_at()
        if ready_at is not None:
            timeout = min(timeout, max(ready_at - time.monotonic(), 0.001))
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if self._own_pending_done and len(self.queues) < self.buffer_limit:
            block_ms = max(int(timeout * 1000), 1)
            waits.append(
                asyncio.ensure_future(self.client.xread({self.stream: self._cursor}, count=1, block=block_ms))
            )
        # With the doorbell, leave it time to answer its BLOCK itself: cancelling a command in flight
        # costs its connection.
        slack = 1.0 if len(waits) > 1 else 0.0
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout + slack, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        self._wake.clear()
        for finished in done:
            if not finished.cancelled() and finished.exception() is not None:
                raise finished.exception()  # type: ignore[misc]
