"""The local runtime running real ``python -m streampipe_worker`` replicas against Valkey and Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio

import redis
from streampipe_operator.local.processes import LocalRuntime, ReplicaSpec
from streampipe_operator.streams.admin import RedisAdmin

pytestmark = pytest.mark.timeout(90)

STREAM = "{orders}:events"
GROUP = "billing"
HANDLER_MODULE = """
import os

_out = open(os.path.join(os.environ["TEST_OUT"], os.environ["STREAMPIPE_CONSUMER"]), "a", buffering=1)


def handle(entry):
    _out.write(f"{entry.id}\\n")
"""


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                # IPv4 is one little-endian word; an IPv6 listener is reported as its raw hex.
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def backlog(url: str) -> int | None:
    async def observe() -> int | None:
        client = redis.asyncio.Redis.from_url(url)
        try:
            group = (await RedisAdmin(client).observe_stream(STREAM)).group(GROUP)
        finally:
            await client.aclose()
        assert group is not None
        return None if group.lag.value is None else group.lag.value + group.pending

    return asyncio.run(observe())


def test_worker_replicas_consume_under_their_replica_names(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "local_handlers.py").write_text(HANDLER_MODULE)
    out = tmp_path / "processed"
    out.mkdir()
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)  # the operator's job
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "STREAMPIPE_REDIS_URL": redis_url,
        "STREAMPIPE_STREAM": STREAM,
        "STREAMPIPE_GROUP": GROUP,
        "STREAMPIPE_HANDLER": "local_handlers:handle",
        "STREAMPIPE_BLOCK": "100ms",
        "TEST_OUT": str(out),
    }
    with LocalRuntime(tmp_path / "run") as runtime:
        workers = runtime.replica_set(ReplicaSpec.for_worker("orders-billing", env))
        workers.scale(2)
        assert workers.wait_ready(2, timeout=60), [r.log_path.read_text() for r in workers.status().replicas]
        names = {r.name for r in workers.status().replicas}

        produced = {str(redis_client.xadd(STREAM, {"n": str(i)})) for i in range(300)}
        deadline = time.monotonic() + 60
        while backlog(redis_url) != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backlog(redis_url) == 0

        consumers = {c["name"] for c in redis_client.xinfo_consumers(STREAM, GROUP)}
        assert consumers <= names
        processed = set()
        for path in out.iterdir():
            assert path.name in names
            processed |= set(path.read_text().split())
        assert processed == produced

        assert workers.stop(grace=20)
    stops = [e for e in runtime.drain_events() if e.kind == "stopped"]
    assert [e.message for e in stops] == ["exit code 0", "exit code 0"]  # clean SIGTERM shutdowns


def test_a_local_worker_serves_metrics_on_loopback_only(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    env = {
        "STREAMPIPE_REDIS_URL": redis_url,
        "STREAMPIPE_STREAM": STREAM,
        "STREAMPIPE_GROUP": GROUP,
        "STREAMPIPE_HANDLER": "json:dumps",  # never called: nothing is produced
    }
    with LocalRuntime(tmp_path / "run") as runtime:
        workers = runtime.replica_set(ReplicaSpec.for_worker("orders-billing", env))
        workers.scale(1)
        assert workers.wait_ready(1, timeout=60), [r.log_path.read_text() for r in workers.status().replicas]
        [replica] = workers.status().replicas
        assert replica.port is not None
        # Ready means /readyz answered on 127.0.0.1; nothing else may answer on that port.
        assert listening_addresses(replica.port) == {"127.0.0.1"}
        assert workers.stop(grace=20)
