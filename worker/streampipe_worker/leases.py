"""Lease bookkeeping: the entries this consumer holds, keeping them, and handing them back.

Held entries are the batches in flight, the processed ones whose ack is still buffered, and failed
ones waiting out a backoff longer than claimIdle. Every claimIdle/4 their leases are renewed
(``XCLAIM ... JUSTID`` after XPENDING says they are still ours). A failed entry is handed back with
``XCLAIM ... IDLE (claimIdle - backoff) JUSTID`` so it becomes claimable when its backoff has passed;
at shutdown everything else is handed back with ``IDLE claimIdle``, and at start-up what a previous
run under this consumer name left pending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis.exceptions

from streampipe_worker.acks import AckBuffer
from streampipe_worker.entry_ids import ZERO, EntryId
from streampipe_worker.metrics import Stats, WorkerMetrics
from streampipe_worker.pending import PendingEntries
from streampipe_worker.redis_errors import is_transient, retry_while_transient
from streampipe_worker.retry import RetryPolicy
from streampipe_worker.router import Entry

log = logging.getLogger("streampipe.worker")


class Leases:
    """What one consumer holds, and its lease on it."""

    def __init__(
        self, pel: PendingEntries, policy: RetryPolicy, acks: AckBuffer, stats: Stats, metrics: WorkerMetrics
    ) -> None:
        self.pel = pel
        self.policy = policy
        self.acks = acks
        self.stats = stats
        self.metrics = metrics
        self.claim_idle_ms = int(policy.claim_idle.total_seconds() * 1000)
        self.in_flight: dict[int, list[Entry]] = {}  # batch token -> its entries
        self.unstarted: list[Entry] = []  # delivered here, never started (stop requested)
        self.waiting: dict[str, float] = {}  # long-backoff entries held here: id -> monotonic due time
        # Failed entries already handed back (or on their way to the DLQ) while their batch is still
        # in flight: the leaser must not renew them, or it would reset their backoff.
        self.released: set[str] = set()
        # The highest entry id that reached this process (read, reclaimed, or left by a previous run).
        # XREADGROUP ">" only delivers ids above every id the group delivered before, so an entry
        # pending here above this mark came from a read whose reply never arrived: never attempted.
        self.seen_up_to: EntryId = ZERO
        self.abandoned: list[str] = []  # in flight when the grace period ended (set at shutdown)
        self._next_token = 0

    # --- bookkeeping (no I/O) ---------------------------------------------------------------------

    def note_seen(self, entry_id: str) -> None:
        seen = EntryId.parse(entry_id)
        self.seen_up_to = max(self.seen_up_to, seen)

    def not_in_flight(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` without those already in flight here (and not released for a retry).

        After a lease lapsed (a partition, a stalled server) one entry can reach this consumer twice:
        the late reply of its XREADGROUP and its own XAUTOCLAIM. The copy in flight settles it;
        running the second would repeat the side effect (or the dead-letter move).
        """
        if not self.in_flight:
            return entries
        held = {entry.id for batch in self.in_flight.values() for entry in batch}
        held -= self.released  # failed ones handed back for retry may come back
        if held and any(entry.id in held for entry in entries):
            again = [entry.id for entry in entries if entry.id in held]
            log.info("%d entries delivered again while in flight here: %s", len(again), again[:10])
            return [entry for entry in entries if entry.id not in held]
        return entries

    def start(self, entries: list[Entry]) -> int:
        """Hold a batch while it runs; the token ends it (``finish``)."""
        token = self._next_token
        self._next_token += 1
        self.in_flight[token] = entries
        return token

    def finish(self, token: int) -> None:
        entries = self.in_flight.pop(token)
        if self.released:
            self.released.difference_update(entry.id for entry in entries)

    def abandon_in_flight(self) -> int:
        """At the end of the grace period: remember what is in flight for the hand-back (except
        entries already handed back with their backoff); returns how many entries were in flight."""
        self.abandoned = [
            entry.id for batch in self.in_flight.values() for entry in batch if entry.id not in self.released
        ]
        return sum(len(batch) for batch in self.in_flight.values())

    def held_ids(self) -> list[str]:
        held = [entry.id for batch in self.in_flight.values() for entry in batch]
        if self.released:
            held = [entry_id for entry_id in held if entry_id not in self.released]
        held.extend(self.acks.ids)
        held.extend(self.waiting)
        return held

    def count_trimmed(self, ids: Sequence[str]) -> None:
        """Pending entries found deleted before anyone processed them: counted and logged."""
        self.stats.trimmed += len(ids)
        self.metrics.trimmed.inc(len(ids))
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        log.warning(
            "stream %s group %s: %d pending entries were deleted (trimmed) before they were processed: %s; "
            "retention is cutting into unprocessed work",
            self.pel.stream,
            self.pel.group,
            len(ids),
            shown,
        )

    # --- with Redis -------------------------------------------------------------------------------

    async def hand_back(self, by_idle: Mapping[int, list[str]], retrycount: int | None = None) -> None:
        """XCLAIM with IDLE; ids XCLAIM dropped because their stream entry is gone are reported like
        XAUTOCLAIM's deleted ids (the others were acked meanwhile), except ids processed here whose
        ack is still buffered or was taken for sending since this call began."""
        mark = self.acks.takes
        missing = await self.pel.claim(by_idle, retrycount)
        if not missing:
            return
        # Ids processed here, whether their ack is still buffered or was sent during the round trip:
        # an entry acked (by every group) can be trimmed before we look, and is not a loss.
        processed = self.acks.processed_since(mark)
        gone = [
            entry_id for entry_id in await self.pel.gone_from_stream(missing) if entry_id not in processed
        ]
        if gone:
            self.count_trimmed(gone)

    async def schedule_retries(self, entries: list[Entry]) -> None:
        """Hand failed entries back so they become claimable when their backoff has passed."""
        now = time.monotonic()
        by_idle: dict[int, list[str]] = {}
        for entry in entries:
            wait = self.policy.backoff(entry.deliveries)
            idle = self.policy.hand_back_idle(wait)
            if idle is None:
                self.waiting[entry.id] = now + wait
            else:
                by_idle.setdefault(idle, []).append(entry.id)
        self.metrics.retried.inc(len(entries))
        try:
            await self.hand_back(by_idle)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Not handed back yet: hold them and let the leaser release them once Redis is back.
            log.warning("could not hand back %d failed entries yet: %s", len(entries), exc)
            for entry in entries:
                self.waiting.setdefault(entry.id, now + self.policy.backoff(entry.deliveries))

    async def renew(self) -> bool:
        """Renew the leases of held entries; False when there was nothing to send (no news of Redis)."""
        now = time.monotonic()
        release: dict[int, list[str]] = {}
        for entry_id, due in list(self.waiting.items()):
            idle = self.policy.hand_back_idle(due - now)
            if idle is not None:
                release.setdefault(idle, []).append(entry_id)
        if release:
            await self.hand_back(release)
            for ids in release.values():
                for entry_id in ids:
                    self.waiting.pop(entry_id, None)
        held = list(dict.fromkeys(self.held_ids()))
        if not held:
            return bool(release)
        name = self.pel.consumer
        owners = await self.pel.owners(held)
        still_held = set(self.held_ids())  # the batch may have settled during the round trip
        mine = [entry_id for entry_id in held if owners.get(entry_id) == name and entry_id in still_held]
        lost = [entry_id for entry_id in held if entry_id in owners and owners[entry_id] != name]
        if lost:
            self.metrics.lease_lost.inc(len(lost))
            log.warning(
                "%d held entries were taken by other consumers (lease lapsed?): %s", len(lost), lost[:10]
            )
            for entry_id in lost:
                self.waiting.pop(entry_id, None)
        if mine:
            await self.hand_back({0: mine})
        return True

    async def hand_back_previous_run(self) -> None:
        """Entries pending under this consumer name from an earlier process (a restarted pod): give
        them back at once instead of waiting claimIdle for them."""
        try:
            rows = await self.pel.held()
        except redis.exceptions.ResponseError:
            return  # no group yet: the reader reports it
        except Exception as exc:
            if not is_transient(exc):
                raise
            return  # the reader reports it, and reconnects
        ids = [str(row["message_id"]) for row in rows]
        if ids:
            self.note_seen(ids[-1])
            await self.hand_back({self.claim_idle_ms: ids})
            log.info(
                "handed back %d entries left pending by a previous run of consumer %s",
                len(ids),
                self.pel.consumer,
            )

    async def hand_back_all(self, until: float) -> None:
        """Everything still held goes back so a peer takes it now (or when its backoff ends).

        Entries that failed here and were handed back for retry are left as they are: their idle
        time holds the rest of their backoff and their delivery count the attempt they had.
        """
        now = time.monotonic()
        unstarted = {entry.id: entry for entry in self.unstarted}
        abandoned = [entry_id for entry_id in self.abandoned if entry_id not in unstarted]
        by_count: dict[int, list[str]] = {}
        for entry in unstarted.values():
            # Never attempted here: give the delivery back so the attempt budget stays whole.
            by_count.setdefault(entry.deliveries - 1, []).append(entry.id)
        waiting: dict[int, list[str]] = {}
        for entry_id, due in self.waiting.items():
            waiting.setdefault(self.policy.hand_back_idle(due - now) or 0, []).append(entry_id)
        claim_idle_ms = self.claim_idle_ms

        async def hand_back_everything() -> None:
            for count, ids in by_count.items():
                await self.hand_back({claim_idle_ms: ids}, retrycount=count)
            await self.hand_back({claim_idle_ms: abandoned} if abandoned else {})
            await self.hand_back(waiting)
            known = set(unstarted) | set(abandoned) | set(self.waiting)
            # Entries a cancelled XREADGROUP delivered that never reached us: never attempted
            # here, so their delivery is given back too. Ids at or below the mark reached us.
            stray: dict[int, list[str]] = {}
            for row in await self.pel.held():
                entry_id = str(row["message_id"])
                if entry_id not in known and EntryId.parse(entry_id) > self.seen_up_to:
                    retry = max(int(row["times_delivered"]) - 1, 0)
                    stray.setdefault(retry, []).append(entry_id)
            for count, ids in stray.items():
                await self.hand_back({claim_idle_ms: ids}, retrycount=count)
            total = len(unstarted) + len(abandoned) + sum(len(ids) for ids in stray.values())
            self.stats.handed_back += total
            self.metrics.handed_back.inc(total)
            if total:
                log.info("handed back %d entries for peers to take now", total)

        try:
            error = await retry_while_transient(
                hand_back_everything,
                delay=lambda attempts: 0.2,
                give_up=lambda attempts: time.monotonic() >= until,
            )
        except Exception as exc:
            error = exc
        if error is not None:
            # Not fatal: whatever was not handed back is taken by peers after claimIdle.
            log.error("could not hand back entries (%s); peers take them after claimIdle", error)
