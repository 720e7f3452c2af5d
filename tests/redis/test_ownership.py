"""The fenced partition lease of per-key ordering (``streampipe_worker.ownership``) on real servers:
one owner at a time, a new generation for each acquisition, reads and acks under a stale generation
refused with nothing touched, an expired lease given up locally before the server lets another
consumer in, the hand-over of pending entries in id order, and the same on a 3-primary cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.ownership import (
    HeldElsewhere,
    LeaseFencedError,
    Membership,
    NoStream,
    PartitionLease,
    PartitionLeases,
    PartitionOwner,
    assign_partitions,
    generation_key,
    members_key,
    owner_key,
)
from streampipe_worker.partitions import PartitionLayout
from tests.support.polling import eventually_async
from tests.support.servers import SERVER_IDS
from tests.support.topologies import start_cluster

pytestmark = pytest.mark.timeout(60)

LAYOUT = PartitionLayout("orders", 4, key="customer_id")
GROUP = "billing"
LONG_TTL_MS = 30_000
SHORT_TTL_MS = 300


@pytest.fixture
async def client(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[Any]:
    """A client of a server where every partition's stream exists with the group (a free lease is
    taken only then)."""
    create_groups(redis_client)
    connection = create_async_client(ConnectionSettings(url=redis_url))
    yield connection
    await connection.aclose()


def create_groups(redis_client: Any) -> None:
    for stream in LAYOUT.streams:
        redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)


def leases(client: Any, consumer: str, ttl_ms: int = LONG_TTL_MS, **kwargs: Any) -> PartitionLeases:
    return PartitionLeases(client, LAYOUT, GROUP, consumer, ttl_ms=ttl_ms, **kwargs)


def add_entries(redis_client: redis.Redis, partition: int, count: int) -> list[str]:
    """``count`` new entries on the partition's stream (the ``client`` fixture made its group); their
    ids."""
    stream = LAYOUT.stream(partition)
    return [str(redis_client.xadd(stream, {"n": str(n)})) for n in range(count)]


def pel(redis_client: redis.Redis, partition: int) -> list[tuple[str, str]]:
    """The group's pending entries of the partition: (id, consumer), in id order."""
    rows = redis_client.xpending_range(LAYOUT.stream(partition), GROUP, "-", "+", 100)
    return [(row["message_id"], row["consumer"]) for row in rows]


def last_delivered(redis_client: redis.Redis, partition: int) -> str:
    [group] = redis_client.xinfo_groups(LAYOUT.stream(partition))
    return str(group["last-delivered-id"])


def taken(outcome: PartitionLease | HeldElsewhere) -> PartitionLease:
    assert isinstance(outcome, PartitionLease), outcome
    return outcome


async def test_of_two_contenders_exactly_one_acquires(client: Any, redis_client: redis.Redis) -> None:
    outcomes = await asyncio.gather(leases(client, "a").acquire(0), leases(client, "b").acquire(0))
    [won] = [outcome for outcome in outcomes if isinstance(outcome, PartitionLease)]
    [lost] = [outcome for outcome in outcomes if isinstance(outcome, HeldElsewhere)]
    assert (won.generation, won.valid()) == (1, True)
    assert lost == HeldElsewhere(partition=0, holder=won.consumer, generation=1)
    assert redis_client.get(owner_key(LAYOUT, 0)) == f"{won.consumer}|1"
    assert sorted(redis_client.keys("{orders:0}:*")) == ["{orders:0}:generation", "{orders:0}:owner"]


async def test_each_new_acquisition_gets_the_next_generation(client: Any, redis_client: redis.Redis) -> None:
    a, b = leases(client, "a"), leases(client, "b")
    first = taken(await a.acquire(1))
    again = taken(await a.acquire(1))  # the holder asking again renews: same generation
    assert (first.generation, again.generation) == (1, 1)
    assert await a.release(again)
    second = taken(await b.acquire(1))
    assert await b.release(second)
    third = taken(await a.acquire(1))
    assert [second.generation, third.generation] == [2, 3]
    assert redis_client.get(generation_key(LAYOUT, 1)) == "3"
    assert redis_client.get(owner_key(LAYOUT, 1)) == "a|3"
    # Other partitions count on their own.
    assert taken(await b.acquire(2)).generation == 1


