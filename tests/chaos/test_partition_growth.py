"""Growing a PerKey pipeline's partitions mid-stream (``streampipe_worker.epochs``): 2 partitions, three
slow workers with a backlog in both, a producer writing numbered entries over 211 keys; then the
growth to 4 is recorded with the function the operator's pass calls, the producer routes with 4 from
then on, three workers started with 4 partitions join, and the old ones get SIGTERM while the new ones
already run (both generations overlap, as in a Deployment's rollout).

Half the keys move (to partitions 2 and 3) while their older entries still wait in partitions 0 and 1.
Oracle: nothing lost, duplicates bounded, and per key every entry is first handled only after every
older entry of that key was (``key_order_violations``, on the calls' CLOCK_MONOTONIC starts).

The control run is the same without an epoch switch: the test writes a record that already says 4
partitions with no switch (what a layout that never grew looks like), so no key is held; it must show
violations, or the test could not tell the hold from luck.

The producer pauses for the switch (its chunk in flight lands first): the contract is that producers
route with the new count once the switch is recorded; a stale producer's entry after the cutoff is
not ordered against the key's new partition (docs/partitions.md), and this test does not exercise it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from streampipe_operator.local.processes import LocalRuntime, ReplicaSet, ReplicaSpec
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from streampipe_worker.epochs import LayoutRecord, record_growth, retire_settled_switches
from streampipe_worker.partitions import PartitionLayout, layout_key
from streampipe_worker.producer import Event, Producer
from tests.chaos.harness import drained, storm_replicas, wait_until
from tests.chaos.oracle import dead_letters, judge, key_order_violations, read_calls
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

BASE = "orders"
KEY = "customer"
BEFORE = PartitionLayout(BASE, 2, key=KEY)
AFTER = PartitionLayout(BASE, 4, key=KEY)
GROUP = "billing"
KEYS = 211
HANDLER_DELAY = 0.002  # seconds a call takes: two partitions handle ~1000 entries/s, less than produced
CHUNK = 200
PAUSE = 0.05  # between chunks: ~4000 entries/s offered
SWITCH_AT = 4000  # entries sent with 2 partitions
TOTAL = 8000
BATCH = 20
WORKERS = 3


def key_of(n: int) -> str:
    return f"c-{n % KEYS}"


class GrowingProducer(threading.Thread):
    """Sends numbered entries (field ``n``, key field ``customer``) in chunks, routed with ``layout``;
    :meth:`hold` stops it between two chunks, :meth:`route` changes the layout and lets it go on."""

    def __init__(self, url: str) -> None:
        super().__init__(name="growth-producer", daemon=True)
        self.client = create_client(ConnectionSettings(url=url))
        self.producer = Producer(self.client, BEFORE)
        self.sent: list[int] = []
        self.error: BaseException | None = None
        self._go = threading.Event()
        self._go.set()
        self._idle = threading.Event()

    def hold(self) -> None:
        self._go.clear()
        self._idle.wait()

    def route(self, layout: PartitionLayout) -> None:
        self.producer = Producer(self.client, layout)
        self._go.set()

    def run(self) -> None:
        try:
            for start in range(0, TOTAL, CHUNK):
                self._idle.set()
                self._go.wait()
                self._idle.clear()
                numbers = range(start, min(start + CHUNK, TOTAL))
                events = [
                    Event(type="order.created", payload={}, fields={"n": str(n), KEY: key_of(n)})
                    for n in numbers
                ]
                self.producer.send_many(events)
                self.sent.extend(numbers)
                time.sleep(PAUSE)
        except BaseException as exc:
            self.error = exc
        finally:
            self._idle.set()


def workers(name: str, url: str, records: Path, layout: PartitionLayout) -> ReplicaSpec:
    settings = {
        "stream": BASE,
        "group": GROUP,
        "partitions": layout.count,
        "ordering": "PerKey",
        "partition_key": KEY,
        "lease_ttl": "2s",
    }
    return storm_replicas(name, url, records, HANDLER_DELAY, batch_size=BATCH, **settings)


def backlog(client: redis.Redis, layout: PartitionLayout) -> int:
    total = 0
    for stream in layout.streams:
        [group] = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP]
        total += int(group["lag"] or 0) + int(group["pending"])
    return total


def all_drained(client: redis.Redis) -> bool:
    return all(drained(client, stream, GROUP) for stream in AFTER.streams)


async def record(url: str, count: int) -> LayoutRecord:
    client = create_async_client(ConnectionSettings(url=url))
    try:
        return await record_growth(client, BASE, count)
    finally:
        await client.aclose()


def grow_mid_stream(server: ServerProcess, tmp_path: Path, *, switch: bool) -> tuple[list[int], Path, int]:
    """The run the module docstring describes; ``switch=False`` is the control without a switch. The
    sent numbers, the record directory, and the backlog of the old partitions at the switch."""
    client = server.client()
    records = tmp_path / "records"
    records.mkdir()
    for stream in AFTER.streams:  # the operator creates the groups of the new partitions too
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    assert asyncio.run(record(server.url, BEFORE.count)) == LayoutRecord(BEFORE.count)
    with LocalRuntime(tmp_path / "run", probe_interval=0.05) as runtime:
        old: ReplicaSet = runtime.replica_set(workers("before", server.url, records, BEFORE))
        old.scale(WORKERS)
        assert old.wait_ready(timeout=60), "workers did not start"
        producer = GrowingProducer(server.url)
        producer.start()
        wait_until(lambda: len(producer.sent) >= SWITCH_AT, 60, "the entries before the growth sent")
        producer.hold()
        at_switch = backlog(client, BEFORE)
        if switch:
            grown = asyncio.run(record(server.url, AFTER.count))
            assert [s.old_count for s in grown.switches] == [BEFORE.count]
        else:
            client.set(layout_key(BASE), LayoutRecord(AFTER.count).to_json())
        producer.route(AFTER)
        new = runtime.replica_set(workers("after", server.url, records, AFTER))
        new.scale(WORKERS)
        assert new.wait_ready(timeout=60), "the grown workers did not start"
        assert old.stop(grace=15)
        producer.join(timeout=60)
        assert producer.error is None, producer.error
        wait_until(lambda: all_drained(client), 120, "every partition drained")
        assert new.stop(grace=15)
    return producer.sent, records, at_switch


def test_growing_a_per_key_pipeline_keeps_each_keys_order(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    sent, records, at_switch = grow_mid_stream(server, tmp_path, switch=True)
    assert at_switch > 0, "no backlog at the switch: nothing was there to keep the order against"
    calls = read_calls(records)
    with server.client() as client:
        dead = [envelope for stream in AFTER.streams for envelope in dead_letters(client, f"{stream}:dlq")]
        verdict = judge(sent, calls, dead)
        assert verdict.lost == [], verdict.summary()
        assert verdict.unknown == []
        assert verdict.dead_lettered == 0
        assert key_order_violations(calls, key_of) == []
        # Only SIGTERMs, graceful hand-overs: at most one batch per partition handled again.
        assert verdict.duplicates <= BATCH * AFTER.count, verdict.summary()
        # Every old partition is settled now: the operator's pass retires the switch.
        assert asyncio.run(retire(server.url)) == LayoutRecord(AFTER.count)
    print(f"growth: backlog at the switch {at_switch}, {verdict.summary()}")


async def retire(url: str) -> LayoutRecord | None:
    client = create_async_client(ConnectionSettings(url=url))
    try:
        return await retire_settled_switches(client, BASE, [GROUP])
    finally:
        await client.aclose()


def test_without_the_switch_the_order_breaks(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    sent, records, at_switch = grow_mid_stream(server, tmp_path, switch=False)
    assert at_switch > 0
    calls = read_calls(records)
    assert judge(sent, calls, []).lost == []
    violations = key_order_violations(calls, key_of)
    assert len(violations) > 0
    print(f"control: backlog at the switch {at_switch}, {len(violations)} per-key order violations")
