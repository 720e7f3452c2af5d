"""The local runtime running real ``python -m streampipe_worker`` replicas against Valkey and Redis."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import redis.asyncio

import redis
from streampipe_operator.local import LocalRuntime, ReplicaSpec
from streampipe_operator.redis_admin import RedisAdmin

pytestmark = pytest.mark.timeout(90)

STREAM = "{orders}:events"
GROUP = "billing"
HANDLER_MODULE = """
import os

_out = open(os.path.join(os.environ["TEST_OUT"], os.environ["STREAMPIPE_CONSUMER"]), "a", buffering=1)


def handle(entry):
    _out.write(f"{entry.id}\\n")
"""


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