async def test_a_stale_generation_reads_and_acks_nothing(client: Any, redis_client: redis.Redis) -> None:
    ids = add_entries(redis_client, 0, 3)
    a, b = leases(client, "a"), leases(client, "b")
    old = taken(await a.acquire(0))
    delivered = await a.read(old, count=2)
    assert [entry.id for entry in delivered] == ids[:2]
    assert delivered[0].fields == {"n": "0"}
    # The server loses a's lease (as if it had expired while a was paused), and b takes the partition;
    # a's own clock still says its lease holds.
    redis_client.delete(owner_key(LAYOUT, 0))
    new = taken(await b.acquire(0))
    assert (old.valid(), new.generation) == (True, 2)
    with pytest.raises(LeaseFencedError, match="fence refused the read"):
        await a.read(old, count=10)
    with pytest.raises(LeaseFencedError, match="fence refused the read"):
        await a.read(old, count=10, pending=True)
    with pytest.raises(LeaseFencedError, match="fence refused the ack"):
        await a.ack(old, ids[:2])
    with pytest.raises(LeaseFencedError, match="fence refused the reclaim"):
        await a.reclaim(old)
    # Nothing was delivered, acked or claimed by a after b took over.
    assert pel(redis_client, 0) == [(ids[0], "a"), (ids[1], "a")]
    assert last_delivered(redis_client, 0) == ids[1]
    assert [entry.id for entry in await b.read(new, count=10)] == ids[2:]
    assert await b.ack(new, ids) == 3
    assert pel(redis_client, 0) == []


async def test_a_lease_past_its_local_deadline_touches_nothing(
    client: Any, redis_client: redis.Redis
) -> None:
    ids = add_entries(redis_client, 0, 2)
    now = [1000.0]
    a = leases(client, "a", clock=lambda: now[0])
    lease = taken(await a.acquire(0))
    assert [entry.id for entry in await a.read(lease, count=1)] == ids[:1]
    now[0] = lease.deadline  # the server still holds the lease, but a's clock says it may have run out
    assert not lease.valid()
    with pytest.raises(LeaseFencedError, match="local deadline"):
        await a.read(lease, count=10)
    with pytest.raises(LeaseFencedError, match="local deadline"):
        await a.ack(lease, ids[:1])
    assert (pel(redis_client, 0), last_delivered(redis_client, 0)) == ([(ids[0], "a")], ids[0])
    # A renewal that the server accepts makes the same generation valid again.
    assert await a.renew(lease)
    assert (lease.valid(), lease.generation) == (True, 1)
    assert await a.ack(lease, ids[:1]) == 1


async def test_an_expired_lease_is_given_up_locally_first_and_taken_with_a_higher_generation(
    client: Any, redis_client: redis.Redis
) -> None:
    a, b = leases(client, "a", ttl_ms=SHORT_TTL_MS), leases(client, "b", ttl_ms=SHORT_TTL_MS)
    old = taken(await a.acquire(3))
    assert isinstance(await b.acquire(3), HeldElsewhere)
    samples: list[tuple[bool, int]] = []  # (a's lease valid locally, the owner key's PTTL on the server)

    def server_expired() -> bool:
        local = old.valid()  # asked before the server, so a True here is older than the server's reply
        samples.append((local, int(redis_client.pttl(owner_key(LAYOUT, 3)))))
        return samples[-1][1] == -2

    await eventually_async(server_expired, what="a's lease to expire on the server", within=10, every=0.005)
    # Whenever a still trusted its lease, the server still held it; when the server let go, a had
    # already stopped.
    assert all(pttl > 0 for local, pttl in samples if local)
    assert samples[-1][0] is False
    new = taken(await b.acquire(3))
    assert new.generation == 2 > old.generation
    assert not await a.renew(old)
    assert redis_client.get(owner_key(LAYOUT, 3)) == "b|2"


async def test_release_lets_another_acquire_at_once(client: Any, redis_client: redis.Redis) -> None:
    a, b = leases(client, "a"), leases(client, "b")
    lease = taken(await a.acquire(0))
    assert await a.release(lease)
    assert not lease.valid()
    assert not await a.release(lease)  # released already: nothing of b's is deleted
    assert taken(await b.acquire(0)).generation == 2
    assert not await a.release(lease)
    assert redis_client.get(owner_key(LAYOUT, 0)) == "b|2"


