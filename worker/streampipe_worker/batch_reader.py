"""The reader's round trip: the last batch's ``XACK`` and the next ``XREADGROUP``, one write.

On a standalone or Sentinel client it goes over the reader's own connection (``read_channel.py``)
and the raw reply is parsed here; on a Cluster client (or a RESP3 one) it is a redis-py pipeline.
With dedupe markers the acks go first as their own transaction (``AckBuffer.send``).
"""

from __future__ import annotations

from typing import Any

from streampipe_worker.acks import AckBuffer, TakenAcks
from streampipe_worker.read_channel import ReadChannel
from streampipe_worker.router import Entry
from streampipe_worker.settings import WorkerSettings


class BatchReader:
    """``read()`` flushes the ack buffer and returns the next batch (first deliveries, in id order)."""

    def __init__(self, client: Any, settings: WorkerSettings, acks: AckBuffer) -> None:
        self.client = client
        self.acks = acks
        self.stream = settings.stream
        self.group = settings.group
        self.channel = ReadChannel(client) if ReadChannel.supports(client) else None
        block_ms = max(int(settings.block.total_seconds() * 1000), 1)
        read = ("XREADGROUP", "GROUP", settings.group, settings.consumer, "COUNT", settings.batch_size)
        self.xreadgroup = (*read, "BLOCK", block_ms, "STREAMS", settings.stream, ">")

    async def read(self) -> list[Entry]:
        acks = self.acks.take()
        try:
            if self.channel is not None:
                return await self._on_channel(self.channel, acks)
            return await self._pipelined(acks)
        except BaseException:
            # Unknown whether the XACK ran: keep the ids; acking again is harmless (XACK is idempotent).
            if acks:
                self.acks.restore(acks)
            raise

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def _on_channel(self, channel: ReadChannel, acks: TakenAcks | None) -> list[Entry]:
        commands: list[tuple[Any, ...]] = [self.xreadgroup]
        if acks and acks.markers:
            await self.acks.send(acks)
        elif acks:
            commands.insert(0, ("XACK", self.stream, self.group, *acks.ids))
        replies = await channel.call(commands)
        for reply in replies:
            if isinstance(reply, Exception):  # an error reply; the connection is still in step
                raise reply
        if len(replies) == 2 and acks:
            AckBuffer.note_reply(acks.ids, replies[0])
        read = replies[-1]
        if not read:
            return []
        # [[stream, [[id, [field, value, ...]], ...]]]; an entry's fields are never nil for ">". The
        # server sends fields in pairs; zip over one iterator twice is the cheapest pairing (no slices).
        stream, group = self.stream, self.group
        entries: list[Entry] = []
        append = entries.append
        for entry_id, fields in read[0][1]:
            pairs = iter(fields)
            append(Entry(entry_id, dict(zip(pairs, pairs)), 1, stream, group))  # noqa: B905
        return entries

    async def _pipelined(self, acks: TakenAcks | None) -> list[Entry]:
        if acks and not acks.markers:
            pipe = self.client.pipeline(transaction=False)  # Cluster: routed by key
            pipe.execute_command("XACK", self.stream, self.group, *acks.ids)
            pipe.execute_command(*self.xreadgroup)
            acked, reply = await pipe.execute()
            AckBuffer.note_reply(acks.ids, acked)
        else:
            if acks:
                await self.acks.send(acks)
            reply = await self.client.execute_command(*self.xreadgroup)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3 shape
            pairs = [entry for entries in reply.values() for entry in entries[0]]
        else:
            pairs = reply[0][1]
        return [Entry(entry_id, fields, 1, self.stream, self.group) for entry_id, fields in pairs]
