"""The consumer loop: batched, crash-safe, at-least-once.

Three tasks share one ``redis.asyncio`` client:

- the reader: ``XACK`` (the previous batch's successes, one multi-id command) pipelined with the next
  ``XREADGROUP COUNT n BLOCK t``; one round trip per batch, none per entry;
- the reclaimer: ``XAUTOCLAIM`` at claimIdle takes due retries and a crashed peer's entries, and
  counts entries that were trimmed before anyone processed them;
- the leaser: re-claims held entries (``XCLAIM ... JUSTID``) every claimIdle/4 so a slow handler
  keeps them, and releases long-backoff entries once their remaining wait fits into claimIdle.

A failed entry is handed back with ``XCLAIM ... IDLE (claimIdle - backoff) JUSTID``: Redis itself
holds the retry time (see ``retry.py``). The PEL delivery count is the attempt counter.

Sync handlers run one call at a time: on one handler thread, so the event loop stays free for leases
and signals, or on the event loop itself once they have proven fast (see ``INLINE_BUDGET``): a
batch's trip to the thread and back costs more than a thousand calls of a fast handler. Async
handlers run on the loop, at most ``CONCURRENCY`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from streampipe_worker import crash_points
from streampipe_worker.connection import AsyncClient, ConnectionSettings, create_async_client
from streampipe_worker.deadletter import DeadLetterEnvelope, queue_dead_letter_move
from streampipe_worker.durations import format_duration
from streampipe_worker.metrics import Health, WorkerMetrics
from streampipe_worker.producer import DEDUPE_KEY_FIELD
from streampipe_worker.retry import RetryPolicy
from streampipe_worker.router import Entry, LoadedHandler, Outcome, PermanentError
from streampipe_worker.settings import WorkerSettings

log = logging.getLogger("streampipe.worker")

# What a lost or refused connection looks like; a failover's READONLY reply included.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    ConnectionError,
    OSError,
)
# Error replies that mean "this node cannot serve you right now" (a failover, a cluster reshard, a
# replica that is loading): like a lost connection, they are waited out, never treated as bugs.
TRANSIENT_REPLIES = frozenset({"UNBLOCKED", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN"})
CHUNK = 1000  # ids per XCLAIM / XACK command outside the hot path

# A sync per-entry handler runs on the event loop while it is fast, on the handler thread otherwise.
# On the loop, one batch holds it at most INLINE_BUDGET (plus the call running when that is spent):
# the rest of the batch then goes to the thread, and the handler with it. It comes back to the loop
# after INLINE_AFTER batches in a row took under half the budget on the thread with no call over
# INLINE_CALL_LIMIT (a call that slow is I/O, which can stall: that belongs on the thread). Each time
# a single call overran the whole budget on the loop, the handler needs twice as many fast batches
# to come back (up to INLINE_AFTER_MAX).
INLINE_BUDGET = 0.005
INLINE_CALL_LIMIT = 0.0005
INLINE_AFTER = 3
INLINE_AFTER_MAX = 1024


def is_transient(exc: BaseException) -> bool:
    """A lost connection or an error reply that a reconnect (after a failover) cures."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in TRANSIENT_REPLIES
    return False


