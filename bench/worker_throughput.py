"""Consumer throughput, one server, one run: streampipe's worker vs what a user would otherwise run.

    python bench/worker_throughput.py [--redis-url URL] [--events N] [--json]
    streampipe bench worker --json

Every consumer runs as its own process with a no-op handler ("your business logic here") on the same
pre-filled stream of example events (``order.created`` v1, the shape of examples/handlers); each
measurement gets a fresh consumer group at ``0``, so all of them read the very same entries.

- ``streampipe``: the real ``streampipe-worker`` (retries, DLQ, leases, metrics all on), batch n.
- ``tutorial_loop``: the seed's ``consumer_loop`` as written: COUNT 10, per entry HGET retries + XACK
  + DEL, and its ``process_entry`` parses and logs every entry.
- ``faststream_single`` / ``faststream_batch``: FastStream's Redis ``StreamSub`` (``max_records=n``),
  one handler call per message, or one per batch.
- ``bare_loop``: redis-py + hiredis, XREADGROUP COUNT n and one multi-id XACK pipelined with the next
  read, a no-op call per entry: the ceiling for a Python consumer.

Diagnostic variants split the worker's cost (they are not competitors):

- ``bare_async_loop``: the bare loop on ``redis.asyncio`` through the worker's own client factory, so
  the gap to ``bare_loop`` is asyncio's and the gap to ``streampipe`` is the worker's own;
- ``streampipe_async``: the real worker with an async no-op handler (on the event loop, through the
  concurrency lanes);
- ``streampipe_thread``: the real worker with its sync handler kept on the handler thread
  (``thread_handlers``): the gap to ``streampipe`` is the hand-off a fast handler no longer pays;
- ``streampipe_gc_default``: the real worker with CPython's default collector (``gc_default_handlers``
  undoes the worker's tuning): what the tuning is worth.

The rate is measured from outside, from the group's acked count (XINFO GROUPS: entries-read minus
pending) over a fixed window that starts once the consumer is running and warm, so start-up is not
counted for anyone. The consumer's and the server's CPU time over the same window are recorded too.
Without ``--redis-url`` a Valkey server is started on a free loopback port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# `streampipe bench worker` loads this file by path: make its neighbours importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from harness import (
    WORKER_COMMAND,
    BenchServer,
    bench_env,
    cpu_seconds,
    fill_example_stream,
    group_progress,
    log_tail,
    progress,
    rss_bytes,
    running_server,
    spawn,
    stop,
    worker_env,
)
from probe_handlers import noop

HERE = Path(__file__).resolve().parent
STREAM = "bench:orders"
BATCH_SIZES = (1, 10, 100, 1000)
TUTORIAL_BATCH = 10  # the seed's COUNT 10
BATCHED = ("streampipe", "faststream_batch", "faststream_single", "bare_loop")
DIAGNOSTIC = ("bare_async_loop", "streampipe_async", "streampipe_thread", "streampipe_gc_default")
# The worker and the bare loop again with a handler that decodes each payload as JSON.
JSON_HANDLER = ("streampipe_json", "bare_loop_json")
CONSUMERS = ("tutorial_loop", *BATCHED, *JSON_HANDLER, *DIAGNOSTIC)
WORKER_HANDLERS = {
    "streampipe": "probe_handlers:noop",
    "streampipe_async": "probe_handlers:noop_async",
    "streampipe_json": "probe_handlers:decode_json",
    "streampipe_thread": "thread_handlers:noop",
    "streampipe_gc_default": "gc_default_handlers:noop",
}


# --- the consumers under test (each runs in its own process) ------------------------------------


def tutorial_loop(url: str, stream: str, group: str, batch: int) -> None:
    """The seed's consumer loop as written (its process_entry parses the payload and logs it)."""
    import logging

    logging.basicConfig(level=logging.INFO)
    logger = logging.getLogger(__name__)
    r = redis.Redis.from_url(url, decode_responses=True)
    max_retries = 3

    def process_entry(entry_id: str, fields: dict[str, str]) -> None:
        """Your business logic here."""
        event_type = fields["type"]
        payload = json.loads(fields["payload"])
        logger.info(f"Processing {event_type}: {payload}")

    def move_to_dlq(entry_id: str, fields: dict[str, str], error: str) -> None:
        r.xadd(
            "dead_letters",
            {
                "original_id": entry_id,
                "original_stream": stream,
                "type": fields.get("type", "unknown"),
                "payload": fields.get("payload", "{}"),
                "error": error,
            },
        )
        r.xack(stream, group, entry_id)
        r.delete(f"retries:{entry_id}")

    while True:
        results = r.xreadgroup(group, "consumer1", {stream: ">"}, count=batch, block=5000)
        if not results:
            continue
        for _stream_name, entries in results:
            for entry_id, fields in entries:
                retry_count = int(r.hget(f"retries:{entry_id}", "count") or 0)
                if retry_count >= max_retries:
                    move_to_dlq(entry_id, fields, "max retries exceeded")
                    continue
                try:
                    process_entry(entry_id, fields)
                    r.xack(stream, group, entry_id)
                    r.delete(f"retries:{entry_id}")
                except Exception as e:
                    logger.error(f"Failed to process {entry_id}: {e}")
                    r.hincrby(f"retries:{entry_id}", "count", 1)


