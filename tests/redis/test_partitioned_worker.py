"""A worker over every partition of a partitioned stream (``STREAMPIPE_PARTITIONS``), on real servers:
nothing lost, each partition's poison entry in that partition's dead-letter stream, one metrics
exposition and one readiness for all partitions, a clean stop, and the same on a 3-primary cluster."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import redis
from streampipe_worker.connection import ConnectionSettings, create_client
from streampipe_worker.metrics import AllHealth, Health
from streampipe_worker.partitioned import PartitionedConsumer
from streampipe_worker.partitions import PartitionLayout, partition_of
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import Entry, PermanentError, classify_handler
from streampipe_worker.settings import SettingsError, WorkerSettings
from tests.redis.conftest import GROUP, worker_settings_for
from tests.support.polling import eventually, eventually_async
from tests.support.servers import SERVER_IDS, ServerProcess, free_port
from tests.support.topologies import start_cluster
from tests.support.worker_process import WorkerProcesses

pytestmark = pytest.mark.timeout(120)

BASE = "orders"
LAYOUT = PartitionLayout(BASE, 4, key="customer_id")


def keyed(start: int, count: int) -> list[Event]:
    return [
        Event(type="order.created", payload={"n": n}, fields={"customer_id": f"c-{n % 29}", "n": str(n)})
        for n in range(start, start + count)
    ]


def settings_for(url: str, **overrides: object) -> WorkerSettings:
    return worker_settings_for(url, stream=BASE, partitions=4, create_group="0", **overrides)


def group_state(client: redis.Redis, stream: str) -> tuple[int, int]:
    """(pending, lag) of the test group on one partition."""
    [group] = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP]
    return int(group["pending"]), int(group["lag"] or 0)


async def test_every_partition_is_read_and_a_poison_entry_stays_in_its_partition(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seen: list[tuple[str, str]] = []  # (partition stream, n)

    def handle(entry: Entry) -> None:
        if entry.fields["n"] == "13":
            raise PermanentError("poison")
        seen.append((entry.stream, entry.fields["n"]))

    fleet = PartitionedConsumer(settings_for(redis_url), classify_handler(handle))
    task = asyncio.create_task(fleet.run())
    try:
        Producer(create_client(ConnectionSettings(url=redis_url)), LAYOUT).send_many(keyed(0, 1000))
        await eventually_async(lambda: len(seen) == 999, within=60, what="999 entries handled")
        await eventually_async(lambda: fleet.health.ready, what="every partition ready")
    finally:
        fleet.request_stop()
        await asyncio.wait_for(task, timeout=30)
    # Lost 0, duplicates 0 (no faults), and each entry was read from the partition its key routes to.
    assert sorted(int(n) for _, n in seen) == [n for n in range(1000) if n != 13]
    for stream, n in seen:
        assert stream == LAYOUT.stream(partition_of(f"c-{int(n) % 29}", 4))
    poison = LAYOUT.partition_for("c-13")
    for index in range(4):
        assert group_state(redis_client, LAYOUT.stream(index)) == (0, 0)
        dead = redis_client.xrange(LAYOUT.dead_letter(index))
        assert [fields["n"] for _, fields in dead] == (["13"] if index == poison else [])


async def test_one_exposition_and_one_readiness_for_all_partitions(redis_url: str) -> None:
    fleet = PartitionedConsumer(settings_for(redis_url), classify_handler(lambda entry: None))
    task = asyncio.create_task(fleet.run())
    try:
        layout = PartitionLayout(BASE, 4)  # no key: in turn, 25 per partition
        Producer(create_client(ConnectionSettings(url=redis_url)), layout).send_many(
            [Event(type="t", payload={}) for _ in range(100)]
        )
        processed = lambda: sum(c.stats.processed for c in fleet.consumers)  # noqa: E731
        await eventually_async(lambda: processed() == 100, what="100 processed")
    finally:
        fleet.request_stop()
        await asyncio.wait_for(task, timeout=30)
    families = {f.name: f for f in text_string_to_metric_families(fleet.metrics.render().decode())}
    samples = [s for s in families["streampipe_worker_processed"].samples if s.name.endswith("_total")]
    assert {s.labels["stream"]: s.value for s in samples} == dict.fromkeys(layout.streams, 25.0)
    exposition = fleet.metrics.render().decode().splitlines()
    assert exposition.count("# TYPE streampipe_worker_processed_total counter") == 1


def test_readiness_waits_for_every_partition() -> None:
    parts = {"{orders:0}": Health(), "{orders:1}": Health()}
    health = AllHealth(parts)
    parts["{orders:0}"].set_ready(True)
    parts["{orders:1}"].set_ready(False, "redis unreachable: refused")
    assert (health.ready, health.reason) == (False, "{orders:1}: redis unreachable: refused")
    parts["{orders:1}"].set_ready(True)
    assert (health.ready, health.alive) == (True, True)


def test_partitioned_settings() -> None:
    settings = worker_settings_for("redis://127.0.0.1:1/0", stream=BASE, partitions=3, redis_mode="cluster")
    assert settings.problems() == []  # each partition has its own hash tag: no {tag} needed in the base
    part = settings.for_partition(2)
    assert (part.stream, part.dead_letter, part.partitions) == ("{orders:2}", "{orders:2}:dlq", 0)
    with pytest.raises(SettingsError) as refused:
        worker_settings_for("redis://127.0.0.1:1/0", stream="{orders}", partitions=3, dead_letter_stream="d")
    assert [name for name, _ in refused.value.problems] == [
        "STREAMPIPE_STREAM",
        "STREAMPIPE_DEAD_LETTER_STREAM",
    ]
    with pytest.raises(SettingsError) as refused:
        worker_settings_for("redis://127.0.0.1:1/0", stream=BASE, partitions=1025)
    assert [name for name, _ in refused.value.problems] == ["STREAMPIPE_PARTITIONS"]


HANDLER_MODULE = """
import os

