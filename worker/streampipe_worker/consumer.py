"""The consumer loop: batched, crash-safe, at-least-once.

Three tasks share one ``redis.asyncio`` client:

- the reader: ``XACK`` (the previous batch's successes, one multi-id command) and the next
  ``XREADGROUP COUNT n BLOCK t`` in one write on its own connection (``read_channel.py``: replies
  parsed by hiredis straight from the event loop, no redis.asyncio layers per read); one round trip
  per batch, none per entry;
- the reclaimer: ``XAUTOCLAIM`` at claimIdle takes due retries and a crashed peer's entries, and
  counts entries that were trimmed before anyone processed them;
- the leaser: re-claims held entries (``XCLAIM ... JUSTID``) every claimIdle/4 so a slow handler
  keeps them, and releases long-backoff entries once their remaining wait fits into claimIdle.

A failed entry is handed back with ``XCLAIM ... IDLE (claimIdle - backoff) JUSTID``: Redis itself
holds the retry time (see ``retry.py``). The PEL delivery count is the attempt counter.

:class:`Consumer` wires the parts together: the ack buffer (``acks.py``), the handler runner
(``handler_runner.py``), the lease bookkeeping (``leases.py``), the dead-letter mover
(``deadletter.py``), the connection state (``connection_state.py``) and the counts (``Stats``).
With ``DEDUPE_TTL`` the ack buffer also skips entries whose processed marker exists. The group is the
operator's to create; with ``CREATE_GROUP`` the worker creates it itself (``groups.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any, NamedTuple

from streampipe_worker import crash_points
from streampipe_worker.acks import AckBuffer
from streampipe_worker.batch_reader import BatchReader
from streampipe_worker.connection import AsyncClient, ConnectionSettings, create_async_client
from streampipe_worker.connection_state import ConnectionState
from streampipe_worker.deadletter import DeadLetter, DeadLetterMover
from streampipe_worker.durations import format_duration
from streampipe_worker.groups import GroupKeeper
from streampipe_worker.handler_runner import BatchResult, HandlerRunner
from streampipe_worker.leases import Leases
from streampipe_worker.metrics import Health, Stats, WorkerMetrics
from streampipe_worker.pending import PendingEntries
from streampipe_worker.redis_errors import RedisErrorKind, classify, retry_while_transient
from streampipe_worker.retry import RetryPolicy, drop_exhausted, sort_failures
from streampipe_worker.router import Entry, LoadedHandler
from streampipe_worker.settings import WorkerSettings

log = logging.getLogger("streampipe.worker")


class ReclaimedEntry(NamedTuple):
    """An entry XAUTOCLAIM gave this consumer."""

    id: str
    fields: dict[str, str] | None  # None: XAUTOCLAIM found the entry deleted (Redis 6.2)
    deliveries: int  # from the PEL: XAUTOCLAIM does not say


def _raise_if_a_cancellation_was_lost() -> None:
    """Raise the cancellation a redis-py call swallowed. On Python 3.11, ``asyncio.wait_for`` (which
    redis-py sends commands with) returns normally when a cancel lands just as the send completes
    (CPython gh-86296); the request is still counted on the task, so it can be honoured here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Consumer:
    """One consumer in one group: ``await Consumer(settings, handler).run()`` until ``request_stop()``."""

    def __init__(
        self,
        settings: WorkerSettings,
        handler: LoadedHandler,
        *,
        client: AsyncClient | None = None,
        metrics: WorkerMetrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.stream = settings.stream
        self.group = settings.group
        self.name = settings.consumer
        self.policy = RetryPolicy(
            max_deliveries=settings.max_deliveries,
            backoff_initial=settings.backoff_initial,
            backoff_multiplier=settings.backoff_multiplier,
            backoff_max=settings.backoff_max,
            claim_idle=settings.claim_idle,
        )
        self.dedupe_ms = int(settings.dedupe_ttl.total_seconds() * 1000) if settings.dedupe_ttl else None
        self.client: Any = client or create_async_client(ConnectionSettings.from_worker(settings))
        self._owns_client = client is None
        self.metrics = metrics or WorkerMetrics(self.stream, self.group)
        self.health = health or Health()
        self.stats = Stats()
        self.abandoned = 0  # how many entries were in flight when the grace period ended

        self._stopping = asyncio.Event()
        self._crash_at = crash_points.armed_point()  # a test hook, off unless the fault suite sets it
        self.runner = HandlerRunner(handler, settings.concurrency)
        self.acks = AckBuffer(self.client, self.stream, self.group, self.dedupe_ms)
        pel = PendingEntries(self.client, self.stream, self.group, self.name)
        self.leases = Leases(pel, self.policy, self.acks, self.stats, self.metrics)
        self.dead_letters = DeadLetterMover(
            pel, settings.dead_letter, self.metrics, self._stopping.is_set, self._crash_at
        )
        self.connection = ConnectionState(
            self.client, self.health, self.metrics, self._pause, self._stopping.is_set
        )
        self.group_keeper = GroupKeeper(
            self.client, settings, self.health, self._pause, self.connection.retry_delay
        )
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self.batches = BatchReader(self.client, settings, self.acks)

    # --- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading, let running handlers finish (SIGTERM). Safe to call more than once."""
        if self._stopping.is_set():
            return
        grace = format_duration(self.settings.shutdown_grace)
        log.info("stop requested: finishing in-flight entries (grace %s)", grace)
        self.runner.stop()
        self._stopping.set()
        if self._reader is not None and self._reading:
            # Only a blocked XREADGROUP is interrupted; a batch being handled runs to its end.
            self._reader.cancel()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    async def run(self) -> None:
        """Consume until ``request_stop()``; then settle, hand back what is left, and return."""
        await self.group_keeper.ensure()  # only with STREAMPIPE_CREATE_GROUP
        await self.leases.hand_back_previous_run()
        _raise_if_a_cancellation_was_lost()
        self._reader = asyncio.create_task(self._read_loop(), name="reader")
        helpers = [
            asyncio.create_task(self._reclaim_loop(), name="reclaimer"),
            asyncio.create_task(self._lease_loop(), name="leaser"),
            asyncio.create_task(self._beat_loop(), name="beat"),
        ]
        workers = [self._reader, helpers[0]]
        try:
            done, _ = await asyncio.wait(
                [*workers, asyncio.create_task(self._stopping.wait())], return_when="FIRST_COMPLETED"
            )
            for task in done:
                if task in workers and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await self._shutdown(workers, helpers)
        finally:
            # The loops also stop on _stopping, and no new entry is started: a cancellation can be lost
            # (on Python 3.11, asyncio.wait_for, which redis-py sends with, swallows a cancel that lands
            # just as the send completes), and the gather below must not wait for a loop that goes on.
            self.runner.stop()
            self._stopping.set()
            for task in [*workers, *helpers]:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            self.runner.close()
            with contextlib.suppress(Exception):
                await self.batches.close()
            if self._owns_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()

    async def _shutdown(self, workers: list[asyncio.Task[None]], helpers: list[asyncio.Task[None]]) -> None:
        grace = self.settings.shutdown_grace.total_seconds()
        deadline = time.monotonic() + grace
        self.health.set_ready(False, "shutting down")
        _, pending = await asyncio.wait(workers, timeout=grace)
        if pending:
            # Taken now: cancelling the batches below removes them from the leases.
            self.abandoned = self.leases.abandon_in_flight()
            log.warning(
                "grace period of %ss over: %d in-flight entries are handed back unfinished",
                grace,
                self.abandoned,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        # Settling must not be skipped because handlers used the whole grace period.
        settle_until = max(deadline, time.monotonic() + 5.0)
        await self._settle_acks(settle_until)
        await self.leases.hand_back_all(settle_until)
        log.info(
            "stopped: processed=%d failed=%d dead_lettered=%d reclaimed=%d handed_back=%d",
            self.stats.processed,
            self.stats.failed,
            self.stats.dead_lettered,
            self.stats.reclaimed,
            self.stats.handed_back,
        )

    async def _settle_acks(self, until: float) -> None:
        """At shutdown: keep trying until the acks land or time is up, then say what is lost."""
        if not self.acks.ids:
            return
        error = await retry_while_transient(
            self.acks.flush, delay=lambda attempts: 0.2, give_up=lambda attempts: time.monotonic() >= until
        )
        if error is not None:
            log.error(
                "could not ack %d processed entries before exit (%s); they stay pending and "
                "will be processed again by a peer",
                len(self.acks),
                error,
            )

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reading = True
                try:
                    batch = await self.batches.read()
                finally:
                    self._reading = False
                self.connection.connected()
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    return
                raise
            except Exception as exc:
                kind = classify(exc)
                if kind is RedisErrorKind.TRANSIENT:
                    await self.connection.lost("read", exc)
                elif kind is RedisErrorKind.GROUP_MISSING:
                    await self.group_keeper.missing()
                else:
                    raise
                continue
            if batch:
                self.leases.note_seen(batch[-1].id)  # XREADGROUP replies in id order
                await self._handle_entries(batch, reclaimed=False)

    # --- handling -----------------------------------------------------------------------------

    async def _handle_entries(self, entries: list[Entry], *, reclaimed: bool) -> None:
        leases = self.leases
        if leases.in_flight:
            entries = leases.not_in_flight(entries)
            if not entries:
                return
        token = leases.start(entries)
        count = len(entries)
        self.metrics.in_flight.inc(count)
        self.metrics.batch_size.observe(count)
        try:
            await self._settle(entries, reclaimed=reclaimed)
        finally:
            leases.finish(token)
            self.metrics.in_flight.dec(count)

    async def _settle(self, entries: list[Entry], *, reclaimed: bool) -> None:
        markers: list[str] | None = None
        dead: list[DeadLetter] = []
        if self.dedupe_ms is not None:
            entries, markers, repeated = await self.acks.skip_duplicates(entries)
            if repeated:
                self.stats.deduplicated += repeated
                self.metrics.deduplicated.inc(repeated)
        if reclaimed:
            entries, markers = drop_exhausted(entries, markers, self.policy.max_deliveries, dead)
        if entries and self._crash_at == "before-handler":
            crash_points.crash(self._crash_at)
        result = await self.runner.run(entries) if entries else BatchResult()
        if entries and self._crash_at == "after-handler-before-ack":
            crash_points.crash(self._crash_at)
        self._record_successes(entries, markers, result)
        if result.durations:
            self.metrics.handler_duration.observe_many(result.durations)
        if result.started < len(entries):
            self.leases.unstarted.extend(entries[result.started :])
        if result.failures:
            self.leases.released.update(entries[failure.position].id for failure in result.failures)
            retry = self._sort_failures(entries, result, dead)
            if retry:
                await self.leases.schedule_retries(retry)
        if dead:
            self.stats.dead_lettered += await self.dead_letters.move(dead)

    def _record_successes(self, entries: list[Entry], markers: list[str] | None, result: BatchResult) -> None:
        started = result.started
        if not result.failures and started == len(entries):
            ok = [entry.id for entry in entries]  # the hot path: everything succeeded
            ok_markers = markers or []
        else:
            failed = {failure.position for failure in result.failures}
            ok = [entry.id for i, entry in enumerate(entries[:started]) if i not in failed]
            ok_markers = [m for i, m in enumerate((markers or [])[:started]) if i not in failed]
        if ok:
            self.acks.add(ok, ok_markers)
            self.stats.processed += len(ok)
            self.metrics.processed.inc(len(ok))

    def _sort_failures(
        self, entries: list[Entry], result: BatchResult, dead: list[DeadLetter]
    ) -> list[Entry]:
        """PermanentError or last attempt -> ``dead``; anything else -> retry (returned)."""
        failures = result.failures
        self.stats.failed += len(failures)
        self.metrics.failed.inc(len(failures))
        policy = self.policy
        retry = sort_failures(entries, failures, policy, dead)
        for entry, exc in retry:
            log.warning(
                "entry %s failed (delivery %d of %d), retry in %.3gs: %s: %s",
                entry.id,
                entry.deliveries,
                policy.max_deliveries,
                policy.backoff(entry.deliveries),
                type(exc).__name__,
                exc,
            )
        return [failed.entry for failed in retry]

    # --- reclaiming ---------------------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        interval = self.policy.reclaim_interval
        cursor = "0-0"
        while not self._stopping.is_set():
            await self._pause(interval)
            if self._stopping.is_set():
                return
            try:
                for _ in range(10):  # bounded work per tick; the cursor continues next tick
                    cursor, claimed, deleted = await self._autoclaim(cursor)
                    if deleted:
                        self.leases.count_trimmed(deleted)
                    if claimed:
                        await self._handle_reclaimed(claimed)
                        await self.acks.flush()
                    if cursor == "0-0" or self._stopping.is_set():
                        break
                self.connection.connected()
            except Exception as exc:
                kind = classify(exc)
                if kind is RedisErrorKind.TRANSIENT:
                    await self.connection.lost("reclaim", exc)
                elif kind is not RedisErrorKind.GROUP_MISSING:
                    raise

    async def _autoclaim(self, cursor: str) -> tuple[str, list[ReclaimedEntry], list[str]]:
        reply = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.name,
            self.leases.claim_idle_ms,
            start_id=cursor,
            count=self.settings.batch_size,
        )
        next_cursor = str(reply[0])
        entries = list(reply[1])
        deleted = [str(i) for i in reply[2]] if len(reply) > 2 else []
        if not entries:
            return next_cursor, [], deleted
        self.leases.note_seen(str(entries[-1][0]))  # XAUTOCLAIM scans in id order
        # XAUTOCLAIM does not say how often an entry was delivered; the PEL does (one round trip).
        # Entries acked or taken again in between are left out.
        deliveries = await self.leases.pel.mine([entry_id for entry_id, _ in entries])
        claimed = [
            ReclaimedEntry(entry_id, fields, deliveries[entry_id])
            for entry_id, fields in entries
            if entry_id in deliveries
        ]
        self.stats.reclaimed += len(claimed)
        self.metrics.reclaimed.inc(len(claimed))
        return next_cursor, claimed, deleted

    async def _handle_reclaimed(self, raw: list[ReclaimedEntry]) -> None:
        stream, group = self.stream, self.group
        entries: list[Entry] = []
        trimmed: list[str] = []
        for entry_id, fields, deliveries in raw:
            if fields is None:
                trimmed.append(entry_id)
            else:
                entries.append(Entry(entry_id, fields, deliveries, stream, group))
        if trimmed:
            self.leases.count_trimmed(trimmed)
        if entries:
            await self._handle_entries(entries, reclaimed=True)

    # --- leases -------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        interval = self.policy.lease_interval
        while not self._stopping.is_set():
            await self._pause(interval)
            if self._stopping.is_set():
                return
            try:
                if await self.leases.renew():
                    self.connection.connected()
            except Exception as exc:
                if classify(exc) is not RedisErrorKind.TRANSIENT:
                    raise
                await self.connection.lost("lease", exc)

    # --- timing -------------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _beat_loop(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(1.0)