def _faststream(url: str, stream: str, group: str, batch: int, *, batched: bool) -> None:
    import asyncio

    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url)
    sub = StreamSub(stream, group=group, consumer="fs1", batch=batched, max_records=batch)

    @broker.subscriber(stream=sub)
    async def handle(message: Any) -> None:
        return None

    async def main() -> None:
        async with broker:
            await broker.start()
            await asyncio.Event().wait()

    asyncio.run(main())


def faststream_batch(url: str, stream: str, group: str, batch: int) -> None:
    """FastStream's Redis stream subscriber in batch mode (one handler call per batch)."""
    _faststream(url, stream, group, batch, batched=True)


def faststream_single(url: str, stream: str, group: str, batch: int) -> None:
    """FastStream's Redis stream subscriber, one handler call (and one XACK) per message."""
    _faststream(url, stream, group, batch, batched=False)


def bare_loop(url: str, stream: str, group: str, batch: int, handler: Any = noop) -> None:
    """The least a Python consumer can do: read a batch, call a no-op per entry, ack it with the next read."""
    client = redis.Redis.from_url(url, decode_responses=True)
    ids: list[str] = []
    while True:
        pipe = client.pipeline(transaction=False)
        if ids:
            pipe.xack(stream, group, *ids)
        pipe.xreadgroup(group, "bare1", {stream: ">"}, count=batch, block=2000)
        reply = pipe.execute()[-1]
        ids = []
        if reply:
            for entry_id, fields in reply[0][1]:
                handler(fields)
                ids.append(entry_id)


def bare_loop_json(url: str, stream: str, group: str, batch: int) -> None:
    """``bare_loop`` whose handler decodes each payload as JSON (the worker's ``streampipe_json``)."""
    bare_loop(url, stream, group, batch, handler=lambda fields: json.loads(fields["payload"]))


def bare_async_loop(url: str, stream: str, group: str, batch: int) -> None:
    """``bare_loop`` on redis.asyncio, with the client the worker itself makes (hiredis packing)."""
    import asyncio

    from streampipe_worker.connection import ConnectionSettings, create_async_client

    async def main() -> None:
        client = create_async_client(ConnectionSettings(url=url))
        handler = noop
        ids: list[str] = []
        while True:
            pipe = client.pipeline(transaction=False)
            if ids:
                pipe.xack(stream, group, *ids)
            pipe.xreadgroup(group, "abare1", {stream: ">"}, count=batch, block=2000)
            reply = (await pipe.execute())[-1]
            ids = []
            if reply:
                for entry_id, fields in reply[0][1]:
                    handler(fields)
                    ids.append(entry_id)

    asyncio.run(main())


