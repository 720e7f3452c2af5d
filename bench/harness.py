"""What every benchmark shares: servers, the example event, a raw pipelined connection, process stats.

Nothing here measures on its own; the benchmark modules do. Processes and servers started here are
stopped by PID by whoever started them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    # tests.support.servers starts real servers the same way the test suite does.
    sys.path.insert(0, str(ROOT))

import hiredis  # noqa: E402
from tests.support.servers import ServerProcess, find_binary, free_port, start_server  # noqa: E402

import redis  # noqa: E402

GROUP = "bench"
__all__ = ["free_port"]  # re-exported for the benchmark modules
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# --- the example event (examples/handlers: order.created v1, OrderCreated) ---------------------------


def example_payload(i: int) -> str:
    """The JSON payload of the i-th example order (shop_handlers.billing.OrderCreated), as
    ``model_dump_json`` writes it."""
    return f'{{"order_id":{i},"total":{round((i % 1000) * 1.37 + 5, 2)!r},"currency":"EUR"}}'


def example_fields(i: int) -> dict[str, str]:
    """The stream fields the Producer writes for the i-th example order."""
    return {"type": "order.created", "version": "1", "payload": example_payload(i)}


# --- servers ------------------------------------------------------------------------------------------

SERVER_LABELS = {"valkey9": "Valkey", "redis7": "Redis", "redis8": "Redis"}


@dataclass
class BenchServer:
    """A server this run started (stopped by PID)."""

    kind: str
    process: ServerProcess

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=60, **options)

    def version(self) -> str:
        info = self.client().info("server")
        for key in ("valkey_version", "redis_version"):
            if key in info:
                return f"{SERVER_LABELS.get(self.kind, self.kind)} {info[key]}"
        return self.kind

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])


@contextlib.contextmanager
def running_server(kind: str) -> Iterator[BenchServer]:
    """``valkey9`` or ``redis7`` on a free loopback port, no persistence, stopped at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=f"streampipe-bench-{kind}-"))
    # io-threads stay off (the default): the single-threaded server is what users run.
    process = start_server(kind, workdir)
    try:
        yield BenchServer(kind, process)
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def redis_benchmark_binary() -> Path:
    return find_binary("redis-benchmark")


# --- a raw pipelined connection -------------------------------------------------------------------------


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP, packed by hiredis (C)."""
    return bytes(hiredis.pack_command(tuple(args)))


class RawPipeline:
    """A socket that streams pre-packed commands and drains the replies, with no client-side work.

    Used where the client must not be the bottleneck: filling streams and measuring the server's own
    ceiling. Replies are not parsed: ``run`` appends ``PING`` and waits for its ``+PONG``.
    """

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._hello: list[bytes] = []
        if parsed.password:
            user = [unquote(parsed.username)] if parsed.username else []
            self._hello.append(pack("AUTH", *user, unquote(parsed.password)))
        database = parsed.path.strip("/")
        if database and database != "0":
            self._hello.append(pack("SELECT", database))

    def close(self) -> None:
        self.sock.close()

    def run(self, chunks: Iterable[bytes]) -> int:
        """Send every chunk (then a PING) while draining replies; return the reply bytes read."""
        error: list[BaseException] = []

        def write() -> None:
            try:
                # A generator may pace its chunks (the latency producer): never materialise it.
                for chunk in itertools.chain(self._hello, chunks):
                    self.sock.sendall(chunk)
                self.sock.sendall(pack("PING"))
            except BaseException as exc:  # reported by the reading side
                error.append(exc)

        self._hello = []
        writer = threading.Thread(target=write, name="raw-writer", daemon=True)
        writer.start()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        total = 0
        # An error reply is the only one that starts with "-" (entry ids, counts and these payloads
        # never do); the first reply follows no CRLF, hence the seeded tail.
        tail = b"\r\n"
        failed = False
        while True:
            size = self.sock.recv_into(view)
            if size == 0:
                raise ConnectionError("server closed the connection")
            total += size
            chunk = bytes(view[:size])
            failed = failed or b"\r\n-" in tail[-2:] + chunk
            tail = (tail + chunk[-16:])[-16:]
            if tail.endswith(b"+PONG\r\n"):
                break  # the PING went out last, so the writer is done
            if error:
                raise error[0]
        writer.join()
        if failed:
            raise RuntimeError("the server answered a pipelined command with an error")
        return total


def entry_id(i: int) -> str:
    """Explicit ids for filled streams: 1-1, 1-2, ... so a reader knows which ids batch k holds."""
    return f"1-{i + 1}"


def _xadd_chunks(stream: str, count: int, chunk: int) -> Iterator[bytes]:
    # Packed by hand: hiredis + json.dumps per entry would make the fill slower than the benchmarks.
    key = stream.encode()
    head = b"*9\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n" % (len(key), key)
    fields = b"$4\r\ntype\r\n$13\r\norder.created\r\n$7\r\nversion\r\n$1\r\n1\r\n$7\r\npayload\r\n"
    for start in range(0, count, chunk):
        parts = []
        for i in range(start, min(start + chunk, count)):
            eid = b"1-%d" % (i + 1)
            payload = example_payload(i).encode()
            parts.append(
                b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (head, len(eid), eid, fields, len(payload), payload)
            )
        yield b"".join(parts)


def fill_example_stream(url: str, stream: str, count: int, chunk: int = 5000) -> None:
    """``count`` example events with explicit ids ``1-1..1-count``, pipelined raw (~2 s per million)."""
    pipe = RawPipeline(url)
    try:
        pipe.run(_xadd_chunks(stream, count, chunk))
    finally:
        pipe.close()


# --- processes ------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a benchmark child: no inherited STREAMPIPE_*, bench/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH", "")] if p)
    env.update(extra or {})
    return env


def worker_env(
    url: str, stream: str, group: str, *, consumer: str, handler: str, batch_size: int, **more: str
) -> dict[str, str]:
    """A ``streampipe-worker``'s environment (the variable names come from the worker's settings)."""
    from streampipe_worker.settings import WorkerSettings

    name = WorkerSettings.env_name
    values = {
        name("redis_url"): url,
        name("stream"): stream,
        name("group"): group,
        name("consumer"): consumer,
        name("handler"): handler,
        name("batch_size"): str(batch_size),
        name("metrics_port"): "0",
        name("log_format"): "text",
    }
    values.update({name(key): value for key, value in more.items()})
    return bench_env(values)


WORKER_COMMAND = [sys.executable, "-m", "streampipe_worker"]


def spawn(command: Sequence[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=log)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL; only the process this run started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def group_progress(client: redis.Redis, stream: str, group: str) -> tuple[int, int]:
    """(entries read, entries acked) of one group, from XINFO GROUPS."""
    for info in client.xinfo_groups(stream):
        if info["name"] == group:
            read = int(info["entries-read"] or 0)
            return read, read - int(info["pending"])
    raise RuntimeError(f"stream {stream}: group {group} missing")


def log_tail(log: Any, size: int = 2000) -> str:
    log.flush()
    log.seek(0)
    text: str = log.read().decode(errors="replace") if "b" in getattr(log, "mode", "") else log.read()
    return text[-size:]


def progress(message: str) -> None:
    """One progress line on stderr, with the time of day (make bench prints these)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