_out = open(os.environ["TEST_OUT"], "a", buffering=1)


def handle(entry):
    _out.write(f"{entry.stream} {entry.id}\\n")
"""


def test_the_worker_process_reads_every_partition_and_stops_cleanly(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    workers = WorkerProcesses(redis_url, tmp_path, BASE, GROUP, "partition_handlers", HANDLER_MODULE)
    try:
        port = free_port()
        proc = workers.start(
            "w1",
            STREAMPIPE_PARTITIONS="4",
            STREAMPIPE_CREATE_GROUP="0",
            STREAMPIPE_METRICS_PORT=str(port),
            STREAMPIPE_METRICS_HOST="127.0.0.1",
        )
        ids = Producer(redis_client, LAYOUT).send_many(keyed(0, 400))
        out = tmp_path / "w1.out"
        eventually(
            lambda: out.exists() and len(out.read_text().split("\n")) > 400, within=60, what="400 handled"
        )
        handled = [line.split() for line in out.read_text().splitlines()]
        assert sorted(entry_id for _, entry_id in handled) == sorted(ids)
        assert {stream for stream, _ in handled} == set(LAYOUT.streams)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            assert reply.status == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        for stream in LAYOUT.streams:
            assert group_state(redis_client, stream) == (0, 0)
    finally:
        workers.stop_all()


@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_on_a_cluster_the_partitions_on_every_primary_are_read(kind: str, tmp_path: Path) -> None:
    cluster = start_cluster(kind, tmp_path)
    try:
        layout = PartitionLayout(BASE, 6, key="customer_id")
        seen: list[str] = []
        settings = worker_settings_for(
            cluster.url, stream=BASE, partitions=6, create_group="0", redis_mode="cluster"
        )
        fleet = PartitionedConsumer(settings, classify_handler(lambda entry: seen.append(entry.fields["n"])))
        task = asyncio.create_task(fleet.run())
        try:
            client = create_client(ConnectionSettings(url=cluster.url, mode="cluster"))
            Producer(client, layout).send_many(keyed(0, 600))
            await eventually_async(lambda: len(seen) == 600, within=60, what="600 handled")
        finally:
            fleet.request_stop()
            await asyncio.wait_for(task, timeout=30)
        assert sorted(int(n) for n in seen) == list(range(600))
        for stream in layout.streams:
            assert group_state(client, stream) == (0, 0)
        client.close()
    finally:
        cluster.stop()


def test_a_partition_the_user_may_not_read_stops_the_whole_worker_with_exit_3(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    with server.client() as admin:
        # The user may touch partition 0's keys only; partitions 1-2 answer NOPERM.
        admin.execute_command(
            "ACL", "SETUSER", "part0", "on", ">pw", "resetkeys", "~{orders:0}*", "-@all",
            "+ping", "+client|setname", "+xgroup|create", "+xreadgroup", "+xack", "+xclaim",
            "+xautoclaim", "+xpending", "+xadd", "+multi", "+exec", "+discard", "+set", "+mget",
        )  # fmt: skip
    url = server.url.replace("redis://", "redis://part0:pw@")
    workers = WorkerProcesses(url, tmp_path, BASE, GROUP, "partition_handlers", HANDLER_MODULE)
    try:
        proc = workers.start("w1", STREAMPIPE_PARTITIONS="3", STREAMPIPE_CREATE_GROUP="0")
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 3, stderr
    finally:
        workers.stop_all()