async def test_renew_by_a_non_holder_fails_and_changes_nothing(
    client: Any, redis_client: redis.Redis
) -> None:
    a, b = leases(client, "a"), leases(client, "b")
    held = taken(await a.acquire(0))
    ttl_before = redis_client.pttl(owner_key(LAYOUT, 0))
    forged = PartitionLease(0, "b", held.generation, LONG_TTL_MS, held.deadline, held.sent_at)
    assert not await b.renew(forged)
    assert not forged.valid()
    stale = PartitionLease(0, "a", held.generation - 1, LONG_TTL_MS, held.deadline, held.sent_at)
    assert not await a.renew(stale)
    assert redis_client.get(owner_key(LAYOUT, 0)) == "a|1"
    assert 0 < redis_client.pttl(owner_key(LAYOUT, 0)) <= ttl_before
    assert await a.renew(held)


async def test_the_new_owner_reclaims_the_previous_owners_pending_entries_in_id_order(
    client: Any, redis_client: redis.Redis
) -> None:
    ids = add_entries(redis_client, 2, 8)
    stream = LAYOUT.stream(2)
    a, b = leases(client, "a"), leases(client, "b")
    old = taken(await a.acquire(2))
    await a.read(old, count=2)  # ids 0, 1 pending for a
    # An earlier owner's consumer "c" left ids 2, 3; then a reads 4; and b left 5 from a previous run.
    redis_client.xreadgroup(GROUP, "c", {stream: ">"}, count=2)
    await a.read(old, count=1)
    redis_client.xreadgroup(GROUP, "b", {stream: ">"}, count=1)
    assert await a.ack(old, [ids[1]]) == 1
    assert await a.release(old)
    new = taken(await b.acquire(2))
    reclaimed = await b.reclaim_all(new, count=2)  # pages of 2 PEL rows: the paging keeps id order
    assert [entry.id for entry in reclaimed] == [ids[0], ids[2], ids[3], ids[4]]
    assert [entry.fields for entry in reclaimed] == [{"n": "0"}, {"n": "2"}, {"n": "3"}, {"n": "4"}]
    assert pel(redis_client, 2) == [(ids[n], "b") for n in (0, 2, 3, 4, 5)]
    assert [entry.id for entry in await b.read(new, count=10, pending=True)] == [
        ids[n] for n in (0, 2, 3, 4, 5)
    ]
    assert [entry.id for entry in await b.read(new, count=10)] == ids[6:]
    assert (await b.reclaim(new)).entries == []


async def test_members_split_the_partitions_and_hand_them_over(
    client: Any, redis_client: redis.Redis
) -> None:
    def owner(name: str) -> PartitionOwner:
        return PartitionOwner(leases(client, name), Membership(client, LAYOUT, name, ttl_ms=LONG_TTL_MS))

    a, b = owner("a"), owner("b")
    assert await a.step() == [0, 1, 2, 3]
    assert await b.step() == []  # b's partitions are still a's
    shares = assign_partitions(LAYOUT.count, ["a", "b"])
    assert await a.step() == list(shares["a"])  # a sees b and releases b's share
    assert await b.step() == list(shares["b"])
    assert sorted(redis_client.zrange(members_key(LAYOUT), 0, -1)) == ["a", "b"]
    for partition in range(LAYOUT.count):
        expected = "a" if partition in shares["a"] else "b"
        assert str(redis_client.get(owner_key(LAYOUT, partition))).split("|")[0] == expected
    await a.release_all()
    assert redis_client.zrange(members_key(LAYOUT), 0, -1) == ["b"]
    assert await b.step() == [0, 1, 2, 3]


async def test_a_deleted_pipelines_keys_are_not_written_again(client: Any, redis_client: redis.Redis) -> None:
    """What a worker still running after its pipeline was deleted (deletionPolicy Delete) writes: no
    lease, no generation, and a registry that expires with its last member."""
    ttl_ms = 1000
    owner = PartitionOwner(leases(client, "a", ttl_ms=ttl_ms), Membership(client, LAYOUT, "a", ttl_ms=ttl_ms))
    assert await owner.step() == [0, 1, 2, 3]
    assert 0 < redis_client.pttl(members_key(LAYOUT)) <= ttl_ms
    keys = [
        key
        for p in range(LAYOUT.count)
        for key in (LAYOUT.stream(p), owner_key(LAYOUT, p), generation_key(LAYOUT, p))
    ]
    redis_client.delete(*keys, members_key(LAYOUT))  # the operator's teardown
    await asyncio.sleep(ttl_ms / 2000)  # past the renewals' due time (a third of the ttl)
    assert await owner.step() == []  # the renewals fail, and the free leases are not taken again
    assert await owner.step() == []
    assert redis_client.exists(*keys) == 0
    assert isinstance(await leases(client, "b").acquire(0), NoStream)
    assert redis_client.exists(*keys) == 0
    # Its own registry entry is back (the heartbeat cannot tell), but the key expires with it.
    assert 0 < redis_client.pttl(members_key(LAYOUT)) <= ttl_ms
    await eventually_async(lambda: redis_client.exists(members_key(LAYOUT)) == 0, what="registry expired")
    # A partition whose stream exists again (created again) is taken, with a new count from 1.
    create_groups(redis_client)
    assert taken(await leases(client, "b").acquire(0)).generation == 1


