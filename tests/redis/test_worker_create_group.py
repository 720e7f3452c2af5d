"""``STREAMPIPE_CREATE_GROUP``: a worker run without the operator creates its own group (MKSTREAM) at
``$``, ``0`` or an entry ID, tolerates peers that created it first (BUSYGROUP), creates it again if it
vanishes, and refuses a value that is no position at start."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import redis
from streampipe_worker.router import Entry
from streampipe_worker.settings import SettingsError, WorkerSettings, load_settings
from tests.redis.conftest import GROUP, STREAM, consumer_for, pending_count, running
from tests.support.polling import eventually, eventually_async
from tests.support.servers import free_port
from tests.support.worker_process import WorkerProcesses

pytestmark = pytest.mark.timeout(90)

HANDLER_MODULE = """
import os

_out = open(os.environ["TEST_OUT"], "a", buffering=1)


def handle(entry):
    _out.write(f"{entry.id}\\n")
"""

Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start bare ``python -m streampipe_worker`` processes (no operator); stopped by PID after the test."""
    workers = WorkerProcesses(redis_url, tmp_path, STREAM, GROUP, "group_handlers", HANDLER_MODULE)
    yield workers.start
    workers.stop_all()


def processed(tmp_path: Path, *names: str) -> list[str]:
    """Entry ids the named workers finished, in the order each wrote them."""
    ids: list[str] = []
    for name in names:
        path = tmp_path / f"{name}.out"
        if path.exists():
            ids += path.read_text().split()
    return ids


def group_info(client: redis.Redis) -> dict[str, object] | None:
    if not client.exists(STREAM):
        return None
    for group in client.xinfo_groups(STREAM):
        if group["name"] == GROUP:
            return dict(group)
    return None


def ready(port: int) -> bool:
    """The worker's /readyz answers 200 (it is ready once a read of its group succeeded)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
        return False


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return proc.returncode


def test_create_group_0_processes_the_entries_already_there(
    redis_client: redis.Redis, start_worker: Start, tmp_path: Path
) -> None:
    old = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(5)]
    assert group_info(redis_client) is None  # no operator: nobody created the group
    worker = start_worker("w1", STREAMPIPE_CREATE_GROUP="0")
    eventually(lambda: sorted(processed(tmp_path, "w1")) == sorted(old), what="old entries processed")
    eventually(lambda: pending_count(redis_client) == 0, what="acked")
    stop(worker)
    info = group_info(redis_client)
    assert info is not None
    assert info["last-delivered-id"] == old[-1]


def test_create_group_dollar_skips_the_entries_already_there(
    redis_client: redis.Redis, start_worker: Start, tmp_path: Path
) -> None:
    for n in range(5):
        redis_client.xadd(STREAM, {"old": str(n)})
    worker = start_worker("w1", STREAMPIPE_CREATE_GROUP="$")
    eventually(lambda: group_info(redis_client), what="group created by the worker")
    new = [redis_client.xadd(STREAM, {"new": str(n)}) for n in range(3)]
    eventually(lambda: sorted(processed(tmp_path, "w1")) == sorted(new), what="new entries processed")
    eventually(lambda: pending_count(redis_client) == 0, what="acked")
    stop(worker)
    assert sorted(processed(tmp_path, "w1")) == sorted(new)


def test_create_group_at_an_entry_id_starts_after_it(
    redis_client: redis.Redis, start_worker: Start, tmp_path: Path
) -> None:
    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(6)]
    worker = start_worker("w1", STREAMPIPE_CREATE_GROUP=ids[2])
    eventually(lambda: sorted(processed(tmp_path, "w1")) == sorted(ids[3:]), what="entries after the id")
    stop(worker)
    assert sorted(processed(tmp_path, "w1")) == sorted(ids[3:])


def test_five_workers_starting_at_once_all_run_and_share_the_stream(
    redis_client: redis.Redis, start_worker: Start, tmp_path: Path
) -> None:
    names = [f"w{n}" for n in range(5)]
    # No stream yet either: MKSTREAM creates it, and four of the five get BUSYGROUP.
    ports = [free_port() for _ in names]
    workers = [
        start_worker(name, STREAMPIPE_CREATE_GROUP="0", STREAMPIPE_METRICS_PORT=str(port))
        for name, port in zip(names, ports, strict=True)
    ]
    eventually(lambda: group_info(redis_client), what="group created")
    # Each one is ready only after a read succeeded: none of them gave up on BUSYGROUP.
    eventually(lambda: all(ready(port) for port in ports), what="all five ready", within=60)
    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(200)]
    eventually(lambda: len(processed(tmp_path, *names)) >= len(ids), what="all entries processed")
    eventually(lambda: pending_count(redis_client) == 0, what="acked")
    assert all(worker.poll() is None for worker in workers), [
        w.stderr for w in workers if w.poll() is not None
    ]
    for worker in workers:
        stop(worker)
    assert sorted(processed(tmp_path, *names)) == sorted(ids)  # each entry once


async def test_concurrent_creations_create_once_and_all_succeed(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    consumers = [
        consumer_for(make_settings(consumer=f"c{n}", create_group="$"), lambda entry: None) for n in range(5)
    ]
    try:
        results = await asyncio.gather(*(c.group_keeper.ensure() for c in consumers))
    finally:
        await asyncio.gather(*(c.client.aclose() for c in consumers))
    assert results == [True] * 5
    assert sum(c.group_keeper.created for c in consumers) == 1  # the other four got BUSYGROUP
    assert group_info(redis_client) is not None


async def test_a_group_that_vanishes_is_created_again(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    seen: list[str] = []

    def handle(entry: Entry) -> None:
        seen.append(entry.fields["n"])

    consumer = consumer_for(make_settings(create_group="0"), handle)
    async with running(consumer):
        redis_client.xadd(STREAM, {"n": "1"})
        await eventually_async(lambda: seen == ["1"] and consumer.health.ready, what="first entry")
        redis_client.xgroup_destroy(STREAM, GROUP)
        await eventually_async(lambda: consumer.group_keeper.created == 2, what="group created again")
        redis_client.xadd(STREAM, {"n": "2"})
        await eventually_async(lambda: "2" in seen and pending_count(redis_client) == 0, what="read again")
    # Created again at 0: the entry from before the group vanished is read once more (at least once).
    assert sorted(seen) == ["1", "1", "2"]


@pytest.mark.parametrize("value", ["latest", "-1", "5-x", "$0", "1.5"])
def test_an_invalid_position_is_refused_at_start(value: str, start_worker: Start, redis_url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {
                "STREAMPIPE_REDIS_URL": redis_url,
                "STREAMPIPE_STREAM": STREAM,
                "STREAMPIPE_GROUP": GROUP,
                "STREAMPIPE_HANDLER": "group_handlers:handle",
                "STREAMPIPE_CREATE_GROUP": value,
            }
        )
    assert [name for name, _ in refused.value.problems] == ["STREAMPIPE_CREATE_GROUP"]
    worker = start_worker("w1", STREAMPIPE_CREATE_GROUP=value)
    assert worker.wait(timeout=30) == 2  # bad settings: the documented exit code, before any connection


@pytest.mark.parametrize(
    ("value", "position"), [("$", "$"), ("0", "0"), (" 7 ", "7-0"), ("7-3", "7-3"), ("", None)]
)
def test_valid_positions_and_unset(value: str, position: str | None) -> None:
    env = {"STREAMPIPE_STREAM": STREAM, "STREAMPIPE_GROUP": GROUP, "STREAMPIPE_HANDLER": "m:f"}
    assert load_settings({**env, "STREAMPIPE_CREATE_GROUP": value}).create_group == position
