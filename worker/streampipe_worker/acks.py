"""The ack buffer: ids of processed entries (and their dedupe markers) waiting for their ``XACK``.

With dedupe on (``DEDUPE_TTL``) it also sorts out, before a batch runs, the entries whose processed
marker exists: they are acked unrun.

The reader takes what is buffered and sends it with its next ``XREADGROUP`` (one round trip per
batch); if the round trip fails the ids go back to the front of the buffer, because acking again is
harmless (``XACK`` is idempotent). With dedupe on, a marker and its ack land in one ``MULTI``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, NamedTuple

from streampipe_worker.producer import DEDUPE_KEY_FIELD
from streampipe_worker.router import Entry

log = logging.getLogger("streampipe.worker")

SEND_CHUNK = 10_000  # ids per XACK (and its MULTI of markers) outside the hot path
TAKEN_HISTORY = 256  # takes remembered by processed_since


class TakenAcks(NamedTuple):
    """Acks taken out of the buffer to be sent."""

    ids: list[str]
    markers: list[str]  # dedupe markers to set with the XACK; empty when dedupe is off


class Unprocessed(NamedTuple):
    """A batch without the entries processed before (their markers exist)."""

    entries: list[Entry]
    markers: list[str]  # the dedupe marker of each entry, set when it is acked
    repeated: int  # entries left out (and acked unrun)


def dedupe_key(stream: str, group: str, entry_id: str, fields: dict[str, str]) -> str:
    """The processed marker of an entry: its ``dedupe_key`` field if the producer set one, else its id."""
    return f"{stream}:dedupe:{group}:{fields.get(DEDUPE_KEY_FIELD) or entry_id}"


class AckBuffer:
    """Processed entries not yet acked, sent by one multi-id ``XACK``."""

    def __init__(self, client: Any, stream: str, group: str, dedupe_ms: int | None) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dedupe_ms = dedupe_ms
        self.ids: list[str] = []
        self.markers: list[str] = []
        # The ids of the last takes, numbered: an id that left the buffer (acked, or being acked) while
        # a hand-back was on its way is still known as processed here (``processed_since``).
        self.takes = 0
        self._taken: deque[tuple[int, list[str]]] = deque(maxlen=TAKEN_HISTORY)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: list[str], markers: list[str]) -> None:
        self.ids.extend(ids)
        self.markers.extend(markers)

    def add_one(self, entry_id: str, marker: str) -> None:
        self.ids.append(entry_id)
        self.markers.append(marker)

    def take(self) -> TakenAcks | None:
        """Everything buffered (the buffer is empty afterwards), or None when there is nothing."""
        if not self.ids:
            return None
        taken = TakenAcks(self.ids, self.markers)
        self.ids, self.markers = [], []
        self.takes += 1
        self._taken.append((self.takes, taken.ids))
        return taken

    def processed_since(self, mark: int) -> set[str]:
        """The ids buffered now and those taken after take number ``mark`` (``takes`` read earlier):
        everything processed here that may have been acked since then. Only the last
        ``TAKEN_HISTORY`` takes are kept, far more than happen during one hand-back's round trips."""
        processed = set(self.ids)
        for number, ids in reversed(self._taken):
            if number <= mark:
                break
            processed.update(ids)
        return processed

    def restore(self, taken: TakenAcks) -> None:
        """Put acks whose fate is unknown back in front of what was buffered since."""
        self.ids[:0] = taken.ids
        self.markers[:0] = taken.markers

    @staticmethod
    def note_reply(ids: list[str], acked: int) -> None:
        """Log when ``XACK`` acked fewer ids than it was sent."""
        if acked < len(ids):
            # Not an error: a previous try may have landed before the connection dropped, or a peer
            # took an entry after our lease lapsed. Either way no entry was acked twice by us.
            log.info("XACK: %d of %d entries were no longer pending", len(ids) - acked, len(ids))

    async def send(self, taken: TakenAcks) -> None:
        """``XACK`` the taken ids; with markers, ``MULTI { SET marker 1 PX ttl ... ; XACK }``."""
        ids, markers = taken
        for start in range(0, len(ids), SEND_CHUNK):
            chunk = ids[start : start + SEND_CHUNK]
            if markers:
                # The marker and the XACK land together or not at all.
                transaction = self.client.pipeline(transaction=True)
                for marker in markers[start : start + SEND_CHUNK]:
                    transaction.set(marker, "1", px=self.dedupe_ms)
                transaction.xack(self.stream, self.group, *chunk)
                replies = await transaction.execute()
                self.note_reply(chunk, int(replies[-1]))
            else:
                self.note_reply(chunk, int(await self.client.xack(self.stream, self.group, *chunk)))

    async def skip_duplicates(self, entries: list[Entry]) -> Unprocessed:
        """One MGET of the markers; entries whose marker exists (or that repeat a key earlier in this
        batch) are buffered for their ack unrun."""
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
                self.add_one(entry.id, marker)
        return Unprocessed(fresh, fresh_markers, len(entries) - len(fresh))

    async def flush(self) -> None:
        """Send everything buffered; on any failure it stays buffered."""
        taken = self.take()
        if taken is None:
            return
        try:
            await self.send(taken)
        except BaseException:
            self.restore(taken)
            raise
