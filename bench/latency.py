"""End-to-end latency, XADD to handler done, at fixed offered rates (open loop).

Method. A producer process offers a fixed rate: entry k is *scheduled* at ``start + k / rate`` and
carries that scheduled time in a field ``t`` (CLOCK_MONOTONIC, ns). It sends whatever is due, in one
pipelined write, then sleeps until the next entry is due; it never waits for replies (they are
drained by another thread), so a slow consumer or server cannot slow the offered load down. The
handler, a no-op, records ``now - t`` when it runs. Because latency is taken from the *scheduled*
time, a producer or server stall shows up in the figures instead of being hidden (no coordinated
omission). Producer and worker read the same CLOCK_MONOTONIC (one Linux machine), so there is no
clock skew; the entry id's millisecond timestamp is too coarse for sub-millisecond figures.
The first second of every run is warm-up and is dropped.

The same producer feeds, in turn, a real ``streampipe-worker`` (batch 100, the default) and the bare
redis-py loop (XREADGROUP COUNT 100 BLOCK, XACK with the next read) as the same-run baseline.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from harness import (
    WORKER_COMMAND,
    BenchServer,
    RawPipeline,
    bench_env,
    example_payload,
    log_tail,
    spawn,
    stop,
    worker_env,
)
from streampipe_worker.partitions import PartitionLayout

RATES = (1_000, 10_000, 50_000)
WARMUP_S = 1.0
BATCH = 100
CONSUMERS = ("streampipe", "bare_loop", "streampipe_gc_default")
WORKER_HANDLERS = {
    "streampipe": "probe_handlers:record_latency",
    # Diagnostic: the same worker with CPython's default collector (gc_default_handlers), for the tail.
    "streampipe_gc_default": "gc_default_handlers:record_latency",
}


@dataclass
class Latency:
    """Latency percentiles (ms) of one consumer at one offered rate."""

    consumer: str
    rate: int
    seconds: float
    samples: int
    achieved_rate: float  # what the producer actually sent per second
    producer_max_lag_ms: float  # worst delay between an entry's scheduled and actual send
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    partitions: int = 0  # 0: one stream; N: the same load spread over N partitions, one worker


# --- the producer (its own process) ---------------------------------------------------------------


Route = tuple[str, dict[str, str]]  # a stream key and the fields an entry sent there carries first


def _xadd_heads(routes: Sequence[Route]) -> list[bytes]:
    """Each route's XADD up to the fields every entry carries (type, version, payload, t)."""
    heads = []
    for stream, fields in routes:
        key = stream.encode()
        extra = b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part) for pair in fields.items() for part in map(str.encode, pair)
        )
        heads.append(
            b"*%d\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n%s" % (11 + 2 * len(fields), len(key), key, extra)
        )
    return heads


def _paced_chunks(
    routes: Sequence[Route], rate: int, seconds: float, stats: dict[str, float]
) -> Iterator[bytes]:
    heads = _xadd_heads(routes)  # entry k takes route k mod len(routes)
    fixed = b"$4\r\ntype\r\n$13\r\norder.created\r\n$7\r\nversion\r\n$1\r\n1\r\n$7\r\npayload\r\n"
    interval = 1e9 / rate
    total = int(rate * seconds)
    start = time.monotonic_ns() + 20_000_000
    sent = 0
    max_lag = 0
    while sent < total:
        now = time.monotonic_ns()
        due = min(total, int((now - start) / interval) + 1)
        if due <= sent:
            time.sleep(max(start + sent * interval - now, 0) / 1e9)
            continue
        max_lag = max(max_lag, now - int(start + sent * interval))
        parts = []
        for k in range(sent, min(due, sent + 2000)):
            scheduled = b"%d" % int(start + k * interval)
            payload = example_payload(k).encode()
            parts.append(
                b"%s%s$%d\r\n%s\r\n$1\r\nt\r\n$%d\r\n%s\r\n"
                % (heads[k % len(heads)], fixed, len(payload), payload, len(scheduled), scheduled)
            )
        sent += len(parts)
        yield b"".join(parts)
    stats["sent"] = sent
    stats["seconds"] = (time.monotonic_ns() - start) / 1e9
    stats["max_lag_ms"] = max_lag / 1e6


def produce(url: str, routes: Sequence[Route], rate: int, seconds: float) -> dict[str, float]:
    """Offer ``rate`` entries per second for ``seconds``, entry k to route k mod len(routes); return
    what was sent and the worst lag."""
    stats: dict[str, float] = {}
    pipe = RawPipeline(url)
    try:
        pipe.run(_paced_chunks(routes, rate, seconds, stats))
    finally:
        pipe.close()
    return stats