def entry_id_order(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-5"`` -> ``(1700000000000, 5)``: stream ids compared as the server orders them."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _raise_if_a_cancellation_was_lost() -> None:
    """Raise the cancellation a redis-py call swallowed. On Python 3.11, ``asyncio.wait_for`` (which
    redis-py sends commands with) returns normally when a cancel lands just as the send completes
    (CPython gh-86296); the request is still counted on the task, so it can be honoured here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def dedupe_key(stream: str, group: str, entry_id: str, fields: dict[str, str]) -> str:
    """The processed marker of an entry: its ``dedupe_key`` field if the producer set one, else its id."""
    return f"{stream}:dedupe:{group}:{fields.get(DEDUPE_KEY_FIELD) or entry_id}"


@dataclass
class BatchResult:
    """What running the handler over a batch produced."""

    failures: list[tuple[int, BaseException]] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    started: int = 0


@dataclass
class Stats:
    """Counts kept in memory for tests, the demo and the benchmark (metrics have the same numbers)."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    trimmed: int = 0
    handed_back: int = 0
    deduplicated: int = 0


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
        self.handler = handler
        self.stream = settings.stream
        self.group = settings.group
        self.name = settings.consumer
        self.dead_letter = settings.dead_letter
        self.policy = RetryPolicy(
            max_deliveries=settings.max_deliveries,
            backoff_initial=settings.backoff_initial,
            backoff_multiplier=settings.backoff_multiplier,
            backoff_max=settings.backoff_max,
            claim_idle=settings.claim_idle,
        )
        self.claim_idle_ms = int(settings.claim_idle.total_seconds() * 1000)
        self.block_ms = max(int(settings.block.total_seconds() * 1000), 1)
        self.dedupe_ms = int(settings.dedupe_ttl.total_seconds() * 1000) if settings.dedupe_ttl else None
        self.client: Any = client or create_async_client(ConnectionSettings.from_worker(settings))
        self._owns_client = client is None
        self.metrics = metrics or WorkerMetrics(self.stream, self.group)
        self.health = health or Health()
        self.stats = Stats()
        self.abandoned = 0

        self._stopping = asyncio.Event()
        self._stop_now = False  # read by the handler thread between entries
        self._in_flight: dict[int, list[Entry]] = {}
        self._unstarted: list[Entry] = []
        self._waiting: dict[str, float] = {}  # long-backoff entries held here: id -> monotonic due time
        # Failed entries already handed back (or on their way to the DLQ) while their batch is still
        # in flight: the leaser must not renew them, or it would reset their backoff.
        self._released: set[str] = set()
        # The highest entry id that reached this process (read, reclaimed, or left by a previous run).
        # XREADGROUP ">" only delivers ids above every id the group delivered before, so an entry
        # pending here above this mark came from a read whose reply never arrived: never attempted.
        self._seen_up_to = (0, 0)
        self._abandoned: list[str] = []  # in flight when the grace period ended (set at shutdown)
        self._acks: list[str] = []
        self._ack_markers: list[str] = []
        self._next_token = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handler")
        # Handler calls never overlap: a call runs on the loop only when no thread job is queued or
        # running. Each counter has one writer (the loop, the thread), so no lock is needed.
        self._thread_submitted = 0
        self._thread_finished = 0
        self._inline = False
        self._fast_batches = 0
        self._inline_after = INLINE_AFTER
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._error_streak = 0
        self._crash_at = crash_points.armed_point()  # a test hook, off unless the fault suite sets it

    # --- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading, let running handlers finish (SIGTERM). Safe to call more than once."""
        if self._stopping.is_set():
            return
        grace = format_duration(self.settings.shutdown_grace)
        log.info("stop requested: finishing in-flight entries (grace %s)", grace)
        self._stop_now = True
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
        await self._hand_back_previous_run()
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
            self._stop_now = True
            self._stopping.set()
            for task in [*workers, *helpers]:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._owns_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()

    async def _shutdown(self, workers: list[asyncio.Task[None]], helpers: list[asyncio.Task[None]]) -> None:
        grace = self.settings.shutdown_grace.total_seconds()
        deadline = time.monotonic() + grace
        self.health.set_ready(False, "shutting down")
        _, pending = await asyncio.wait(workers, timeout=grace)
        if pending:
            self.abandoned = sum(len(batch) for batch in self._in_flight.values())
            # Taken now: cancelling the batches below removes them from _in_flight.
            self._abandoned = [
                entry.id
                for batch in self._in_flight.values()
                for entry in batch
                if entry.id not in self._released  # already handed back with their backoff
            ]
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
        await self._hand_back_all(settle_until)
        log.info(
            "stopped: processed=%d failed=%d dead_lettered=%d reclaimed=%d handed_back=%d",
            self.stats.processed,
            self.stats.failed,
            self.stats.dead_lettered,
            self.stats.reclaimed,
            self.stats.handed_back,
        )

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reading = True
                try:
                    batch = await self._read()
                finally:
                    self._reading = False
                self._connected()
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    return
                raise
            except redis.exceptions.ResponseError as exc:
                if is_transient(exc):
                    await self._connection_lost("read", exc)
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                self.health.set_ready(False, "consumer group missing")
                log.error(
                    "stream %s: group %s missing (NOGROUP); the operator creates groups: is the "
                    "StreamPipeline applied?",
                    self.stream,
                    self.group,
                )
                await self._pause(self._retry_delay())
                continue
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._connection_lost("read", exc)
                continue
            if batch:
                self._note_seen(batch[-1][0])  # XREADGROUP replies in id order
                stream, group = self.stream, self.group
                await self._handle_entries([Entry(i, f, 1, stream, group) for i, f in batch], reclaimed=False)

    async def _read(self) -> list[tuple[str, dict[str, str]]]:
        """Flush acks and read the next batch, in one round trip when no markers are involved."""
        acks = self._take_acks()
        try:
            if acks and not acks[1]:
                pipe = self.client.pipeline(transaction=False)
                pipe.xack(self.stream, self.group, *acks[0])
                pipe.xreadgroup(
                    self.group,
                    self.name,
                    {self.stream: ">"},
                    count=self.settings.batch_size,
                    block=self.block_ms,
                )
                acked, reply = await pipe.execute()
                self._acked(acks[0], acked)
            else:
                if acks:
                    await self._send_acks(acks)
                reply = await self.client.xreadgroup(
                    self.group,
                    self.name,
                    {self.stream: ">"},
                    count=self.settings.batch_size,
                    block=self.block_ms,
                )
        except BaseException:
            # Unknown whether the XACK ran: keep the ids; acking again is harmless (XACK is idempotent).
            if acks:
                self._restore_acks(acks)
            raise
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3 shape
            return [entry for entries in reply.values() for entry in entries[0]]
        return list(reply[0][1])

    # --- handling -----------------------------------------------------------------------------

    async def _handle(
        self, raw: Sequence[tuple[str, dict[str, str] | None, int]], *, reclaimed: bool
    ) -> None:
        """Reclaimed entries: a None body means XAUTOCLAIM found the entry deleted (Redis 6.2)."""
        stream, group = self.stream, self.group
        entries: list[Entry] = []
        trimmed: list[str] = []
        for entry_id, fields, deliveries in raw:
            if fields is None:
                trimmed.append(entry_id)
            else:
                entries.append(Entry(entry_id, fields, deliveries, stream, group))
        if trimmed:
            self._count_trimmed(trimmed)
        if entries:
            await self._handle_entries(entries, reclaimed=reclaimed)

    async def _handle_entries(self, entries: list[Entry], *, reclaimed: bool) -> None:
        if self._in_flight:
            # After a lease lapsed (a partition, a stalled server) one entry can reach this consumer
            # twice: the late reply of its XREADGROUP and its own XAUTOCLAIM. The copy in flight
            # settles it; running the second would repeat the side effect (or the dead-letter move).
            held = {entry.id for batch in self._in_flight.values() for entry in batch}
            held -= self._released  # failed ones handed back for retry may come back
            if held and any(entry.id in held for entry in entries):
                again = [entry.id for entry in entries if entry.id in held]
                log.info("%d entries delivered again while in flight here: %s", len(again), again[:10])
                entries = [entry for entry in entries if entry.id not in held]
                if not entries:
                    return
        token = self._next_token
        self._next_token += 1
        self._in_flight[token] = entries
        count = len(entries)
        self.metrics.in_flight.inc(count)
        self.metrics.batch_size.observe(count)
        try:
            await self._settle(entries, reclaimed=reclaimed)
        finally:
            del self._in_flight[token]
            self.metrics.in_flight.dec(count)
            if self._released:
                self._released.difference_update(entry.id for entry in entries)

    async def _settle(self, entries: list[Entry], *, reclaimed: bool) -> None:
        markers: list[str] | None = None
        dead: list[tuple[Entry, BaseException | str, bool]] = []
        if self.dedupe_ms is not None:
            entries, markers = await self._skip_duplicates(entries)
        if reclaimed:
            entries, markers = self._drop_exhausted(entries, markers, dead)
        if entries and self._crash_at == "before-handler":
            crash_points.crash(self._crash_at)
        result = await self._run_handler(entries) if entries else BatchResult()
        if entries and self._crash_at == "after-handler-before-ack":
            crash_points.crash(self._crash_at)
        self._record_successes(entries, markers, result)
        if result.durations:
            self.metrics.handler_duration.observe_many(result.durations)
        if result.started < len(entries):
            self._unstarted.extend(entries[result.started :])
        if result.failures:
            self._released.update(entries[index].id for index, _ in result.failures)
            retry = self._classify_failures(entries, result.failures, dead)
            if retry:
                await self._schedule_retries(retry)
        if dead:
            await self._dead_letter(dead)

    def _drop_exhausted(
        self,
        entries: list[Entry],
        markers: list[str] | None,
        dead: list[tuple[Entry, BaseException | str, bool]],
    ) -> tuple[list[Entry], list[str] | None]:
        """Reclaimed entries already delivered more than allowed never ran to the end: dead-letter them."""
        limit = self.policy.max_deliveries
        if all(entry.deliveries <= limit for entry in entries):
            return entries, markers
        runnable: list[Entry] = []
        runnable_markers: list[str] = []
        for index, entry in enumerate(entries):
            if entry.deliveries > limit:
                reason = (
                    f"delivered {entry.deliveries} times without a result (max {limit}): the workers "
                    "handling it crashed or lost their lease"
                )
                dead.append((entry, reason, False))
            else:
                runnable.append(entry)
                if markers is not None:
                    runnable_markers.append(markers[index])
        return runnable, (runnable_markers if markers is not None else None)

    def _record_successes(self, entries: list[Entry], markers: list[str] | None, result: BatchResult) -> None:
        started = result.started
        if not result.failures and started == len(entries):
            ok = [entry.id for entry in entries]  # the hot path: everything succeeded
            ok_markers = markers or []
        else:
            failed = {index for index, _ in result.failures}
            ok = [entry.id for i, entry in enumerate(entries[:started]) if i not in failed]
            ok_markers = [m for i, m in enumerate((markers or [])[:started]) if i not in failed]
        if ok:
            self._acks.extend(ok)
            self._ack_markers.extend(ok_markers)
            self.stats.processed += len(ok)
            self.metrics.processed.inc(len(ok))

    def _classify_failures(
        self,
        entries: list[Entry],
        failures: list[tuple[int, BaseException]],
        dead: list[tuple[Entry, BaseException | str, bool]],
    ) -> list[Entry]:
        """PermanentError or last attempt -> dead letter; anything else -> retry (returned)."""
        self.stats.failed += len(failures)
        self.metrics.failed.inc(len(failures))
        retry: list[Entry] = []
        for index, exc in failures:
            entry = entries[index]
            if isinstance(exc, PermanentError):
                dead.append((entry, exc, True))
            elif self.policy.exhausted(entry.deliveries):
                dead.append((entry, exc, False))
            else:
                log.warning(
                    "entry %s failed (delivery %d of %d), retry in %.3gs: %s: %s",
                    entry.id,
                    entry.deliveries,
                    self.policy.max_deliveries,
                    self.policy.backoff(entry.deliveries),
                    type(exc).__name__,
                    exc,
                )
                retry.append(entry)
        return retry

    async def _run_handler(self, entries: list[Entry]) -> BatchResult:
        handler = self.handler
        if handler.is_batch:
            if handler.is_async:
                return await self._run_batch_async(entries)
            return await self._on_thread(self._run_batch_sync, entries)
        if handler.is_async:
            return await self._run_async(entries)
        return await self._run_sync_adaptive(entries)

    async def _on_thread(self, work: Any, *args: Any) -> BatchResult:
        def counted() -> BatchResult:
            try:
                result: BatchResult = work(*args)
                return result
            finally:
                self._thread_finished += 1

        self._thread_submitted += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, counted)

    async def _run_sync_adaptive(self, entries: list[Entry]) -> BatchResult:
        """A sync per-entry handler on the loop while it is fast, on the handler thread otherwise."""
        result = BatchResult()
        if self._inline and self._thread_submitted == self._thread_finished:
            self._run_sync(entries, result, time.perf_counter() + INLINE_BUDGET)
            slowest = max(result.durations, default=0.0)
            if result.started == len(entries) and slowest <= INLINE_CALL_LIMIT:
                return result
            self._inline = False
            self._fast_batches = 0
            if slowest > INLINE_BUDGET:
                self._inline_after = min(self._inline_after * 2, INLINE_AFTER_MAX)
            log.debug(
                "sync handler back on the handler thread (slowest call %.2f ms, %d of %d entries done)",
                slowest * 1000,
                result.started,
                len(entries),
            )
            if result.started == len(entries) or self._stop_now:
                return result
        await self._on_thread(self._run_sync, entries, result, float("inf"))
        if not self._inline:
            durations = result.durations
            if durations and sum(durations) < INLINE_BUDGET / 2 and max(durations) <= INLINE_CALL_LIMIT:
                self._fast_batches += 1
                self._inline = self._fast_batches >= self._inline_after
            else:
                self._fast_batches = 0
        return result

    def _run_sync(self, entries: list[Entry], result: BatchResult, deadline: float) -> BatchResult:
        """Entries from ``result.started`` on, in order, into ``result``; no new one is started once
        stop is requested or the clock has passed ``deadline`` (then the caller runs the rest)."""
        function = self.handler.target
        clock = time.perf_counter
        durations = result.durations
        failures = result.failures
        began = clock()
        for index in range(result.started, len(entries)):
            if self._stop_now:
                result.started = index
                return result
            try:
                function(entries[index])
            except Exception as exc:
                failures.append((index, exc))
            # One clock read per entry: this entry's end is the next one's start.
            ended = clock()
            durations.append(ended - began)
            began = ended
            if ended > deadline:
                result.started = index + 1
                return result
        result.started = len(entries)
        return result

    async def _run_async(self, entries: list[Entry]) -> BatchResult:
        function = self.handler.target
        clock = time.perf_counter
        result = BatchResult()
        semaphore = self._semaphore
        position = iter(enumerate(entries))

        async def lane() -> None:
            while not self._stop_now:
                try:
                    index, entry = next(position)
                except StopIteration:
                    return
                result.started += 1
                async with semaphore:
                    began = clock()
                    try:
                        await function(entry)
                    except Exception as exc:
                        result.failures.append((index, exc))
                    result.durations.append(clock() - began)

        lanes = min(self.settings.concurrency, len(entries))
        if lanes == 1:
            await lane()
        else:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        return result

    def _batch_outcomes(
        self, entries: list[Entry], outcomes: Sequence[Outcome] | None, took: float
    ) -> BatchResult:
        result = BatchResult(started=len(entries), durations=[took / max(len(entries), 1)] * len(entries))
        if outcomes is None:
            return result
        if len(outcomes) != len(entries):
            error = RuntimeError(
                f"batch handler returned {len(outcomes)} outcomes for {len(entries)} entries; "
                "return None or one outcome per entry"
            )
            result.failures = [(i, error) for i in range(len(entries))]
            return result
        result.failures = [(i, outcome) for i, outcome in enumerate(outcomes) if outcome is not None]
        return result

    def _run_batch_sync(self, entries: list[Entry]) -> BatchResult:
        began = time.perf_counter()
        try:
            outcomes = self.handler.target(entries)
        except Exception as exc:
            return BatchResult(failures=[(i, exc) for i in range(len(entries))], started=len(entries))
        return self._batch_outcomes(entries, outcomes, time.perf_counter() - began)

    async def _run_batch_async(self, entries: list[Entry]) -> BatchResult:
        began = time.perf_counter()
        try:
            outcomes = await self.handler.target(entries)
        except Exception as exc:
            return BatchResult(failures=[(i, exc) for i in range(len(entries))], started=len(entries))
        return self._batch_outcomes(entries, outcomes, time.perf_counter() - began)

    # --- acks ---------------------------------------------------------------------------------

    def _take_acks(self) -> tuple[list[str], list[str]] | None:
        if not self._acks:
            return None
        acks = (self._acks, self._ack_markers)
        self._acks, self._ack_markers = [], []
        return acks

    def _restore_acks(self, acks: tuple[list[str], list[str]]) -> None:
        self._acks[:0] = acks[0]
        self._ack_markers[:0] = acks[1]

    def _acked(self, ids: list[str], acked: int) -> None:
        if acked < len(ids):
            # Not an error: a previous try may have landed before the connection dropped, or a peer
            # took an entry after our lease lapsed. Either way no entry was acked twice by us.
            log.info("XACK: %d of %d entries were no longer pending", len(ids) - acked, len(ids))

    async def _send_acks(self, acks: tuple[list[str], list[str]]) -> None:
        ids, markers = acks
        for start in range(0, len(ids), CHUNK * 10):
            chunk = ids[start : start + CHUNK * 10]
            if markers:
                # The marker and the XACK land together or not at all.
                transaction = self.client.pipeline(transaction=True)
                for marker in markers[start : start + CHUNK * 10]:
                    transaction.set(marker, "1", px=self.dedupe_ms)
                transaction.xack(self.stream, self.group, *chunk)
                replies = await transaction.execute()
                self._acked(chunk, int(replies[-1]))
            else:
                self._acked(chunk, int(await self.client.xack(self.stream, self.group, *chunk)))

    async def _flush_acks(self) -> None:
        acks = self._take_acks()
        if acks is None:
            return
        try:
            await self._send_acks(acks)
        except BaseException:
            self._restore_acks(acks)
            raise

    async def _settle_acks(self, until: float) -> None:
        """At shutdown: keep trying until the acks land or time is up, then say what is lost."""
        while self._acks:
            try:
                await self._flush_acks()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() >= until:
                    log.error(
                        "could not ack %d processed entries before exit (%s); they stay pending and "
                        "will be processed again by a peer",
                        len(self._acks),
                        exc,
                    )
                    return
                await asyncio.sleep(0.2)

    async def _skip_duplicates(self, entries: list[Entry]) -> tuple[list[Entry], list[str]]:
        """Entries whose marker exists (or that repeat a key earlier in this batch) are acked unrun."""
        markers = [dedupe_key(self.stream, self.group, e.id, e.fields) for e in entries]
        present = await self.client.mget(markers)
        fresh: list[Entry] = []
        fresh_markers: list[str] = []
        seen_here: set[str] = set()
        for entry, marker, seen in zip(entries, markers, present, strict=True):
            if seen is None and marker not in seen_here:
                seen_here.add(marker)
                fresh.append(entry)
                fresh_markers.append(marker)
            else:
                self._acks.append(entry.id)
                self._ack_markers.append(marker)
                self.stats.deduplicated += 1
                self.metrics.deduplicated.inc()
        return fresh, fresh_markers

    # --- retries and the dead-letter stream -----------------------------------------------------

    async def _schedule_retries(self, entries: list[Entry]) -> None:
        """Hand failed entries back so they become claimable when their backoff has passed."""
        now = time.monotonic()
        by_idle: dict[int, list[str]] = {}
        for entry in entries:
            wait = self.policy.backoff(entry.deliveries)
            idle = self.policy.hand_back_idle(wait)
            if idle is None:
                self._waiting[entry.id] = now + wait
            else:
                by_idle.setdefault(idle, []).append(entry.id)
        self.metrics.retried.inc(len(entries))
        try:
            await self._claim_with_idle(by_idle)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Not handed back yet: hold them and let the leaser release them once Redis is back.
            log.warning("could not hand back %d failed entries yet: %s", len(entries), exc)
            for entry in entries:
                self._waiting.setdefault(entry.id, now + self.policy.backoff(entry.deliveries))

    async def _claim_with_idle(self, by_idle: dict[int, list[str]], retrycount: int | None = None) -> None:
        if not by_idle:
            return
        pipe = self.client.pipeline(transaction=False)
        for idle, ids in by_idle.items():
            for start in range(0, len(ids), CHUNK):
                pipe.xclaim(
                    self.stream,
                    self.group,
                    self.name,
                    0,
                    ids[start : start + CHUNK],
                    idle=idle,
                    retrycount=retrycount,
                    justid=True,
                )
        replies = await pipe.execute()
        claimed = {str(entry_id) for reply in replies for entry_id in reply}
        missing = [entry_id for ids in by_idle.values() for entry_id in ids if entry_id not in claimed]
        if missing:
            await self._report_deleted(missing)

    async def _report_deleted(self, ids: list[str]) -> None:
        """XCLAIM drops a PEL entry whose stream entry was deleted (trimmed) without a word. Of the ids it
        did not return, those gone from the stream are reported like XAUTOCLAIM's deleted IDs (the
        others were acked meanwhile); except ids this worker processed and has yet to ack."""
        processed = set(self._acks)
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.stream, entry_id, entry_id, count=1)
        rows = await pipe.execute()
        gone = [entry_id for entry_id, found in zip(ids, rows, strict=True) if not found]
        gone = [entry_id for entry_id in gone if entry_id not in processed]
        if gone:
            self._count_trimmed(gone)

    async def _dead_letter(self, dead: list[tuple[Entry, BaseException | str, bool]]) -> None:
        """MULTI { XADD envelope ... ; XACK ids } for the ids still pending for this consumer."""
        envelopes = [
            DeadLetterEnvelope.for_failure(
                entry_id=entry.id,
                fields=entry.fields,
                stream=self.stream,
                group=self.group,
                consumer=self.name,
                deliveries=entry.deliveries,
                error=error,
            )
            for entry, error, _ in dead
        ]
        todo = envelopes
        attempt = 0
        taken: set[str] = set()  # no longer ours before we tried: a peer took them (lease lapsed)
        while todo:
            try:
                # Only ids still pending for this consumer: after a lost EXEC reply the move may have
                # happened; after a lease lapsed (a partition, a stall) a peer may have taken the
                # entry and moved it. Either way a second envelope would be a duplicate.
                pending = await self._still_pending(todo)
                if not attempt and len(pending) < len(todo):
                    taken = {e.original_id for e in todo} - {e.original_id for e in pending}
                todo = pending
                if not todo:
                    break
                transaction = self.client.pipeline(transaction=True)
                queue_dead_letter_move(
                    transaction,
                    stream=self.stream,
                    group=self.group,
                    dead_letter=self.dead_letter,
                    envelopes=todo,
                )
                if self._crash_at == "inside-dlq-move":
                    await crash_points.crash_inside_transaction(self.client, transaction)
                await transaction.execute()
                todo = []
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                self.metrics.connection_errors.inc()
                log.warning(
                    "dead-letter move of %d entries: %s; checking the PEL and retrying", len(todo), exc
                )
                if self._stopping.is_set() and attempt > 20:
                    log.error(
                        "could not move %d entries to %s (%s); they stay pending for a peer",
                        len(todo),
                        self.dead_letter,
                        exc,
                    )
                    return
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
        for entry, error, rejected in dead:
            if entry.id in taken:
                log.info("entry %s is no longer pending here (a peer took it): not moved here", entry.id)
                continue
            (self.metrics.dead_rejected if rejected else self.metrics.dead_max_deliveries).inc()
            log.warning(
                "entry %s moved to %s after %d deliveries: %s",
                entry.id,
                self.dead_letter,
                entry.deliveries,
                error if isinstance(error, str) else f"{type(error).__name__}: {error}",
            )
        self.stats.dead_lettered += len(dead) - len(taken)

    async def _still_pending(self, envelopes: list[DeadLetterEnvelope]) -> list[DeadLetterEnvelope]:
        owners = await self._owners([envelope.original_id for envelope in envelopes])
        return [envelope for envelope in envelopes if owners.get(envelope.original_id) == self.name]

    async def _owners(self, ids: Sequence[str]) -> dict[str, str]:
        """Current owner of each id that is still pending (absent = acked or deleted)."""
        owners: dict[str, str] = {}
        for start in range(0, len(ids), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            chunk = ids[start : start + CHUNK]
            for entry_id in chunk:
                pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
            for entry_id, rows in zip(chunk, await pipe.execute(), strict=True):
                if rows:
                    owners[entry_id] = rows[0]["consumer"]
        return owners

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
                        self._count_trimmed(deleted)
                    if claimed:
                        await self._handle(claimed, reclaimed=True)
                        await self._flush_acks()
                    if cursor == "0-0" or self._stopping.is_set():
                        break
                self._connected()
            except redis.exceptions.ResponseError as exc:
                if is_transient(exc):
                    await self._connection_lost("reclaim", exc)
                elif "NOGROUP" not in str(exc):
                    raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._connection_lost("reclaim", exc)

    async def _autoclaim(
        self, cursor: str
    ) -> tuple[str, list[tuple[str, dict[str, str] | None, int]], list[str]]:
        reply = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.name,
            self.claim_idle_ms,
            start_id=cursor,
            count=self.settings.batch_size,
        )
        next_cursor = str(reply[0])
        entries = list(reply[1])
        deleted = [str(i) for i in reply[2]] if len(reply) > 2 else []
        if not entries:
            return next_cursor, [], deleted
        self._note_seen(str(entries[-1][0]))  # XAUTOCLAIM scans in id order
        # XAUTOCLAIM does not say how often an entry was delivered; the PEL does (one round trip).
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        rows = await pipe.execute()
        claimed: list[tuple[str, dict[str, str] | None, int]] = []
        for (entry_id, fields), row in zip(entries, rows, strict=True):
            if not row or row[0]["consumer"] != self.name:
                continue  # acked or taken again in between
            claimed.append((entry_id, fields, int(row[0]["times_delivered"])))
        self.stats.reclaimed += len(claimed)
        self.metrics.reclaimed.inc(len(claimed))
        return next_cursor, claimed, deleted

    def _count_trimmed(self, ids: Sequence[str]) -> None:
        self.stats.trimmed += len(ids)
        self.metrics.trimmed.inc(len(ids))
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        log.warning(
            "stream %s group %s: %d pending entries were deleted (trimmed) before they were processed: %s; "
            "retention is cutting into unprocessed work",
            self.stream,
            self.group,
            len(ids),
            shown,
        )

    # --- leases -------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        interval = self.policy.lease_interval
        while not self._stopping.is_set():
            await self._pause(interval)
            if self._stopping.is_set():
                return
            try:
                if await self._renew_leases():
                    self._connected()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._connection_lost("lease", exc)

    def _held_ids(self) -> list[str]:
        held = [entry.id for batch in self._in_flight.values() for entry in batch]
        if self._released:
            held = [entry_id for entry_id in held if entry_id not in self._released]
        held.extend(self._acks)
        held.extend(self._waiting)
        return held

    async def _renew_leases(self) -> bool:
        """Renew the leases of held entries; False when there was nothing to send (no news of Redis)."""
        now = time.monotonic()
        release: dict[int, list[str]] = {}
        for entry_id, due in list(self._waiting.items()):
            idle = self.policy.hand_back_idle(due - now)
            if idle is not None:
                release.setdefault(idle, []).append(entry_id)
        if release:
            await self._claim_with_idle(release)
            for ids in release.values():
                for entry_id in ids:
                    self._waiting.pop(entry_id, None)
        held = list(dict.fromkeys(self._held_ids()))
        if not held:
            return bool(release)
        owners = await self._owners(held)
        still_held = set(self._held_ids())  # the batch may have settled during the round trip
        mine = [entry_id for entry_id in held if owners.get(entry_id) == self.name and entry_id in still_held]
        lost = [entry_id for entry_id in held if entry_id in owners and owners[entry_id] != self.name]
        if lost:
            self.metrics.lease_lost.inc(len(lost))
            log.warning(
                "%d held entries were taken by other consumers (lease lapsed?): %s", len(lost), lost[:10]
            )
            for entry_id in lost:
                self._waiting.pop(entry_id, None)
        if mine:
            await self._claim_with_idle({0: mine})
        return True

    # --- shutdown hand-back -------------------------------------------------------------------

    async def _hand_back_previous_run(self) -> None:
        """Entries pending under this consumer name from an earlier process (a restarted pod): give
        them back at once instead of waiting claimIdle for them."""
        try:
            rows = await self.client.xpending_range(
                self.stream, self.group, "-", "+", 10_000, consumername=self.name
            )
        except redis.exceptions.ResponseError:
            return  # no group yet: the reader reports it
        except Exception as exc:
            if not is_transient(exc):
                raise
            return  # the reader reports it, and reconnects
        ids = [str(row["message_id"]) for row in rows]
        if ids:
            self._note_seen(ids[-1])
            await self._claim_with_idle({self.claim_idle_ms: ids})
            log.info(
                "handed back %d entries left pending by a previous run of consumer %s", len(ids), self.name
            )

    def _note_seen(self, entry_id: str) -> None:
        self._seen_up_to = max(self._seen_up_to, entry_id_order(entry_id))

    async def _hand_back_all(self, until: float) -> None:
        """Everything still held goes back so a peer takes it now (or when its backoff ends).

        Entries that failed here and were handed back for retry are left as they are: their idle
        time holds the rest of their backoff and their delivery count the attempt they had.
        """
        now = time.monotonic()
        unstarted = {entry.id: entry for entry in self._unstarted}
        abandoned = [entry_id for entry_id in self._abandoned if entry_id not in unstarted]
        by_count: dict[int, list[str]] = {}
        for entry in unstarted.values():
            # Never attempted here: give the delivery back so the attempt budget stays whole.
            by_count.setdefault(entry.deliveries - 1, []).append(entry.id)
        waiting: dict[int, list[str]] = {}
        for entry_id, due in self._waiting.items():
            waiting.setdefault(self.policy.hand_back_idle(due - now) or 0, []).append(entry_id)
        while True:
            try:
                for count, ids in by_count.items():
                    await self._claim_with_idle({self.claim_idle_ms: ids}, retrycount=count)
                await self._claim_with_idle({self.claim_idle_ms: abandoned} if abandoned else {})
                await self._claim_with_idle(waiting)
                known = set(unstarted) | set(abandoned) | set(self._waiting)
                rows = await self.client.xpending_range(
                    self.stream, self.group, "-", "+", 10_000, consumername=self.name
                )
                # Entries a cancelled XREADGROUP delivered that never reached us: never attempted
                # here, so their delivery is given back too. Ids at or below the mark reached us.
                stray: dict[int, list[str]] = {}
                for row in rows:
                    entry_id = str(row["message_id"])
                    if entry_id not in known and entry_id_order(entry_id) > self._seen_up_to:
                        retry = max(int(row["times_delivered"]) - 1, 0)
                        stray.setdefault(retry, []).append(entry_id)
                for count, ids in stray.items():
                    await self._claim_with_idle({self.claim_idle_ms: ids}, retrycount=count)
                total = len(unstarted) + len(abandoned) + sum(len(ids) for ids in stray.values())
                self.stats.handed_back += total
                self.metrics.handed_back.inc(total)
                if total:
                    log.info("handed back %d entries for peers to take now", total)
                return
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() >= until:
                    # Not fatal: whatever was not handed back is taken by peers after claimIdle.
                    log.error("could not hand back entries (%s); peers take them after claimIdle", exc)
                    return
                await asyncio.sleep(0.2)

    # --- connection state ---------------------------------------------------------------------

    def _connected(self) -> None:
        if self._error_streak:
            log.info("connection to Redis restored")
        self._error_streak = 0
        if not self._stopping.is_set():
            self.health.set_ready(True)

    def _retry_delay(self) -> float:
        self._error_streak += 1
        base: float = min(0.05 * 2 ** min(self._error_streak, 10), 5.0)
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    async def _connection_lost(self, where: str, exc: BaseException) -> None:
        self.metrics.connection_errors.inc()
        self.health.set_ready(False, f"redis unreachable: {exc}")
        delay = self._retry_delay()
        level = logging.WARNING if self._error_streak <= 3 or self._error_streak % 20 == 0 else logging.DEBUG
        log.log(
            level,
            "%s: lost Redis connection (%s: %s); retrying in %.2fs",
            where,
            type(exc).__name__,
            exc,
            delay,
        )
        with contextlib.suppress(Exception):
            # Drop pooled sockets: after a failover they point at the demoted primary.
            await self.client.connection_pool.disconnect()
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _beat_loop(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(1.0)
