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


# --- the producer (its own process) ---------------------------------------------------------------


def _paced_chunks(stream: str, rate: int, seconds: float, stats: dict[str, float]) -> Iterator[bytes]:
    key = stream.encode()
    head = b"*11\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n" % (len(key), key)
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
                % (head, fixed, len(payload), payload, len(scheduled), scheduled)
            )
        sent += len(parts)
        yield b"".join(parts)
    stats["sent"] = sent
    stats["seconds"] = (time.monotonic_ns() - start) / 1e9
    stats["max_lag_ms"] = max_lag / 1e6


def produce(url: str, stream: str, rate: int, seconds: float) -> dict[str, float]:
    """Offer ``rate`` entries per second for ``seconds``; return what was sent and the worst lag."""
    stats: dict[str, float] = {}
    pipe = RawPipeline(url)
    try:
        pipe.run(_paced_chunks(stream, rate, seconds, stats))
    finally:
        pipe.close()
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


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1e6


def measure(consumer: str, server: BenchServer | None, url: str, rate: int, seconds: float) -> Latency:
    client = redis.Redis.from_url(url, decode_responses=True)
    stream = f"bench:latency:{rate}:{secrets.token_hex(3)}"
    group = "lat"
    client.xgroup_create(stream, group, id="$", mkstream=True)
    total = int(rate * seconds)
    workdir = Path(tempfile.mkdtemp(prefix="streampipe-bench-latency-"))
    output = workdir / "latencies.bin"
    log = (workdir / "consumer.log").open("w+b")
    if consumer in WORKER_HANDLERS:
        handler = WORKER_HANDLERS[consumer]
        env = worker_env(url, stream, group, consumer="lat1", handler=handler, batch_size=BATCH)
        env.update({"BENCH_LATENCY_FILE": str(output), "BENCH_LATENCY_EXPECTED": str(total)})
        command = WORKER_COMMAND
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
        # Ready once its first XREADGROUP has registered the consumer in the group.
        deadline = time.monotonic() + 30
        while not client.xinfo_consumers(stream, group):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{consumer} did not start: {log_tail(log)}")
            time.sleep(0.02)
        producer = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--produce",
                url,
                stream,
                str(rate),
                str(seconds),
            ],
            env=bench_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        )
        stats = json.loads(producer.stdout)
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
        client.delete(stream)
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
        p50_ms=_percentile(ordered, 0.50),
        p90_ms=_percentile(ordered, 0.90),
        p99_ms=_percentile(ordered, 0.99),
        p999_ms=_percentile(ordered, 0.999),
        max_ms=ordered[-1] / 1e6,
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--produce"]:
        url, stream, rate, seconds = argv[1:5]
        print(json.dumps(produce(url, stream, int(rate), float(seconds))))
        return 0
    if argv[:1] == ["--consume"]:
        url, stream, group, output, expected = argv[1:6]
        bare_loop(url, stream, group, output, int(expected))
        return 0
    print("usage: latency.py --produce URL STREAM RATE SECONDS | --consume ... (run by bench/run.py)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
