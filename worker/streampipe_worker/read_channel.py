"""The reader's own connection: one write per batch, replies parsed by hiredis as the bytes arrive.

The consumer's hot path is one round trip per batch (``XACK`` of the last batch and the next
``XREADGROUP``). Through redis.asyncio that round trip cost about 140 µs of CPU before any entry was
handled, more than a whole round trip of a bare synchronous loop: a pooled connection checked out
and back, a timeout armed per send and per reply, a ``StreamReader`` hop and reply callbacks per
command. :class:`ReadChannel` takes one connection out of the client's pool for as long as it reads
(connected, authenticated, TLS and Sentinel discovery all done by redis-py) and puts its own asyncio
protocol on the connection's transport: the event loop hands each chunk of bytes straight to a
hiredis reader, the reader's waiter is woken once every reply is in, and one timer (the client's
socket timeout, as it bounded redis-py's reads) bounds the whole round trip. Error replies become
the exceptions redis-py raises for them (its own parser's table), so callers classify them as
before.

The connection is never given back to redis-py in a usable state: on any failure, cancellation or
timeout, and on ``close()``, it is disconnected and released, and the pool reconnects it when it is
next taken. A reply that was not read (a cancelled ``XREADGROUP BLOCK``) is thus never read by
anyone else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio
import redis.exceptions
from redis._parsers import BaseParser

from streampipe_worker.connection import pack_command


class _Replies(asyncio.Protocol):
    """Feeds what the transport receives into hiredis; wakes the waiter once ``expected`` replies are in."""

    def __init__(self, reader: Any, where: str) -> None:
        self._reader = reader
        self._where = where
        self._waiter: asyncio.Future[None] | None = None
        self._expected = 0
        self.replies: list[Any] = []
        self.broken: BaseException | None = None

    def expect(self, count: int, waiter: asyncio.Future[None]) -> None:
        self._expected = count
        self.replies = []
        self._waiter = waiter

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            replies = self.replies
            while len(replies) < self._expected:
                reply = self._reader.gets()
                if reply is False:
                    return
                replies.append(reply)
        except Exception as exc:  # a protocol error: the stream cannot be trusted any more
            self._fail(exc)
            return
        if self._expected and len(self.replies) >= self._expected:
            self._expected = 0
            self._wake(None)
        # Bytes with no request waiting for them would be a protocol error; they stay in the reader,
        # and the next request's count makes that visible as wrong replies. A RESP2 server sends none.

    def eof_received(self) -> bool:
        self._fail(redis.exceptions.ConnectionError(f"Connection closed by server ({self._where})."))
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._fail(redis.exceptions.ConnectionError(f"Connection closed ({self._where})."))
        else:
            error = redis.exceptions.ConnectionError(f"Error while reading from {self._where}: {exc}")
            error.__cause__ = exc
            self._fail(error)

    def time_out(self, seconds: float) -> None:
        self._fail(redis.exceptions.TimeoutError(f"Timeout reading from {self._where} after {seconds:g}s"))

    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        self._wake(exc)

    def _wake(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)


class ReadChannel:
    """Sends commands in one write on a connection of its own and returns their replies in order.

    Replies are raw hiredis values decoded like the client's (RESP2 arrays as lists, error replies as
    exception objects, not raised): callers parse what they asked for. Made only for a standalone or
    Sentinel ``redis.asyncio.Redis``; Cluster clients route per key and keep their own path.
    """

    def __init__(self, client: Any) -> None:
        self._pool: Any = client.connection_pool
        # None: no timer, as redis-py reads without one (the factory's clients always have one).
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        self._connection: Any = None
        self._transport: Any = None
        self._protocol: _Replies | None = None

    @staticmethod
    def supports(client: Any) -> bool:
        """A standalone or Sentinel client on RESP2, as the factory makes them (RESP3: redis-py's path)."""
        if not isinstance(client, redis.asyncio.Redis):
            return False
        return client.connection_pool.connection_kwargs.get("protocol", 2) in (None, 2, "2")

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        protocol = self._protocol
        if protocol is None or protocol.broken is not None or self._transport.is_closing():
            await self.close()
            protocol = await self._open()
        connection = self._connection
        packed = b"".join([pack_command(command, connection.encoder) for command in commands])
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        protocol.expect(len(commands), waiter)
        timeout = self._timeout
        timer = None if timeout is None else loop.call_later(timeout, protocol.time_out, timeout)
        try:
            self._transport.write(packed)
            await waiter
        except BaseException:
            # Cancelled, timed out or lost: replies may be unread, so this connection is done.
            await self.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return protocol.replies

    async def _open(self) -> _Replies:
        connection = await self._pool.get_connection()
        try:
            writer = connection._writer  # redis.asyncio's stream, connected and set up by redis-py
            if writer is None:
                raise redis.exceptions.ConnectionError("the pool gave a connection that is not connected")
            encoder = connection.encoder
            options: dict[str, Any] = {
                "protocolError": redis.exceptions.InvalidResponse,
                "replyError": BaseParser.parse_error,
            }
            if encoder.decode_responses:
                options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
            where = f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
            protocol = _Replies(hiredis.Reader(**options), where)
            transport = writer.transport
            transport.set_protocol(protocol)
        except BaseException:
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)
            raise
        self._connection, self._transport, self._protocol = connection, transport, protocol
        return protocol

    async def close(self) -> None:
        """Disconnect and release the connection (if one is held). Safe to call more than once."""
        connection, self._connection = self._connection, None
        self._transport = self._protocol = None
        if connection is None:
            return
        try:
            await connection.disconnect(nowait=True)
        finally:
            await self._pool.release(connection)
