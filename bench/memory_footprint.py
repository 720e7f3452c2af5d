"""Memory: a worker's RSS when idle, and the server's memory per million example events.

- Worker idle: a real ``streampipe-worker`` (batch 100, metrics on, as deployed) on an empty stream,
  read from /proc once it has joined its group and settled. Under load: the RSS the throughput runs
  record at the end of their window (``Sample.consumer_rss_mb``).
- Server: ``used_memory`` before and after ``Producer.send_many`` of N example events (auto ids, as a
  producer writes them), scaled to one million, on each server kind.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import redis
from harness import (
    WORKER_COMMAND,
    BenchServer,
    free_port,
    log_tail,
    rss_bytes,
    running_server,
    spawn,
    stop,
    worker_env,
)


@dataclass
class ServerMemory:
    server: str
    entries: int
    used_memory_delta_mb: float
    mb_per_million: float
    bytes_per_entry: float


def worker_idle_rss_mb(server: BenchServer, settle: float = 2.0) -> float:
    """RSS of an idle worker that has joined its group (metrics server on, as in a pod)."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    stream, group = "bench:idle", "idle"
    client.xgroup_create(stream, group, id="$", mkstream=True)
    # As deployed: with its /metrics and probe server on (the benchmarks' workers turn it off).
    env = worker_env(
        server.url,
        stream,
        group,
        consumer="idle1",
        handler="probe_handlers:noop",
        batch_size=100,
        metrics_port=str(free_port()),
    )
    with tempfile.TemporaryFile(mode="w+b") as log:
        proc = spawn(WORKER_COMMAND, env, log)
        try:
            deadline = time.monotonic() + 30
            while not client.xinfo_consumers(stream, group):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"idle worker did not start: {log_tail(log)}")
                time.sleep(0.05)
            time.sleep(settle)
            return rss_bytes(proc.pid) / 2**20
        finally:
            stop(proc)
            client.delete(stream)
            client.close()


def server_memory(kind: str, entries: int = 200_000) -> ServerMemory:
    """A fresh server of ``kind``: memory used by ``entries`` example events, scaled per million."""
    from producer_throughput import _events
    from streampipe_worker.connection import ConnectionSettings, create_client
    from streampipe_worker.producer import Producer

    with running_server(kind) as server:
        client = create_client(ConnectionSettings(url=server.url))
        before = server.used_memory()
        Producer(client, "{orders}:events").send_many(_events(entries))  # type: ignore[arg-type]
        delta = server.used_memory() - before
        version = server.version()
        client.close()
    return ServerMemory(
        server=version,
        entries=entries,
        used_memory_delta_mb=delta / 2**20,
        mb_per_million=delta / 2**20 * 1_000_000 / entries,
        bytes_per_entry=delta / entries,
    )
