"""Scale-out: 1, 2 and 4 ``streampipe-worker`` processes in one group vs the server's own ceiling.

The ceiling is the server serving exactly the commands the workers send (``XREADGROUP COUNT n`` and
one multi-id ``XACK`` per batch) as fast as it can: one raw connection streams them all pipelined,
with no client-side parsing, so the only limit is the server. The filled stream has explicit ids
(1-1, 1-2, ...) and one reader, so the ids batch k returns, and hence its XACK, are known up front.
Workers and ceiling read the same stream, each through a fresh group, in interleaved rounds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from harness import BenchServer, RawPipeline, cpu_seconds, entry_id, pack, progress
from worker_throughput import STREAM, Sample, measure

PROCESS_COUNTS = (1, 2, 4)


@dataclass
class Ceiling:
    """The server alone, pipelined: entries per second for ``XREADGROUP COUNT batch`` + ``XACK``."""

    batch: int
    rate: float
    entries: int
    seconds: float
    server_cpu_us: float | None  # per entry
    server_busy: float | None  # fraction of one core during the run


def ceiling(server: BenchServer | None, url: str, batch: int, entries: int) -> Ceiling:
    """Stream ``entries`` worth of the workers' commands through one pipelined connection."""
    client = redis.Redis.from_url(url, decode_responses=True)
    group = f"ceiling-{batch}-{secrets.token_hex(3)}"
    client.xgroup_create(STREAM, group, id="0")
    try:
        entries = min(entries, int(client.xlen(STREAM)))
        requests = [
            pack("XREADGROUP", "GROUP", group, "c1", "COUNT", batch, "STREAMS", STREAM, ">")
            + pack("XACK", STREAM, group, *(entry_id(i) for i in range(k, min(k + batch, entries))))
            for k in range(0, entries, batch)
        ]
        pipe = RawPipeline(url)
        try:
            cpu0 = cpu_seconds(server.pid) if server else 0.0
            started = time.perf_counter()
            pipe.run(requests)
            seconds = time.perf_counter() - started
            cpu = (cpu_seconds(server.pid) - cpu0) if server else None
        finally:
            pipe.close()
        info = next(g for g in client.xinfo_groups(STREAM) if g["name"] == group)
        if int(info["entries-read"] or 0) < entries or int(info["pending"]) != 0:
            raise RuntimeError(f"ceiling run left {info} (expected {entries} read and acked)")
        return Ceiling(
            batch=batch,
            rate=entries / seconds,
            entries=entries,
            seconds=round(seconds, 3),
            server_cpu_us=cpu / entries * 1e6 if cpu is not None else None,
            server_busy=cpu / seconds if cpu is not None else None,
        )
    finally:
        client.xgroup_destroy(STREAM, group)
        client.close()


def sweep(
    server: BenchServer | None,
    url: str,
    *,
    batch: int = 1000,
    counts: Sequence[int] = PROCESS_COUNTS,
    rounds: int = 3,
    window: float = 1.5,
    ceiling_entries: int = 1_000_000,
) -> tuple[list[Sample], list[Ceiling]]:
    """Interleaved rounds of the ceiling and each worker count."""
    samples: list[Sample] = []
    ceilings: list[Ceiling] = []
    for round_no in range(1, rounds + 1):
        top = ceiling(server, url, batch, ceiling_entries)
        ceilings.append(top)
        progress(f"  scale-out round {round_no}/{rounds}: server ceiling {top.rate:,.0f}/s")
        for count in counts:
            sample = measure("streampipe", batch, server, url, STREAM, processes=count, window=window)
            samples.append(sample)
            share = sample.rate / top.rate
            progress(
                f"  scale-out round {round_no}/{rounds}: {count} workers {sample.rate:,.0f}/s ({share:.0%})"
            )
    return samples, ceilings
