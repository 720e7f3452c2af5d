"""Producer: ``Producer.send_many`` / ``send`` vs redis-benchmark sending the same XADD, same run.

Both send the example event (``order.created`` v1, fields type/version/payload) over one connection:
``send_many`` pipelines 1000 per round trip (its default chunk), so redis-benchmark runs with
``-c 1 -P 1000``; ``send`` is one XADD per round trip, against ``-c 1 -P 1``. ``send_many`` is timed
from a list of ready ``Event`` objects to the last reply (encoding included), with and without
validation against the billing handler's Router (examples/handlers).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import redis
from harness import ROOT, BenchServer, example_payload, progress, redis_benchmark_binary

sys.path.insert(0, str(ROOT / "examples" / "handlers" / "src"))


@dataclass
class ProducerRates:
    """Entries per second, one round."""

    send_many: float
    send_many_validated: float
    send: float
    redis_benchmark_p1000: float
    redis_benchmark_p1: float


def _events(count: int) -> list[object]:
    from streampipe_worker.producer import Event

    return [
        Event(
            type="order.created", payload={"order_id": i, "total": (i % 1000) * 1.37 + 5, "currency": "EUR"}
        )
        for i in range(count)
    ]


def _timed_send_many(url: str, stream: str, events: list[object], *, validated: bool) -> float:
    from shop_handlers.billing import router

    from streampipe_worker.connection import ConnectionSettings, create_client
    from streampipe_worker.producer import Producer

    client = create_client(ConnectionSettings(url=url))
    producer = Producer(client, stream, router=router if validated else None)
    try:
        client.delete(stream)
        started = time.perf_counter()
        ids = producer.send_many(events)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        if len(ids) != len(events):
            raise RuntimeError(f"send_many returned {len(ids)} ids for {len(events)} events")
        return len(events) / seconds
    finally:
        client.delete(stream)
        client.close()


def _timed_send(url: str, stream: str, count: int) -> float:
    from streampipe_worker.connection import ConnectionSettings, create_client
    from streampipe_worker.producer import Producer

    client = create_client(ConnectionSettings(url=url))
    producer = Producer(client, stream)
    try:
        started = time.perf_counter()
        for i in range(count):
            producer.send("order.created", {"order_id": i, "total": (i % 1000) * 1.37 + 5, "currency": "EUR"})
        return count / (time.perf_counter() - started)
    finally:
        client.delete(stream)
        client.close()


def redis_benchmark_xadd(
    server: BenchServer, stream: str, count: int, pipeline: int, clients: int = 1
) -> float:
    """redis-benchmark's rate for the example event's XADD (requests per second)."""
    command = [
        str(redis_benchmark_binary()),
        "-h", "127.0.0.1", "-p", str(server.port),
        "-c", str(clients), "-P", str(pipeline), "-n", str(count), "--csv",
        "XADD", stream, "*", "type", "order.created", "version", "1", "payload", example_payload(123),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    last = done.stdout.strip().splitlines()[-1]
    # The command itself (with the payload's quotes) is the first CSV column: read from the right.
    rps = last.rsplit('","', 7)[1]
    redis.Redis(port=server.port).delete(stream)
    return float(rps)


def sweep(
    server: BenchServer, *, count: int = 200_000, single: int = 20_000, rounds: int = 3
) -> list[ProducerRates]:
    """Interleaved rounds of every producer and its redis-benchmark twin."""
    events = _events(count)
    url = server.url
    results: list[ProducerRates] = []
    for round_no in range(1, rounds + 1):
        rates = ProducerRates(
            send_many=_timed_send_many(url, "bench:producer", events, validated=False),
            redis_benchmark_p1000=redis_benchmark_xadd(server, "bench:producer:rb", count, 1000),
            send_many_validated=_timed_send_many(url, "bench:producer", events, validated=True),
            send=_timed_send(url, "bench:producer", single),
            redis_benchmark_p1=redis_benchmark_xadd(server, "bench:producer:rb", single, 1),
        )
        results.append(rates)
        progress(
            f"  producer round {round_no}/{rounds}: send_many {rates.send_many:,.0f}/s, "
            f"redis-benchmark -P 1000 {rates.redis_benchmark_p1000:,.0f}/s; send {rates.send:,.0f}/s, "
            f"-P 1 {rates.redis_benchmark_p1:,.0f}/s"
        )
    return results
