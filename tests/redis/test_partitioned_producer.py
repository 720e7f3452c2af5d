"""Producers writing a partitioned pipeline, on real servers: every event in its partition's stream,
in order per partition; on a 3-primary cluster each partition on the primary that owns its slot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from streampipe_worker.partitions import PartitionLayout, partition_of
from streampipe_worker.producer import AsyncProducer, Event, Producer, encode_event
from streampipe_worker.router import InvalidEventError
from tests.support.servers import SERVER_IDS
from tests.support.topologies import start_cluster

pytestmark = pytest.mark.timeout(90)

LAYOUT = PartitionLayout("orders", 8, key="customer_id")


def keyed(count: int) -> list[Event]:
    return [
        Event(type="order.created", payload={"n": n}, fields={"customer_id": f"c-{n % 37}"})
        for n in range(count)
    ]


def stored(client: redis.Redis, layout: PartitionLayout) -> dict[str, list[tuple[str, dict[str, str]]]]:
    return {stream: [(i, f) for i, f in client.xrange(stream)] for stream in layout.streams}


def assert_routed(client: redis.Redis, layout: PartitionLayout, sent: list[Event], ids: list[str]) -> None:
    by_stream = stored(client, layout)
    assert sum(len(entries) for entries in by_stream.values()) == len(sent)
    expected: dict[str, list[tuple[str, dict[str, str]]]] = {stream: [] for stream in layout.streams}
    for event, entry_id in zip(sent, ids, strict=True):
        index = partition_of(event.fields["customer_id"], layout.count)
        expected[layout.stream(index)].append((entry_id, encode_event(event)))
    # Each partition holds exactly its events, in the order they were given, under the returned ids.
    assert by_stream == expected


def test_send_many_routes_each_event_by_its_key(redis_url: str, redis_client: redis.Redis) -> None:
    sent = keyed(2500)
    ids = Producer(create_client(ConnectionSettings(url=redis_url)), LAYOUT, chunk_size=1000).send_many(sent)
    assert_routed(redis_client, LAYOUT, sent, ids)
    assert len({partition_of(e.fields["customer_id"], 8) for e in sent}) == 8


def test_send_takes_the_key_and_routes_like_send_many(redis_url: str, redis_client: redis.Redis) -> None:
    producer = Producer(create_client(ConnectionSettings(url=redis_url)), LAYOUT)
    entry_id = producer.send("order.created", {"n": 1}, key="müller")
    stream = LAYOUT.stream(partition_of("müller", 8))
    [(stored_id, fields)] = redis_client.xrange(stream)
    assert (stored_id, fields["customer_id"]) == (entry_id, "müller")


def test_an_event_without_its_key_is_refused_before_anything_is_sent(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(create_client(ConnectionSettings(url=redis_url)), LAYOUT)
    batch = [*keyed(10), Event(type="order.created", payload={"n": 10})]
    with pytest.raises(InvalidEventError, match="customer_id"):
        producer.send_many(batch)
    assert redis_client.exists(*LAYOUT.streams) == 0
    with pytest.raises(ValueError, match="one stream"):
        Producer(redis_client, "{orders}:events").send("order.created", {}, key="c-1")


def test_without_a_key_field_events_are_spread_evenly(redis_url: str, redis_client: redis.Redis) -> None:
    layout = PartitionLayout("spread", 8)
    producer = Producer(create_client(ConnectionSettings(url=redis_url)), layout)
    producer.send_many([Event(type="t", payload={"n": n}) for n in range(1003)])
    for n in range(5):  # single sends continue the turn where send_many left it
        producer.send("t", {"n": 1003 + n})
    counts = [redis_client.xlen(stream) for stream in layout.streams]
    assert counts == [126] * 8
    with pytest.raises(ValueError, match="in turn"):
        producer.send("t", {}, key="k")


async def test_the_async_producer_routes_the_same_way(redis_url: str, redis_client: redis.Redis) -> None:
    client = create_async_client(ConnectionSettings(url=redis_url))
    try:
        producer = AsyncProducer(client, LAYOUT, chunk_size=300)
        sent = keyed(700)
        ids = await producer.send_many(sent)
        assert_routed(redis_client, LAYOUT, sent, ids)
        one = await producer.send("order.created", {"n": 0}, key="c-0")
        assert redis_client.xrevrange(LAYOUT.stream(partition_of("c-0", 8)), count=1)[0][0] == one
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", SERVER_IDS)
def test_on_a_cluster_each_partition_lives_on_the_primary_that_owns_its_slot(
    kind: str, tmp_path: Path
) -> None:
    cluster = start_cluster(kind, tmp_path)
    try:
        layout = PartitionLayout("orders", 16, key="customer_id")
        client = create_client(ConnectionSettings(url=cluster.url, mode="cluster"))
        sent = keyed(3000)
        ids = Producer(client, layout).send_many(sent)
        assert_routed(client, layout, sent, ids)
        owners: Counter[int] = Counter()
        for index in range(layout.count):
            stream = layout.stream(index)
            slot = client.cluster_keyslot(stream)
            assert slot == layout.slot(index)
            # The key is on exactly one primary, the one that owns its slot.
            holders = []
            for node in cluster.nodes:
                with node.client() as direct:
                    # Each node counts only the keys it holds (EXISTS would answer MOVED).
                    if direct.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot):
                        holders.append(node.port)
            assert len(holders) == 1
            owners[holders[0]] += 1
        assert len(owners) == 3  # 16 partitions spread over all three primaries
        client.close()
    finally:
        cluster.stop()
