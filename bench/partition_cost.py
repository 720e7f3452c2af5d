"""Partitions: CPU per entry and end-to-end latency of one worker reading P partitions against one
reading one stream.

    python bench/partition_cost.py [--partitions 4,16] [--perkey 4,16] [--entries 300000] [--rounds 3]
    (in make bench: bench/run.py --only partitions)

The same entries (the example event, spread evenly by the partitioned Producer) are consumed by one
``streampipe-worker`` with a no-op handler at batch 100: once from one stream, once per partition count
(``STREAMPIPE_PARTITIONS``: one consumer per partition in the worker's event loop), and once per count
with ``ordering: PerKey`` (entries routed by a key field; the worker owns every partition through its
fenced lease and hands a call at most one entry per key). The worker's and
the server's CPU time are taken over the middle of the run (from 10 % to 90 % acked), so start-up is
not counted. Rounds are interleaved; the report takes each count's lowest cost.

``latency_sweep`` (bench/run.py --only partition_latency) offers the same rate, open loop, to one
worker reading one stream and P partitions, with bench/latency.py's producer and recording handler.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency
import redis
from harness import (
    WORKER_COMMAND,
    BenchServer,
    cpu_seconds,
    log_tail,
    progress,
    running_server,
    spawn,
    stop,
    worker_env,
)
from latency import Latency
from streampipe_worker.connection import ConnectionSettings, create_client
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Event, Producer

COUNTS = (4, 16)
PERKEY_KEYS = 1024  # distinct key values in the PerKey runs (64 a partition at 16)
KEY_FIELD = "k"
IDLE_COUNTS = (1, 16, 64)
BATCH = 100
LATENCY_RATE = 10_000  # entries/s offered to every layout alike
LATENCY_SECONDS = 5.0  # per point, the first second dropped as warm-up


@dataclass
class PartitionCost:
    """One run: ``partitions`` = 0 is the unpartitioned stream."""

    round: int
    partitions: int
    entries: int
    rate: float  # entries/s over the measured window
    worker_cpu_us: float  # per entry
    server_cpu_us: float  # per entry
    ordering: str = "None"  # PerKey: routed by a key field, one owner per partition (fenced leases)

    @property
    def cpu_us(self) -> float:
        return self.worker_cpu_us + self.server_cpu_us


def acked(client: redis.Redis, streams: list[str], group: str) -> int:
    """Entries the group acked over these streams (read minus pending); 0 until every group exists."""
    done = 0
    try:
        for stream in streams:
            for info in client.xinfo_groups(stream):
                if info["name"] == group:
                    done += int(info["entries-read"] or 0) - int(info["pending"])
    except redis.ResponseError:  # the worker has not created every group yet
        return 0
    return done


def _wait_acked(client: redis.Redis, streams: list[str], group: str, count: int, proc: object) -> int:
    deadline = time.monotonic() + 300
    while (done := acked(client, streams, group)) < count:
        if getattr(proc, "poll")() is not None or time.monotonic() > deadline:  # noqa: B009
            raise RuntimeError(f"the worker stopped or stalled at {done} of {count} acked")
        time.sleep(0.005)
    return done


def measure(
    server: BenchServer, partitions: int, entries: int, round_no: int, *, ordering: str = "None"
) -> PartitionCost:
    """One worker over one stream (``partitions`` 0) or P partitions. ``ordering="PerKey"`` routes the
    entries by a key field (PERKEY_KEYS values) and runs the worker with per-key ordering: it takes
    every partition's lease, reads and acks through the fenced scripts, and a handler call gets at
    most one entry per key."""
    url = server.url
    base = f"bench-part-{secrets.token_hex(3)}"
    client = redis.Redis.from_url(url, decode_responses=True)
    keyed = ordering == "PerKey"
    events = [
        Event(
            type="order.created",
            payload={"order_id": i, "total": (i % 1000) * 1.37 + 5, "currency": "EUR"},
            fields={KEY_FIELD: f"c-{i % PERKEY_KEYS}"} if keyed else {},
        )
        for i in range(entries)
    ]
    target: str | PartitionLayout = (
        PartitionLayout(base, partitions, key=KEY_FIELD if keyed else None) if partitions else base
    )
    streams = target.streams if isinstance(target, PartitionLayout) else [base]
    if keyed:  # the PerKey worker reads only groups that exist
        for stream in streams:
            client.xgroup_create(stream, "g", id="0", mkstream=True)
    producer_client = create_client(ConnectionSettings(url=url))
    Producer(producer_client, target).send_many(events)
    producer_client.close()
    more = {"partitions": str(partitions)} if partitions else {}
    if keyed:
        more.update(ordering="PerKey", partition_key=KEY_FIELD)
    env = worker_env(
        url,
        base,
        "g",
        consumer="c1",
        handler="probe_handlers:noop",
        batch_size=BATCH,
        create_group="0",
        **more,
    )
    try:
        with tempfile.TemporaryFile() as log:
            proc = spawn(WORKER_COMMAND, env, log)
            try:
                done0 = _wait_acked(client, streams, "g", entries // 10, proc)
                cpu_w, cpu_s, started = cpu_seconds(proc.pid), cpu_seconds(server.pid), time.perf_counter()
                done = _wait_acked(client, streams, "g", entries * 9 // 10, proc)
                seconds = time.perf_counter() - started
                worker_cpu, server_cpu = cpu_seconds(proc.pid) - cpu_w, cpu_seconds(server.pid) - cpu_s
            finally:
                stop(proc)
    finally:
        # The streams, their dead-letter streams and (PerKey) the layout's lease, generation and
        # registry keys: every key of the run has the base name in it.
        client.delete(*streams, *(f"{stream}:dlq" for stream in streams))
        leftover = list(client.scan_iter(match=f"*{base}*", count=1000))
        if leftover:
            client.delete(*leftover)
        client.close()
    moved = done - done0
    return PartitionCost(
        round=round_no,
        partitions=partitions,
        entries=moved,
        rate=moved / seconds,
        worker_cpu_us=worker_cpu / moved * 1e6,
        server_cpu_us=server_cpu / moved * 1e6,
        ordering=ordering,
    )


def sweep(
    server: BenchServer,
    *,
    counts: tuple[int, ...] = COUNTS,
    perkey_counts: tuple[int, ...] = COUNTS,
    entries: int = 300_000,
    rounds: int = 3,
    on_sample: Callable[[PartitionCost], None] | None = None,
) -> list[PartitionCost]:
    """Every layout once a round (one stream, each count, each count with PerKey); rounds interleaved."""
    layouts = [
        (0, "None"),
        *((count, "None") for count in counts),
        *((count, "PerKey") for count in perkey_counts),
    ]
    found: list[PartitionCost] = []
    for round_no in range(1, rounds + 1):
        for partitions, ordering in layouts:
            sample = measure(server, partitions, entries, round_no, ordering=ordering)
            found.append(sample)
            if on_sample is not None:
                on_sample(sample)
    return found


def latency_sweep(
    server: BenchServer,
    *,
    counts: tuple[int, ...] = COUNTS,
    rate: int = LATENCY_RATE,
    seconds: float = LATENCY_SECONDS,
    rounds: int = 3,
    on_sample: Callable[[Latency], None] | None = None,
) -> list[Latency]:
    """End-to-end latency of one worker at one offered rate, from one stream and from each partition
    count (bench/latency.py's open-loop producer, spreading the entries evenly); rounds interleaved."""
    found: list[Latency] = []
    for _ in range(rounds):
        for partitions in (0, *counts):
            sample = latency.measure("streampipe", server, server.url, rate, seconds, partitions=partitions)
            found.append(sample)
            if on_sample is not None:
                on_sample(sample)
    return found


def lowest_p99(samples: Sequence[Latency], partitions: int) -> Latency | None:
    """The round with the lowest p99 of one layout (as section 3 picks its rows)."""
    return min((s for s in samples if s.partitions == partitions), key=lambda s: s.p99_ms, default=None)


def describe_latency(sample: Latency) -> str:
    what = f"{sample.partitions} partitions" if sample.partitions else "one stream"
    return (
        f"{what} at {sample.rate:,}/s: p50 {sample.p50_ms:.2f} ms, p99 {sample.p99_ms:.2f} ms, "
        f"max {sample.max_ms:.1f} ms (producer lag max {sample.producer_max_lag_ms:.1f} ms)"
    )


@dataclass
class PartitionIdle:
    """One worker with default settings over ``partitions`` partitions and no traffic."""

    partitions: int
    seconds: float  # measured for this long
    cpu_percent: float  # of one core
    connections: int  # the worker's connections to the server


def idle(server: BenchServer, partitions: int, seconds: float) -> PartitionIdle:
    """What a worker costs at rest: its CPU over ``seconds`` once every partition is ready, and its
    connections (``CLIENT LIST`` by the worker's client name)."""
    base = f"bench-idle-{secrets.token_hex(3)}"
    client = redis.Redis.from_url(server.url, decode_responses=True)
    env = worker_env(
        server.url, base, "g", consumer="idle", handler="probe_handlers:noop", batch_size=BATCH,
        create_group="0", partitions=str(partitions),
    )  # fmt: skip
    layout = PartitionLayout(base, partitions)
    try:
        with tempfile.TemporaryFile() as log:
            proc = spawn(WORKER_COMMAND, env, log)
            try:
                deadline = time.monotonic() + 60
                while client.exists(*layout.streams) < partitions:  # each consumer makes its group
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the idle worker did not start: {log_tail(log)}")
                    time.sleep(0.05)
                time.sleep(2.0)  # past start-up
                before = cpu_seconds(proc.pid)
                time.sleep(seconds)
                used = cpu_seconds(proc.pid) - before
                ours = [c for c in client.client_list() if c.get("name") == "idle"]  # the consumer name
            finally:
                stop(proc)
    finally:
        client.delete(*layout.streams)
        client.close()
    return PartitionIdle(
        partitions=partitions, seconds=seconds, cpu_percent=100 * used / seconds, connections=len(ours)
    )


def lowest(samples: list[PartitionCost], partitions: int, ordering: str = "None") -> PartitionCost | None:
    """The round with the lowest worker + server CPU per entry of one layout."""
    return min(
        (s for s in samples if s.partitions == partitions and s.ordering == ordering),
        key=lambda s: s.cpu_us,
        default=None,
    )


def describe(sample: PartitionCost) -> str:
    what = f"{sample.partitions} partitions" if sample.partitions else "one stream"
    if sample.ordering != "None":
        what += f", {sample.ordering}"
    return (
        f"round {sample.round}: {what}: {sample.rate:,.0f}/s, worker {sample.worker_cpu_us:.2f} µs/entry, "
        f"server {sample.server_cpu_us:.2f} µs/entry"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", default=",".join(map(str, COUNTS)))
    parser.add_argument(
        "--perkey", default=",".join(map(str, COUNTS)), help="counts also run with PerKey ('' = none)"
    )
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = tuple(int(p) for p in args.partitions.split(","))
    with running_server("valkey9") as server:
        samples = sweep(
            server,
            counts=counts,
            perkey_counts=tuple(int(p) for p in args.perkey.split(",") if p),
            entries=args.entries,
            rounds=args.rounds,
            on_sample=lambda s: progress("  " + describe(s)),
        )
    print(json.dumps([asdict(s) for s in samples], indent=1))


if __name__ == "__main__":
    main()