RUNNERS = {
    "tutorial_loop": tutorial_loop,
    "faststream_batch": faststream_batch,
    "faststream_single": faststream_single,
    "bare_loop": bare_loop,
    "bare_loop_json": bare_loop_json,
    "bare_async_loop": bare_async_loop,
}


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measurement of one consumer kind at one batch size (``processes`` of them in one group)."""

    consumer: str
    batch: int
    processes: int
    rate: float  # entries acked per second
    window_s: float
    entries: int
    consumer_cpu_us: float  # consumer CPU per entry (all its processes)
    server_cpu_us: float | None  # server CPU per entry; None when the server is not ours
    consumer_rss_mb: float  # at the end of the window, per process (the largest)


def _command(
    kind: str, url: str, stream: str, *, group: str, batch: int, index: int
) -> tuple[list[str], Any]:
    if kind in WORKER_HANDLERS:
        handler = WORKER_HANDLERS[kind]
        env = worker_env(url, stream, group, consumer=f"sp{index}", handler=handler, batch_size=batch)
        return WORKER_COMMAND, env
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--run", kind, url, stream, group, str(batch)], bench_env()


def measure(
    kind: str,
    batch: int,
    server: BenchServer | None,
    url: str,
    stream: str,
    *,
    processes: int = 1,
    window: float = 1.5,
    warmup: float = 0.3,
    timeout: float = 60.0,
    profile: Any = None,
) -> Sample:
    """Entries per second ``processes`` consumers of ``kind`` sustain on the pre-filled stream."""
    client = redis.Redis.from_url(url, decode_responses=True)
    group = f"m-{kind}-{batch}-{secrets.token_hex(3)}"
    client.xgroup_create(stream, group, id="0")
    length = int(client.xlen(stream))
    procs = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client.close)
        cleanup.callback(client.xgroup_destroy, stream, group)
        # Children log to files, never to a pipe that fills up and stalls them (the tutorial logs a lot).
        logs = [cleanup.enter_context(tempfile.TemporaryFile(mode="w+b")) for _ in range(processes)]
        for index in range(processes):
            command, env = _command(kind, url, stream, group=group, batch=batch, index=index)
            proc = spawn(command, env, logs[index])
            cleanup.callback(stop, proc)
            procs.append(proc)

        def check_alive() -> None:
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} consumer exited with {proc.returncode}: {log_tail(log)}")

        deadline = time.monotonic() + timeout
        while group_progress(client, stream, group)[1] == 0:
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: nothing acked after {timeout}s")
            time.sleep(0.005)
        time.sleep(warmup)
        t0, acked0 = time.perf_counter(), group_progress(client, stream, group)[1]
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        server0 = cpu_seconds(server.pid) if server else 0.0
        if profile is not None:
            profile(procs[0].pid, window)
        end = t0 + window
        while True:
            now = time.perf_counter()
            acked = group_progress(client, stream, group)[1]
            if now >= end or acked >= length:
                break
            check_alive()
            time.sleep(0.01)
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        server_cpu = (cpu_seconds(server.pid) - server0) if server else None
        rss = max(rss_bytes(p.pid) for p in procs)
        elapsed = now - t0
        entries = acked - acked0
        if entries <= 0:
            raise RuntimeError(f"{kind}: no progress during the window")
        if acked >= length:
            progress(f"  note: {kind} batch {batch} read the whole stream before the window ended")
        return Sample(
            consumer=kind,
            batch=batch,
            processes=processes,
            rate=entries / elapsed,
            window_s=round(elapsed, 3),
            entries=entries,
            consumer_cpu_us=cpu / entries * 1e6,
            server_cpu_us=server_cpu / entries * 1e6 if server_cpu is not None else None,
            consumer_rss_mb=rss / 2**20,
        )


def plan(batch_sizes: Sequence[int], consumers: Sequence[str] = CONSUMERS) -> list[tuple[str, int]]:
    """Every (consumer, batch) measured in a round; the tutorial only as the seed writes it."""
    jobs: list[tuple[str, int]] = []
    for kind in consumers:
        if kind == "tutorial_loop":
            jobs.append((kind, TUTORIAL_BATCH))
        else:
            jobs.extend((kind, batch) for batch in batch_sizes)
    return jobs


@contextlib.contextmanager
def prepared_stream(redis_url: str | None, events: int) -> Iterator[tuple[BenchServer | None, str]]:
    """A server (ours unless ``redis_url``) holding ``events`` example events in ``STREAM``."""
    with contextlib.ExitStack() as stack:
        server = None if redis_url else stack.enter_context(running_server("valkey9"))
        url = redis_url or server.url  # type: ignore[union-attr]
        client = redis.Redis.from_url(url)
        client.delete(STREAM)
        fill_example_stream(url, STREAM, events)
        stack.callback(client.delete, STREAM)
        yield server, url


def sweep(
    server: BenchServer | None,
    url: str,
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    consumers: Sequence[str] = CONSUMERS,
    rounds: int = 3,
    window: float = 1.5,
    on_sample: Any = None,
) -> list[Sample]:
    """Interleaved rounds: every consumer and batch size once per round, so load from elsewhere on the
    machine hits all of them alike."""
    samples: list[Sample] = []
    jobs = plan(batch_sizes, consumers)
    for round_no in range(1, rounds + 1):
        for index, (kind, batch) in enumerate(jobs, start=1):
            sample = measure(kind, batch, server, url, STREAM, window=window)
            samples.append(sample)
            if on_sample is not None:
                on_sample(round_no, index, len(jobs), sample)
    return samples


def best_rates(samples: Sequence[Sample]) -> dict[str, dict[int, float]]:
    """Each consumer's best rate per batch size over the rounds."""
    best: dict[str, dict[int, float]] = {}
    for sample in samples:
        by_batch = best.setdefault(sample.consumer, {})
        by_batch[sample.batch] = max(by_batch.get(sample.batch, 0.0), sample.rate)
    return best


