"""Delivery accounting and backoff.

The attempt counter is the PEL's delivery count: it lives in Redis, so it survives a crashed worker
and needs no side keys. The wait before the next attempt is encoded in Redis too: a failed entry is
handed back with ``XCLAIM ... IDLE (claimIdle - backoff) JUSTID``, so it becomes claimable (idle >=
claimIdle) exactly when its backoff has passed, by this worker or any peer, even if this one dies.
Waits longer than claimIdle cannot be written that way; the failing worker keeps such an entry under
its lease and hands it back once the remaining wait fits (``hand_back_idle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from streampipe_worker.deadletter import DeadLetter
from streampipe_worker.handler_runner import HandlerFailure
from streampipe_worker.router import Entry, PermanentError


class RetryPolicy(BaseModel):
    """How often and how patiently an entry is retried."""

    model_config = ConfigDict(frozen=True)

    max_deliveries: int = Field(default=3, ge=1)
    backoff_initial: timedelta = timedelta(seconds=1)
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    backoff_max: timedelta = timedelta(minutes=5)
    claim_idle: timedelta = timedelta(seconds=60)

    def backoff(self, deliveries: int) -> float:
        """Seconds to wait after the ``deliveries``-th attempt failed: initial * multiplier^(n-1), capped."""
        exponent = max(deliveries - 1, 0)
        initial = self.backoff_initial.total_seconds()
        cap = self.backoff_max.total_seconds()
        # Bound the exponent first: multiplier ** 1000 overflows a float long before it matters.
        if initial <= 0:
            return 0.0
        wait = initial
        for _ in range(exponent):
            wait *= self.backoff_multiplier
            if wait >= cap:
                return cap
        return min(wait, cap)

    def exhausted(self, deliveries: int) -> bool:
        """A failure at this delivery count is the last one: the entry goes to the dead-letter stream."""
        return deliveries >= self.max_deliveries

    def hand_back_idle(self, remaining: float) -> int | None:
        """IDLE (ms) to set when handing back an entry that may run again in ``remaining`` seconds.

        None when the wait is longer than claimIdle: the entry must stay under this worker's lease.
        """
        claim_idle_ms = int(self.claim_idle.total_seconds() * 1000)
        remaining_ms = max(int(remaining * 1000 + 0.999), 0)
        if remaining_ms > claim_idle_ms:
            return None
        return claim_idle_ms - remaining_ms

    @property
    def lease_interval(self) -> float:
        """How often held entries are re-claimed (JUSTID): a quarter of claimIdle, at most 10 s."""
        return min(self.claim_idle.total_seconds() / 4, 10.0)

    @property
    def reclaim_interval(self) -> float:
        """How often XAUTOCLAIM looks for due retries and orphans: fine enough for the shortest backoff.

        Bounded to [50 ms, 500 ms] so a peer's handed-back entries are taken well within a second.
        """
        shortest = min(self.backoff_initial.total_seconds(), self.claim_idle.total_seconds())
        return min(max(shortest / 4, 0.05), 0.5)


class Runnable(NamedTuple):
    """Reclaimed entries that may still run, with their dedupe markers (None when dedupe is off)."""

    entries: list[Entry]
    markers: list[str] | None


def drop_exhausted(
    entries: list[Entry], markers: list[str] | None, max_deliveries: int, dead: list[DeadLetter]
) -> Runnable:
    """Reclaimed entries already delivered more than ``max_deliveries`` times never ran to the end
    (their workers crashed or lost the lease): they go to ``dead`` without running."""
    if all(entry.deliveries <= max_deliveries for entry in entries):
        return Runnable(entries, markers)
    runnable: list[Entry] = []
    runnable_markers: list[str] = []
    for index, entry in enumerate(entries):
        if entry.deliveries > max_deliveries:
            reason = (
                f"delivered {entry.deliveries} times without a result (max {max_deliveries}): the workers "
                "handling it crashed or lost their lease"
            )
            dead.append(DeadLetter(entry, reason, rejected=False))
        else:
            runnable.append(entry)
            if markers is not None:
                runnable_markers.append(markers[index])
    return Runnable(runnable, runnable_markers if markers is not None else None)


class FailedEntry(NamedTuple):
    """An entry whose handler call failed, to be retried."""

    entry: Entry
    error: BaseException


def sort_failures(
    entries: Sequence[Entry], failures: Sequence[HandlerFailure], policy: RetryPolicy, dead: list[DeadLetter]
) -> list[FailedEntry]:
    """A PermanentError or a failure at the last delivery goes to ``dead``; the entries to retry are
    returned, in the order they failed."""
    retry: list[FailedEntry] = []
    for index, exc in failures:
        entry = entries[index]
        if isinstance(exc, PermanentError):
            dead.append(DeadLetter(entry, exc, rejected=True))
        elif policy.exhausted(entry.deliveries):
            dead.append(DeadLetter(entry, exc, rejected=False))
        else:
            retry.append(FailedEntry(entry, exc))
    return retry
