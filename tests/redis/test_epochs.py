"""The layout record of a growing PerKey layout (``streampipe_worker.epochs``) on real servers: the
first record, an idempotent growth with each old partition's cutoff, the refusal to shrink, two
writers at once, when an old partition is settled, retiring a settled switch, a worker holding a moved
key until its old partition is processed, a worker started with a count not recorded yet waiting, and
the record on a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.epochs import (
    LayoutEpochs,
    LayoutRecord,
    LayoutShrinkError,
    Switch,
    layout_key,
    read_layout,
    record_growth,
    retire_settled_switches,
    settled,
)
from streampipe_worker.ordered import OrderedConsumer
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Event, Producer
from tests.redis.conftest import GROUP
from tests.redis.test_ordered_worker import KEY, Handled, by_key, fleet, recorder, settings_for
from tests.support.polling import eventually_async
from tests.support.topologies import start_cluster

pytestmark = pytest.mark.timeout(60)

BASE = "orders"
OLD = PartitionLayout(BASE, 2, key=KEY)
NEW = PartitionLayout(BASE, 4, key=KEY)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    connection = create_async_client(ConnectionSettings(url=redis_url))
    yield connection
    await connection.aclose()


def moved_key() -> str:
    """A key that growing from 2 to 4 partitions moves to another partition."""
    return next(k for k in (f"c-{n}" for n in range(100)) if OLD.partition_for(k) != NEW.partition_for(k))


async def test_growth_is_recorded_once_with_each_old_partitions_cutoff(
    client: Any, redis_client: redis.Redis
) -> None:
    assert await read_layout(client, BASE) is None
    assert await record_growth(client, BASE, 2) == LayoutRecord(2)
    assert await record_growth(client, BASE, 2) == LayoutRecord(2)
    # Partition 0 has entries (one deleted: the cutoff is the last generated id), partition 1 none.
    ids = [redis_client.xadd(OLD.stream(0), {"n": str(n)}) for n in range(3)]
    redis_client.xdel(OLD.stream(0), ids[-1])
    grown = await record_growth(client, BASE, 4)
    assert grown == LayoutRecord(4, (Switch(2, (ids[-1], "0-0")),))
    redis_client.xadd(OLD.stream(1), {"n": "later"})
    assert await record_growth(client, BASE, 4) == grown  # unchanged: the cutoffs stay
    assert await read_layout(client, BASE) == grown
    again = await record_growth(client, BASE, 5)
    assert [switch.old_count for switch in again.switches] == [2, 4]
    with pytest.raises(LayoutShrinkError, match="may grow, never shrink"):
        await record_growth(client, BASE, 3)
    assert await read_layout(client, BASE) == again


async def test_two_writers_at_once_record_one_switch(client: Any) -> None:
    await record_growth(client, BASE, 2)
    first, second = await asyncio.gather(record_growth(client, BASE, 4), record_growth(client, BASE, 4))
    assert first == second == await read_layout(client, BASE)
    assert [switch.old_count for switch in first.switches] == [2]


async def test_an_old_partition_is_settled_once_its_group_processed_it_up_to_the_cutoff(
    client: Any, redis_client: redis.Redis
) -> None:
    stream = OLD.stream(0)
    ids = [redis_client.xadd(stream, {"n": str(n)}) for n in range(3)]
    cutoff = ids[1]
    assert await settled(client, stream, GROUP, "0-0")  # nothing before the switch
    assert await settled(client, OLD.stream(1), GROUP, cutoff)  # no stream: nothing left there
    assert not await settled(client, stream, GROUP, cutoff)  # no group yet
    redis_client.xgroup_create(stream, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c", {stream: ">"}, count=1)
    assert not await settled(client, stream, GROUP, cutoff)  # not delivered up to the cutoff
    redis_client.xreadgroup(GROUP, "c", {stream: ">"}, count=2)
    assert not await settled(client, stream, GROUP, cutoff)  # delivered, still pending
    redis_client.xack(stream, GROUP, ids[0], ids[1])
    assert await settled(client, stream, GROUP, cutoff)  # the entry after the cutoff does not count
    # Entries up to the cutoff deleted before the group read them are not waited for.
    later = [redis_client.xadd(stream, {"n": str(n)}) for n in range(3, 5)]
    redis_client.xack(stream, GROUP, ids[2])
    assert not await settled(client, stream, GROUP, later[-1])
    redis_client.xdel(stream, *later)
    assert await settled(client, stream, GROUP, later[-1])


async def test_a_switch_is_retired_once_every_group_settled_every_old_partition(
    client: Any, redis_client: redis.Redis
) -> None:
    for stream in OLD.streams:
        redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        redis_client.xgroup_create(stream, "audit", id="0")
    await record_growth(client, BASE, 2)
    entry = redis_client.xadd(OLD.stream(1), {"n": "0"})
    await record_growth(client, BASE, 4)
    assert len((await retire_settled_switches(client, BASE, [GROUP, "audit"])).switches) == 1
    redis_client.xreadgroup(GROUP, "c", {OLD.stream(1): ">"})
    redis_client.xack(OLD.stream(1), GROUP, entry)
    assert len((await retire_settled_switches(client, BASE, [GROUP, "audit"])).switches) == 1  # audit lags
    redis_client.xreadgroup("audit", "c", {OLD.stream(1): ">"})
    redis_client.xack(OLD.stream(1), "audit", entry)
    assert await retire_settled_switches(client, BASE, [GROUP, "audit"]) == LayoutRecord(4)
    assert await read_layout(client, BASE) == LayoutRecord(4)


async def test_a_moved_key_is_held_until_its_old_partition_settles(
    client: Any, redis_client: redis.Redis
) -> None:
    key = moved_key()
    stay = next(k for k in (f"s-{n}" for n in range(100)) if NEW.partition_for(k) == OLD.partition_for(key))
    old, new = OLD.partition_for(key), NEW.partition_for(key)
    redis_client.xgroup_create(OLD.stream(old), GROUP, id="0", mkstream=True)
    await record_growth(client, BASE, 2)
    [entry] = Producer(redis_client, OLD).send_many([Event(type="t", payload={}, fields={KEY: key})])
    await record_growth(client, BASE, 4)
    epochs = LayoutEpochs(client, NEW, GROUP, poll_interval=0.0)
    await epochs.refresh()
    assert epochs.ready()
    assert epochs.held(key, new)
    assert not epochs.held(key, old)  # its old partition itself: its entries there are in order
    assert not epochs.held(stay, old)
    await epochs.poll()
    assert epochs.held(key, new)
    redis_client.xreadgroup(GROUP, "c", {OLD.stream(old): ">"})
    redis_client.xack(OLD.stream(old), GROUP, entry)
    await epochs.poll()
    assert not epochs.held(key, new)
    assert not epochs.holding


async def test_a_worker_runs_a_moved_keys_new_entries_after_its_old_ones(
    redis_url: str, client: Any, redis_client: redis.Redis
) -> None:
    key = moved_key()
    await record_growth(client, BASE, 2)
    # Nobody reads the old layout: at the switch, the key's old entries are all unprocessed.
    for stream in NEW.streams:
        redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    old = [Event(type="t", payload={}, fields={KEY: key, "seq": str(seq)}) for seq in range(200)]
    Producer(redis_client, OLD).send_many(old)
    await record_growth(client, BASE, 4)
    new = [Event(type="t", payload={}, fields={KEY: key, "seq": str(seq)}) for seq in range(200, 210)]
    Producer(redis_client, NEW).send_many(new)
    handled: Handled = []
    workers = [
        OrderedConsumer(settings_for(redis_url, name, 4), recorder(handled, name)) for name in ("w1", "w2")
    ]
    async with fleet(workers):
        await eventually_async(lambda: len(handled) >= 210, within=30, what="every entry handled")
    assert by_key(handled) == {key: list(range(210))}


async def test_a_worker_started_with_a_count_not_recorded_yet_waits(
    redis_url: str, client: Any, redis_client: redis.Redis
) -> None:
    await record_growth(client, BASE, 2)
    handled: Handled = []
    worker = OrderedConsumer(settings_for(redis_url, "w1", 4), recorder(handled, "w1"))
    Producer(redis_client, OLD).send_many([Event(type="t", payload={}, fields={KEY: "c-1", "seq": "0"})])
    async with fleet([worker]):
        await eventually_async(lambda: "waiting for the operator" in worker.health.reason, what="waiting")
        await asyncio.sleep(3 * worker.interval)
        assert (worker.owned(), handled, worker.health.ready) == ([], [], False)
        await record_growth(client, BASE, 4)
        await eventually_async(lambda: len(handled) == 1, within=30, what="the entry handled")
        assert worker.health.ready
    assert redis_client.get(layout_key(BASE)) is not None


async def test_the_record_on_a_cluster(tmp_path: Path) -> None:
    cluster = start_cluster("valkey9", tmp_path)
    client = create_async_client(ConnectionSettings(url=cluster.url, mode="cluster"))
    try:
        layout = PartitionLayout(BASE, 6)
        await record_growth(client, BASE, 6)
        ids = [str(await client.xadd(stream, {"n": "0"})) for stream in layout.streams]
        for stream in layout.streams:
            await client.xgroup_create(stream, GROUP, id="0")
        grown = await record_growth(client, BASE, 9)
        assert grown.switches == (Switch(6, tuple(ids)),)
        assert not await settled(client, layout.stream(0), GROUP, ids[0])
        for stream, entry in zip(layout.streams, ids, strict=True):
            await client.xreadgroup(GROUP, "c", {stream: ">"})
            await client.xack(stream, GROUP, entry)
        assert await retire_settled_switches(client, BASE, [GROUP]) == LayoutRecord(9)
    finally:
        await client.aclose()
        cluster.stop()