async def test_running_owners_split_the_partitions_and_one_stopping_hands_its_share_over(
    client: Any, redis_client: redis.Redis
) -> None:
    ttl_ms = 600  # a round every 200 ms
    owners = {
        name: PartitionOwner(
            leases(client, name, ttl_ms=ttl_ms), Membership(client, LAYOUT, name, ttl_ms=ttl_ms)
        )
        for name in ("a", "b")
    }
    stops = {name: asyncio.Event() for name in owners}
    tasks = {name: asyncio.create_task(owner.run(stops[name])) for name, owner in owners.items()}
    try:
        shares = assign_partitions(LAYOUT.count, ["a", "b"])
        split = {name: list(shares[name]) for name in owners}
        await eventually_async(
            lambda: {name: owner.owned() for name, owner in owners.items()} == split, what="an even split"
        )
        stops["a"].set()
        await tasks["a"]
        assert owners["a"].held == {}
        assert redis_client.zrange(members_key(LAYOUT), 0, -1) == ["b"]
        await eventually_async(lambda: owners["b"].owned() == [0, 1, 2, 3], what="b to own every partition")
        holders = [redis_client.get(owner_key(LAYOUT, partition)) for partition in range(LAYOUT.count)]
        assert [str(value).split("|")[0] for value in holders] == ["b"] * LAYOUT.count
    finally:
        for name in owners:
            stops[name].set()
        await asyncio.gather(*tasks.values())
    assert [redis_client.get(owner_key(LAYOUT, partition)) for partition in range(LAYOUT.count)] == [None] * 4


@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_on_a_cluster_each_partitions_lease_lives_in_its_own_slot(kind: str, tmp_path: Path) -> None:
    cluster = start_cluster(kind, tmp_path)
    layout = PartitionLayout("orders", 6)
    client = create_async_client(ConnectionSettings(url=cluster.url, mode="cluster"))
    try:
        for partition in range(layout.count):
            await client.xgroup_create(layout.stream(partition), GROUP, id="0", mkstream=True)
            await client.xadd(layout.stream(partition), {"n": "0"})
            await client.xadd(layout.stream(partition), {"n": "1"})
        make: Callable[[str], PartitionLeases] = lambda name: PartitionLeases(  # noqa: E731
            client, layout, GROUP, name, ttl_ms=LONG_TTL_MS
        )
        a, b = make("a"), make("b")
        old = [taken(await a.acquire(partition)) for partition in range(layout.count)]
        for lease in old:
            [first] = await a.read(lease, count=1)
            assert first.fields == {"n": "0"}
            assert isinstance(await b.acquire(lease.partition), HeldElsewhere)
            assert await a.release(lease)
        new = [taken(await b.acquire(partition)) for partition in range(layout.count)]
        assert {lease.generation for lease in new} == {2}
        for lease in new:
            [reclaimed] = await b.reclaim_all(lease)
            assert reclaimed.fields == {"n": "0"}
            assert [entry.fields for entry in await b.read(lease, count=10)] == [{"n": "1"}]
            assert await b.ack(lease, [reclaimed.id]) == 1
            with pytest.raises(LeaseFencedError):
                await a.ack(old[lease.partition], [reclaimed.id])
        # The partitions' keys are spread over more than one primary.
        nodes = {client.get_node_from_key(owner_key(layout, partition)).name for partition in range(6)}
        assert len(nodes) > 1
        members = Membership(client, layout, "a", ttl_ms=LONG_TTL_MS)
        assert await members.heartbeat() == ["a"]
    finally:
        await client.aclose()
        cluster.stop()