def start_producer(url: str, routes: Sequence[Route], rate: int, seconds: float) -> subprocess.Popen[str]:
    """The open-loop producer in a process of its own; ``producer_stats`` waits for its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--produce", url, str(rate), str(seconds)]
    return subprocess.Popen(
        [*command, json.dumps(routes)],
        env=bench_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def producer_stats(producer: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, err = producer.communicate(timeout=timeout)
    if producer.returncode:
        raise RuntimeError(f"the producer exited with {producer.returncode}: {err[-2000:]}")
    stats: dict[str, float] = json.loads(out)
    return stats


# --- the baseline consumer (its own process) ------------------------------------------------------


def bare_loop(url: str, stream: str, group: str, output: str, expected: int) -> None:
    """The bare redis-py loop, recording each entry's latency like the worker's probe handler."""
    client = redis.Redis.from_url(url, decode_responses=True)
    latencies = array("q")
    ids: list[str] = []
    while len(latencies) < expected:
        pipe = client.pipeline(transaction=False)
        if ids:
            pipe.xack(stream, group, *ids)
        pipe.xreadgroup(group, "bare1", {stream: ">"}, count=BATCH, block=2000)
        reply = pipe.execute()[-1]
        ids = []
        if reply:
            for entry_id, fields in reply[0][1]:
                latencies.append(time.monotonic_ns() - int(fields["t"]))
                ids.append(entry_id)
    with open(output, "wb") as out:
        latencies.tofile(out)


# --- one measurement ------------------------------------------------------------------------------


def percentile(ordered: Sequence[int], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of sorted nanoseconds, in milliseconds."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1e6


def measure(
    consumer: str, server: BenchServer | None, url: str, rate: int, seconds: float, *, partitions: int = 0
) -> Latency:
    """One consumer at one offered rate; with ``partitions`` (worker consumers only) the same load is
    spread evenly over that many partitions, read by one worker (``STREAMPIPE_PARTITIONS``)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    stream = f"bench:latency:{rate}:{secrets.token_hex(3)}"
    streams = PartitionLayout(stream, partitions).streams if partitions else [stream]
    group = "lat"
    for key in streams:
        client.xgroup_create(key, group, id="$", mkstream=True)
    total = int(rate * seconds)
    workdir = Path(tempfile.mkdtemp(prefix="streampipe-bench-latency-"))
    output = workdir / "latencies.bin"
    log = (workdir / "consumer.log").open("w+b")
    if consumer in WORKER_HANDLERS:
        handler = WORKER_HANDLERS[consumer]
        more = {"partitions": str(partitions)} if partitions else {}
        env = worker_env(url, stream, group, consumer="lat1", handler=handler, batch_size=BATCH, **more)
        env.update({"BENCH_LATENCY_FILE": str(output), "BENCH_LATENCY_EXPECTED": str(total)})
        command = WORKER_COMMAND
    elif partitions:
        raise ValueError(f"{consumer} reads one stream; partitions are for the worker")
    else:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--consume",
            url,
            stream,
            group,
            str(output),
            str(total),
        ]
        env = bench_env()
    proc = spawn(command, env, log)
    try:
        # Ready once its first XREADGROUP on every stream has registered the consumer in the group.
        deadline = time.monotonic() + 30
        while not all(client.xinfo_consumers(key, group) for key in streams):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{consumer} did not start: {log_tail(log)}")
            time.sleep(0.02)
        routes: list[Route] = [(key, {}) for key in streams]
        stats = producer_stats(start_producer(url, routes, rate, seconds), seconds + 60)
        deadline = time.monotonic() + 30
        while not output.exists():
            if proc.poll() is not None and not output.exists():
                raise RuntimeError(f"{consumer} exited with {proc.returncode}: {log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{consumer}: latencies not written 30 s after the producer ended")
            time.sleep(0.05)
    finally:
        stop(proc)
        log.close()
        client.delete(*streams)
        client.close()
    latencies = array("q")
    with output.open("rb") as data:
        latencies.frombytes(data.read())
    skip = int(rate * WARMUP_S)
    ordered = sorted(latencies[skip:])
    shutil.rmtree(workdir, ignore_errors=True)
    return Latency(
        consumer=consumer,
        rate=rate,
        seconds=seconds,
        samples=len(ordered),
        achieved_rate=stats["sent"] / stats["seconds"],
        producer_max_lag_ms=stats["max_lag_ms"],
        p50_ms=percentile(ordered, 0.50),
        p90_ms=percentile(ordered, 0.90),
        p99_ms=percentile(ordered, 0.99),
        p999_ms=percentile(ordered, 0.999),
        max_ms=ordered[-1] / 1e6,
        partitions=partitions,
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--produce"]:
        url, rate, seconds, routes = argv[1:5]
        found = [(stream, fields) for stream, fields in json.loads(routes)]
        print(json.dumps(produce(url, found, int(rate), float(seconds))))
        return 0
    if argv[:1] == ["--consume"]:
        url, stream, group, output, expected = argv[1:6]
        bare_loop(url, stream, group, output, int(expected))
        return 0
    print("usage: latency.py --produce URL RATE SECONDS ROUTES_JSON | --consume ... (run by bench/run.py)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