def run(
    redis_url: str | None = None,
    events: int = 600_000,
    repeat: int = 3,
    batch_sizes: Sequence[int] = (1000,),
    window: float = 1.5,
) -> dict[str, float]:
    """The flat summary ``streampipe bench worker`` prints: each consumer at its best batch size.

    The rounds are interleaved and each consumer's best round counts, so a burst of load from
    something else on the machine does not decide the comparison.
    """
    with prepared_stream(redis_url, events) as (server, url):
        consumers = ("tutorial_loop", *BATCHED)
        samples = sweep(
            server, url, batch_sizes=batch_sizes, consumers=consumers, rounds=max(repeat, 1), window=window
        )
    best = {kind: max(rates.values()) for kind, rates in best_rates(samples).items()}
    streampipe = best["streampipe"]
    return {
        "streampipe": round(streampipe),
        "bare_loop": round(best["bare_loop"]),
        "tutorial_loop": round(best["tutorial_loop"]),
        "faststream_single": round(best["faststream_single"]),
        "faststream_batch": round(best["faststream_batch"]),
        "ratio_vs_tutorial": round(streampipe / best["tutorial_loop"], 1),
        "ratio_vs_faststream": round(streampipe / best["faststream_batch"], 2),
        "ratio_of_bare_loop": round(streampipe / best["bare_loop"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=None, help="use this server instead of a Valkey of our own")
    parser.add_argument("--events", type=int, default=600_000, help="entries in the pre-filled stream")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each counts")
    parser.add_argument("--batch-sizes", default="1000", help="comma-separated, e.g. 1,10,100,1000")
    parser.add_argument("--window", type=float, default=1.5, help="seconds measured per consumer")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument(
        "--run", nargs=5, metavar=("KIND", "URL", "STREAM", "GROUP", "BATCH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--samples", action="store_true", help="print every sample as JSON lines instead")
    args = parser.parse_args(argv)
    if args.run:
        kind, url, stream, group, batch = args.run
        RUNNERS[kind](url, stream, group, int(batch))
        return 0
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    if args.samples:
        with prepared_stream(args.redis_url, args.events) as (server, url):
            for sample in sweep(server, url, batch_sizes=sizes, rounds=args.repeat, window=args.window):
                print(json.dumps(asdict(sample)))
        return 0
    result = run(
        args.redis_url, events=args.events, repeat=args.repeat, batch_sizes=sizes, window=args.window
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
