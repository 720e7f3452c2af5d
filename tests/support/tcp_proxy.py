"""A small asyncio TCP proxy for network faults between a client and a server on loopback.

Clients connect to ``proxy.port``; each connection gets its own upstream connection. Faults, all
switchable at any time from any thread:

- ``set_latency(s)``: every chunk is delivered ``s`` seconds after it was read, in order, both ways
  (a delay line, not a throughput cap);
- ``blackhole()`` / ``heal()``: nothing moves in either direction and new connections are accepted
  but not forwarded, as in a partition; bytes already read are held and delivered on ``heal()`` (TCP
  retransmits what a short partition delayed, it does not lose it);
- ``reset_all()``: every open connection is reset (RST, no FIN) on both sides;
- ``cut_next_reply(min_bytes)``: the next server-to-client chunk of at least ``min_bytes`` is
  delivered only half, then both sides are reset: a client that pipelined several commands gets some
  replies (or part of one) and then a dead connection.

The proxy runs its own event loop in a daemon thread, so synchronous tests and processes under test
(workers in other processes) can use it alike. ``stop()`` closes everything it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client
    resets: int = 0
    cut_replies: int = 0


@dataclass(eq=False)  # identity semantics: links live in a set
class _Link:
    """One proxied connection: the client side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, timeout 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """``TcpProxy(upstream_port).start()`` ... ``stop()`` (or use :func:`running_proxy`)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.stats = ProxyStats()
        self._latency = 0.0
        self._cut_min: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._close(link, reset=False)
        if self._server is not None:
            await self._server.wait_closed()

    def _call(self, coroutine: object, timeout: float = 10.0) -> object:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    # --- faults ---------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        self._latency = seconds

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(self._set_flowing, False)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._set_flowing, True)

    def reset_all(self) -> int:
        """Reset every open connection now; returns how many were reset."""
        return int(self._call(self._reset_all()))  # type: ignore[call-overload]

    def cut_next_reply(self, min_bytes: int = 64) -> None:
        self._cut_min = min_bytes

    @property
    def cut_pending(self) -> bool:
        return self._cut_min is not None

    def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset_all(self) -> int:
        links = [link for link in self._links if not link.closed]
        for link in links:
            self._close(link, reset=True)
        return len(links)

    # --- forwarding -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # a partitioned proxy accepts, but does not reach upstream
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self.stats.connections += 1
        link = _Link(client=writer, upstream=up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Read chunks; a writer task delivers each when its latency is over (order kept)."""
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        link.tasks.append(asyncio.create_task(self._deliver(link, queue, sink, upstream=upstream)))
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                queue.put_nowait((time.monotonic() + self._latency, data))
        except (ConnectionError, OSError):
            pass
        # End of stream: what was read is still delivered (after its latency), then the link closes.
        queue.put_nowait(None)

    async def _deliver(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        sink: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        assert self._flowing is not None
        while True:
            item = await queue.get()
            if item is None:
                self._close(link, reset=False)
                return
            if link.closed:
                return
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._flowing.wait()
            if link.closed:
                return
            cut = self._cut_min
            if not upstream and cut is not None and len(data) >= cut:
                self._cut_min = None
                sink.write(data[: len(data) // 2])
                with contextlib.suppress(ConnectionError, OSError):
                    await sink.drain()
                self.stats.cut_replies += 1
                self._close(link, reset=True)
                return
            sink.write(data)
            if upstream:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            try:
                await sink.drain()
            except (ConnectionError, OSError):
                return

    def _close(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        if reset:
            self.stats.resets += 1
            _reset(link.client)
            _reset(link.upstream)
        else:
            for writer in (link.client, link.upstream):
                with contextlib.suppress(Exception):
                    writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()


@contextlib.contextmanager
def running_proxy(upstream_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
