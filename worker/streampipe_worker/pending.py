"""One consumer's view of its group's pending entries list (PEL): who owns an id, how often it was
delivered, and handing ids back (``XCLAIM ... IDLE n JUSTID``) to this same consumer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CHUNK = 1000  # ids per XCLAIM / per pipeline of XPENDING outside the hot path
PEL_PAGE = 10_000  # rows of this consumer's PEL read at start-up and at shutdown


class PendingEntries:
    """PEL reads and hand-backs for ``consumer`` in ``group`` of ``stream``."""

    def __init__(self, client: Any, stream: str, group: str, consumer: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
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

    async def mine(self, ids: Sequence[str]) -> dict[str, int]:
        """Of ``ids``, those pending for this consumer, with their delivery counts (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        rows = await pipe.execute()
        return {
            entry_id: int(row[0]["times_delivered"])
            for entry_id, row in zip(ids, rows, strict=True)
            if row and row[0]["consumer"] == self.consumer
        }

    async def held(self) -> list[dict[str, Any]]:
        """This consumer's PEL rows (``message_id``, ``times_delivered``, ...), oldest first."""
        rows: list[dict[str, Any]] = await self.client.xpending_range(
            self.stream, self.group, "-", "+", PEL_PAGE, consumername=self.consumer
        )
        return rows

    async def claim(self, by_idle: Mapping[int, Sequence[str]], retrycount: int | None = None) -> list[str]:
        """``XCLAIM <ids> IDLE <idle> [RETRYCOUNT n] JUSTID`` to this consumer, one pipeline for all.

        Returns the ids XCLAIM did not return: no longer pending (acked), or pending entries whose
        stream entry was deleted, which XCLAIM drops from the PEL without a word.
        """
        if not by_idle:
            return []
        pipe = self.client.pipeline(transaction=False)
        for idle, ids in by_idle.items():
            for start in range(0, len(ids), CHUNK):
                pipe.xclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    0,
                    ids[start : start + CHUNK],
                    idle=idle,
                    retrycount=retrycount,
                    justid=True,
                )
        replies = await pipe.execute()
        claimed = {str(entry_id) for reply in replies for entry_id in reply}
        return [entry_id for ids in by_idle.values() for entry_id in ids if entry_id not in claimed]

    async def gone_from_stream(self, ids: Sequence[str]) -> list[str]:
        """Of ``ids``, those whose stream entry no longer exists (trimmed or deleted)."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.stream, entry_id, entry_id, count=1)
        rows = await pipe.execute()
        return [entry_id for entry_id, found in zip(ids, rows, strict=True) if not found]
