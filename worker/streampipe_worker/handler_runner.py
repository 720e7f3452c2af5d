"""The handler runner: runs the user's handler over a batch and reports what happened to each entry.

Sync handlers run one call at a time: on one handler thread, so the event loop stays free for leases
and signals, or on the event loop itself once they have proven fast (see ``INLINE_BUDGET``): a
batch's trip to the thread and back costs more than a thousand calls of a fast handler. Async
handlers run on the loop, at most ``concurrency`` at a time. ``@batch`` handlers get the whole batch
in one call (sync ones on the handler thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from streampipe_worker.router import Entry, LoadedHandler, Outcome

log = logging.getLogger("streampipe.worker")

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


class HandlerFailure(NamedTuple):
    """One entry the handler failed on."""

    position: int  # where the entry is in the batch
    error: BaseException


@dataclass
class BatchResult:
    """What running the handler over a batch produced."""

    failures: list[HandlerFailure] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # one per entry run, in seconds
    started: int = 0  # entries[:started] ran; the rest were never started (stop requested)


class HandlerRunner:
    """Runs one loaded handler; ``stop()`` keeps it from starting another entry."""

    def __init__(self, handler: LoadedHandler, concurrency: int) -> None:
        self.handler = handler
        self.concurrency = concurrency
        self.stop_now = False  # read by the handler thread between entries
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handler")
        # Handler calls never overlap: a call runs on the loop only when no thread job is queued or
        # running. Each counter has one writer (the loop, the thread), so no lock is needed.
        self._thread_submitted = 0
        self._thread_finished = 0
        self.inline = False  # whether the next batch of a sync per-entry handler starts on the loop
        self._fast_batches = 0
        self._inline_after = INLINE_AFTER
        self._semaphore = asyncio.Semaphore(concurrency)

    def stop(self) -> None:
        self.stop_now = True

    def close(self) -> None:
        """Let go of the handler thread without waiting for a call still running on it."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, entries: list[Entry]) -> BatchResult:
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
        if self.inline and self._thread_submitted == self._thread_finished:
            self._run_sync(entries, result, time.perf_counter() + INLINE_BUDGET)
            slowest = max(result.durations, default=0.0)
            if result.started == len(entries) and slowest <= INLINE_CALL_LIMIT:
                return result
            self.inline = False
            self._fast_batches = 0
            if slowest > INLINE_BUDGET:
                self._inline_after = min(self._inline_after * 2, INLINE_AFTER_MAX)
            log.debug(
                "sync handler back on the handler thread (slowest call %.2f ms, %d of %d entries done)",
                slowest * 1000,
                result.started,
                len(entries),
            )
            if result.started == len(entries) or self.stop_now:
                return result
        await self._on_thread(self._run_sync, entries, result, float("inf"))
        if not self.inline:
            durations = result.durations
            if durations and sum(durations) < INLINE_BUDGET / 2 and max(durations) <= INLINE_CALL_LIMIT:
                self._fast_batches += 1
                self.inline = self._fast_batches >= self._inline_after
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
            if self.stop_now:
                result.started = index
                return result
            try:
                function(entries[index])
            except Exception as exc:
                failures.append(HandlerFailure(index, exc))
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
            while not self.stop_now:
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
                        result.failures.append(HandlerFailure(index, exc))
                    result.durations.append(clock() - began)

        lanes = min(self.concurrency, len(entries))
        if lanes == 1:
            await lane()
        else:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        return result

    @staticmethod
    def _batch_outcomes(entries: list[Entry], outcomes: Sequence[Outcome] | None, took: float) -> BatchResult:
        result = BatchResult(started=len(entries), durations=[took / max(len(entries), 1)] * len(entries))
        if outcomes is None:
            return result
        if len(outcomes) != len(entries):
            error = RuntimeError(
                f"batch handler returned {len(outcomes)} outcomes for {len(entries)} entries; "
                "return None or one outcome per entry"
            )
            result.failures = [HandlerFailure(i, error) for i in range(len(entries))]
            return result
        result.failures = [
            HandlerFailure(i, outcome) for i, outcome in enumerate(outcomes) if outcome is not None
        ]
        return result

    @staticmethod
    def _all_failed(entries: list[Entry], exc: BaseException) -> BatchResult:
        return BatchResult(
            failures=[HandlerFailure(i, exc) for i in range(len(entries))], started=len(entries)
        )

    def _run_batch_sync(self, entries: list[Entry]) -> BatchResult:
        began = time.perf_counter()
        try:
            outcomes = self.handler.target(entries)
        except Exception as exc:
            return self._all_failed(entries, exc)
        return self._batch_outcomes(entries, outcomes, time.perf_counter() - began)

    async def _run_batch_async(self, entries: list[Entry]) -> BatchResult:
        began = time.perf_counter()
        try:
            outcomes = await self.handler.target(entries)
        except Exception as exc:
            return self._all_failed(entries, exc)
        return self._batch_outcomes(entries, outcomes, time.perf_counter() - began)
