"""The per-key ordering worker (``STREAMPIPE_ORDERING=PerKey``, ``streampipe_worker.ordered``) on real
servers: partitions spread evenly over the workers with one owner each, every entry processed, each
key's entries handled in order, a poison entry holding only its own key, a stopping worker handing its
partitions over, a worker that loses a lease acking nothing more there, and the same on a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.ordered import OrderedConsumer
from streampipe_worker.ownership import LeaseFencedError, PartitionLease, PartitionLeases, owner_key
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import Entry, Router, classify_handler
from streampipe_worker.settings import SettingsError, WorkerSettings, load_settings, render_env
from tests.redis.conftest import GROUP, worker_settings_for
from tests.support.polling import eventually, eventually_async
from tests.support.servers import SERVER_IDS, free_port
from tests.support.topologies import start_cluster
from tests.support.worker_process import WorkerProcesses

pytestmark = pytest.mark.timeout(120)

BASE = "orders"
KEY = "customer_id"


class Order(BaseModel):
    amount: int


Handled = list[tuple[str, str, int]]  # (consumer, key, seq) in the order handlers ran


def settings_for(url: str, consumer: str, count: int, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "stream": BASE,
        "partitions": count,
        "ordering": "PerKey",
        "partition_key": KEY,
        "create_group": "0",
        "consumer": consumer,
        "lease_ttl": "1s",
        "block": "200ms",
        "max_deliveries": 3,
        "backoff_initial": "50ms",
        "backoff_max": "200ms",
    }
    values.update(overrides)
    return worker_settings_for(url, **values)


def keyed_events(keys: int, per_key: int) -> list[Event]:
    """``per_key`` entries of each of ``keys`` keys, interleaved; each carries its key's sequence."""
    return [
        Event(type="order.created", payload={}, fields={KEY: f"c-{k}", "seq": str(seq)})
        for seq in range(per_key)
        for k in range(keys)
    ]


def recorder(handled: Handled, name: str, fail: Callable[[Entry], None] = lambda entry: None) -> Any:
    def handle(entry: Entry) -> None:
        handled.append((name, entry.fields[KEY], int(entry.fields["seq"])))
        fail(entry)

    return classify_handler(handle)


def by_key(handled: Handled) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for _, key, seq in handled:
        seqs[key].append(seq)
    return dict(seqs)


def first_handlings_in_order(handled: Handled) -> bool:
    """The per-key order oracle under faults: a key's entries are first handled in sequence order, and
    a repeat (a redelivery of an entry not acked) never goes back before one already repeated."""
    for seqs in by_key(handled).values():
        firsts: list[int] = []
        for seq in seqs:
            if seq not in firsts:
                firsts.append(seq)
        if firsts != sorted(firsts):
            return False
    return True


def group_state(client: Any, stream: str) -> tuple[int, int]:
    """(pending, lag) of the test group on one partition."""
    [group] = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP]
    return int(group["pending"]), int(group["lag"] or 0)


@contextlib.asynccontextmanager
async def fleet(consumers: list[OrderedConsumer]) -> AsyncIterator[list[OrderedConsumer]]:
    tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        yield consumers
    finally:
        for consumer in consumers:
            consumer.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


def spread(consumers: list[OrderedConsumer], count: int) -> list[int] | None:
    """Each consumer's number of owned partitions once every partition has exactly one owner and the
    counts differ by at most one (the state the owners settle into)."""
    owned = [consumer.owned() for consumer in consumers]
    everything = sorted(p for parts in owned for p in parts)
    shares = [len(parts) for parts in owned]
    return shares if everything == list(range(count)) and max(shares) - min(shares) <= 1 else None


@pytest.mark.parametrize("count", [4, 7])
async def test_three_workers_spread_the_partitions_and_handle_each_key_in_order(
    redis_url: str, redis_client: redis.Redis, count: int
) -> None:
    layout = PartitionLayout(BASE, count, key=KEY)
    handled: Handled = []
    names = ["w1", "w2", "w3"]
    workers = [OrderedConsumer(settings_for(redis_url, n, count), recorder(handled, n)) for n in names]
    async with fleet(workers):
        shares = await eventually_async(lambda: spread(workers, count), within=30, what="an even spread")
        assert sum(shares) == count
        events = keyed_events(keys=40, per_key=25)
        Producer(redis_client, layout).send_many(events)
        await eventually_async(lambda: len(handled) >= len(events), within=60, what="every entry handled")
        # One owner per partition throughout: each key was handled by one worker only.
        owners = {key: {name for name, k, _ in handled if k == key} for _, key, _ in handled}
        assert all(len(names_) == 1 for names_ in owners.values())
    # No faults, graceful hand-overs only: every key's entries exactly once, in sequence order.
    assert by_key(handled) == {f"c-{k}": list(range(25)) for k in range(40)}
    for stream in layout.streams:
        assert group_state(redis_client, stream) == (0, 0)
    assert [w.ownership.partitions_owned._value.get() for w in workers] == [0, 0, 0]
    assert redis_client.zcard("{orders}:members") == 0
    assert all(worker.stats.processed > 0 for worker in workers)


def same_partition_keys(layout: PartitionLayout, wanted: int) -> list[str]:
    """``wanted`` key values that all route to partition 0."""
    return [k for k in (f"k-{n}" for n in range(1000)) if layout.partition_for(k) == 0][:wanted]


async def test_a_poison_entry_holds_only_its_own_key(redis_url: str, redis_client: redis.Redis) -> None:
    layout = PartitionLayout(BASE, 2, key=KEY)
    poisoned, other = same_partition_keys(layout, 2)
    events = [
        Event(type="t", payload={}, fields={KEY: key, "seq": str(seq)})
        for seq in range(10)
        for key in (poisoned, other)
    ]
    handled: Handled = []

    def poison(entry: Entry) -> None:
        if entry.fields[KEY] == poisoned and entry.fields["seq"] == "1":
            raise ValueError("cannot bill this order")

    Producer(redis_client, layout).send_many(events)
    settings = settings_for(redis_url, "w1", 2, backoff_initial="300ms", backoff_max="300ms")
    worker = OrderedConsumer(settings, recorder(handled, "w1", poison))
    async with fleet([worker]):
        await eventually_async(lambda: len(handled) == 22, within=30, what="20 entries and 2 retries handled")
        await eventually_async(
            lambda: group_state(redis_client, layout.stream(0)) == (0, 0), what="all acked"
        )
    seqs = by_key(handled)
    assert seqs[poisoned] == [0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert seqs[other] == list(range(10))
    # The other key went on while the poison entry waited for its retries.
    attempts = [i for i, (_, key, seq) in enumerate(handled) if (key, seq) == (poisoned, 1)]
    assert any(key == other for _, key, _ in handled[attempts[0] + 1 : attempts[-1]])
    [(_, fields)] = redis_client.xrange(layout.dead_letter(0))
    envelope = DeadLetterEnvelope.from_fields(fields)
    assert (envelope.original[KEY], envelope.original["seq"]) == (poisoned, "1")
    assert (envelope.deliveries, envelope.error, envelope.exception) == (
        3,
        "cannot bill this order",
        "ValueError",
    )
    assert (envelope.original_stream, envelope.consumer) == (layout.stream(0), "w1")
    assert redis_client.xlen(layout.dead_letter(1)) == 0
    assert worker.stats.dead_lettered == 1


async def test_a_malformed_entry_goes_to_the_dead_letter_stream_with_the_reason(
    redis_url: str, redis_client: redis.Redis
) -> None:
    router = Router()
    seen: list[int] = []

    @router.on("order.created", model=Order)
    def created(order: Order) -> None:
        seen.append(order.amount)

    layout = PartitionLayout(BASE, 1, key=KEY)
    producer = Producer(redis_client, layout)
    producer.send_many(
        [
            Event(type="order.created", payload={"amount": 1}, fields={KEY: "a"}),
            Event(type="order.created", payload={"amount": "lots"}, fields={KEY: "a"}),
            Event(type="order.created", payload={"amount": 3}, fields={KEY: "a"}),
        ]
    )
    worker = OrderedConsumer(settings_for(redis_url, "w1", 1), classify_handler(router))
    async with fleet([worker]):
        await eventually_async(lambda: seen == [1, 3], what="the two valid entries handled")
        await eventually_async(lambda: redis_client.xlen(layout.dead_letter(0)) == 1, what="one dead letter")
    [(_, fields)] = redis_client.xrange(layout.dead_letter(0))
    envelope = DeadLetterEnvelope.from_fields(fields)
    assert (envelope.deliveries, envelope.short_exception) == (1, "InvalidEventError")
    assert "payload does not match Order" in envelope.error
    assert group_state(redis_client, layout.stream(0)) == (0, 0)


async def test_a_stopping_worker_hands_its_partitions_over(redis_url: str, redis_client: redis.Redis) -> None:
    count = 6
    layout = PartitionLayout(BASE, count, key=KEY)
    handled: Handled = []
    first = OrderedConsumer(settings_for(redis_url, "w1", count), recorder(handled, "w1"))
    second = OrderedConsumer(settings_for(redis_url, "w2", count), recorder(handled, "w2"))
    events = keyed_events(keys=30, per_key=40)
    task = asyncio.create_task(first.run())
    async with fleet([second]):
        await eventually_async(lambda: spread([first, second], count), within=30, what="an even spread")
        Producer(redis_client, layout).send_many(events)
        await eventually_async(lambda: len(handled) >= 100, what="some entries handled")
        first.request_stop()
        await asyncio.wait_for(task, timeout=30)
        assert first.owned() == []
        await eventually_async(lambda: second.owned() == list(range(count)), what="w2 owns every partition")
        await eventually_async(
            lambda: len({(k, s) for _, k, s in handled}) == len(events), within=60, what="all"
        )
    assert first_handlings_in_order(handled)
    assert sorted({(k, s) for _, k, s in handled}) == sorted(
        (f"c-{k}", s) for k in range(30) for s in range(40)
    )
    for stream in layout.streams:
        assert group_state(redis_client, stream) == (0, 0)
    exposition = second.metrics.render().decode()
    assert 'streampipe_worker_partitions_owned{group="billing",stream="orders"} 0.0' in exposition
    assert first.ownership.leases_lost._value.get() == 0


async def test_a_joining_worker_takes_its_share_and_nothing_is_handled_twice(
    redis_url: str, redis_client: redis.Redis
) -> None:
    count = 6
    layout = PartitionLayout(BASE, count, key=KEY)
    handled: Handled = []
    deliveries: set[int] = set()

    def slow(name: str) -> Any:
        async def handle(entry: Entry) -> None:
            handled.append((name, entry.fields[KEY], int(entry.fields["seq"])))
            deliveries.add(entry.deliveries)
            await asyncio.sleep(0.002)

        return classify_handler(handle)

    first = OrderedConsumer(settings_for(redis_url, "w1", count), slow("w1"))
    second = OrderedConsumer(settings_for(redis_url, "w2", count), slow("w2"))
    events = keyed_events(keys=24, per_key=50)
    Producer(redis_client, layout).send_many(events)
    async with fleet([first]):
        await eventually_async(lambda: first.owned() == list(range(count)), what="w1 owns every partition")
        await eventually_async(lambda: len(handled) >= 50, what="w1 under way")
        async with fleet([second]):
            await eventually_async(lambda: spread([first, second], count), within=30, what="an even spread")
            await eventually_async(lambda: len(handled) >= len(events), within=60, what="every entry handled")
    # Handed over gracefully (closed, acked, then released): each entry once, each key in order.
    assert by_key(handled) == {f"c-{k}": list(range(50)) for k in range(24)}
    assert {name for name, _, _ in handled} == {"w1", "w2"}
    assert first.ownership.leases_lost._value.get() == second.ownership.leases_lost._value.get() == 0
    # w1 had read entries it never started when it handed partitions over: they came back with the
    # deliveries they really had, so w2 ran them on their first delivery too.
    assert deliveries == {1}


async def test_a_worker_whose_lease_is_taken_acks_nothing_more_there(
    redis_url: str, redis_client: redis.Redis
) -> None:
    layout = PartitionLayout(BASE, 2, key=KEY)
    gate = asyncio.Event()
    started = asyncio.Event()
    [blocking, *_] = same_partition_keys(layout, 1)
    handled: Handled = []

    async def handle(entry: Entry) -> None:
        handled.append(("w1", entry.fields[KEY], int(entry.fields["seq"])))
        if entry.fields[KEY] == blocking and entry.fields["seq"] == "0" and not gate.is_set():
            started.set()
            await gate.wait()

    ids = Producer(redis_client, layout).send_many(
        [Event(type="t", payload={}, fields={KEY: blocking, "seq": str(seq)}) for seq in range(5)]
    )
    worker = OrderedConsumer(settings_for(redis_url, "w1", 2), classify_handler(handle))
    intruder_client = create_async_client(ConnectionSettings(url=redis_url))
    intruder = PartitionLeases(intruder_client, layout, GROUP, "intruder", ttl_ms=60_000)
    try:
        async with fleet([worker]):
            await asyncio.wait_for(started.wait(), timeout=30)
            # The lease is taken away while the handler runs: the owner key now names another holder.
            redis_client.delete(owner_key(layout, 0))
            taken = await intruder.acquire(0)
            assert isinstance(taken, PartitionLease)
            gate.set()
            await eventually_async(lambda: worker.ownership.leases_lost._value.get() == 1, what="lease lost")
            await eventually_async(lambda: worker.owned() == [1], what="w1 owns partition 1 only")
            # The entry whose handler finished after the loss was not acked: still pending, still w1's.
            rows = redis_client.xpending_range(layout.stream(0), GROUP, "-", "+", 10)
            assert (rows[0]["message_id"], rows[0]["consumer"]) == (ids[0], "w1")
            assert group_state(redis_client, layout.stream(0))[0] >= 1
            # Given back, the partition is taken again with a new generation, and the entry handled first.
            await intruder.release(taken)
            await eventually_async(lambda: worker.owned() == [0, 1], what="w1 owns partition 0 again")
            await eventually_async(
                lambda: group_state(redis_client, layout.stream(0)) == (0, 0), what="acked"
            )
        assert redis_client.get(owner_key(layout, 0)) is None
    finally:
        await intruder_client.aclose()
    assert first_handlings_in_order(handled)
    assert sorted(set(by_key(handled)[blocking])) == [0, 1, 2, 3, 4]
    assert by_key(handled)[blocking][:2] == [0, 0]  # handled again first by the next generation


async def test_the_dead_letter_move_is_fenced(redis_url: str, redis_client: redis.Redis) -> None:
    layout = PartitionLayout(BASE, 1, key=KEY)
    redis_client.xgroup_create(layout.stream(0), GROUP, id="0", mkstream=True)
    entry_id = redis_client.xadd(layout.stream(0), {KEY: "a"})
    client = create_async_client(ConnectionSettings(url=redis_url))
    try:
        old, new = (PartitionLeases(client, layout, GROUP, name, ttl_ms=60_000) for name in ("old", "new"))
        stale = await old.acquire(0)
        assert isinstance(stale, PartitionLease)
        assert [entry.id for entry in await old.read(stale, count=10)] == [entry_id]
        redis_client.delete(owner_key(layout, 0))
        current = await new.acquire(0)
        assert isinstance(current, PartitionLease)
        with pytest.raises(LeaseFencedError, match="dead-letter move"):
            await old.dead_letter(stale, entry_id, {"error": "x"})
        assert (redis_client.xlen(layout.dead_letter(0)), group_state(redis_client, layout.stream(0))) == (
            0,
            (1, 0),
        )
        [claimed] = await new.reclaim_all(current)
        assert await new.dead_letter(current, claimed.id, {"error": "x"})
        assert not await new.dead_letter(current, claimed.id, {"error": "x"})  # a repeat adds nothing
        assert (redis_client.xlen(layout.dead_letter(0)), group_state(redis_client, layout.stream(0))) == (
            1,
            (0, 0),
        )
    finally:
        await client.aclose()


def test_per_key_settings() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(SettingsError) as refused:
        worker_settings_for(url, stream="{orders}:events", ordering="PerKey")
    assert [name for name, _ in refused.value.problems] == ["STREAMPIPE_ORDERING"]
    with pytest.raises(SettingsError) as refused:
        worker_settings_for(url, stream=BASE, partitions=4, ordering="PerKey", lease_ttl="500ms")
    assert [name for name, _ in refused.value.problems] == ["STREAMPIPE_LEASE_TTL"]
    with pytest.raises(SettingsError) as refused:
        worker_settings_for(url, stream=BASE, partitions=4, ordering="Total")
    assert [name for name, _ in refused.value.problems] == ["STREAMPIPE_ORDERING"]
    env = render_env(
        {
            "redis_url": url,
            "stream": BASE,
            "partitions": 8,
            "group": GROUP,
            "handler": "tests.unused:handler",
            "ordering": "PerKey",
            "partition_key": KEY,
            "lease_ttl": "30s",
        }
    )
    assert (env["STREAMPIPE_ORDERING"], env["STREAMPIPE_PARTITION_KEY"], env["STREAMPIPE_LEASE_TTL"]) == (
        "PerKey",
        KEY,
        "30s",
    )
    settings = load_settings(env)
    assert (settings.ordering, settings.partition_key, settings.lease_ttl.total_seconds()) == (
        "PerKey",
        KEY,
        30,
    )
    assert settings.layout == PartitionLayout(BASE, 8, key=KEY)
    defaults = load_settings({k: v for k, v in env.items() if "ORDERING" not in k and "LEASE" not in k})
    assert (defaults.ordering, defaults.lease_ttl.total_seconds()) == ("None", 10)


HANDLER_MODULE = """
import os

_out = open(os.environ["TEST_OUT"], "a", buffering=1)


def handle(entry):
    _out.write(f"{entry.fields['customer_id']} {entry.fields['seq']}\\n")
"""


def test_worker_processes_hand_over_at_once_on_sigterm(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    count = 4
    layout = PartitionLayout(BASE, count, key=KEY)
    workers = WorkerProcesses(redis_url, tmp_path, BASE, GROUP, "ordered_handlers", HANDLER_MODULE)
    env = {
        "STREAMPIPE_PARTITIONS": str(count),
        "STREAMPIPE_ORDERING": "PerKey",
        "STREAMPIPE_PARTITION_KEY": KEY,
        "STREAMPIPE_CREATE_GROUP": "0",
        # Long enough that waiting for an expiry would show: the successor must not need it.
        "STREAMPIPE_LEASE_TTL": "5m",
    }
    try:
        port = free_port()
        first = workers.start(
            "w1", STREAMPIPE_METRICS_PORT=str(port), STREAMPIPE_METRICS_HOST="127.0.0.1", **env
        )

        def ready() -> bool:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as reply,
            ):
                return reply.status == 200
            return False

        eventually(ready, within=30, what="w1 ready")
        eventually(
            lambda: all(redis_client.get(owner_key(layout, p)) for p in range(count)), what="w1 owns all"
        )
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=30)
        assert first.returncode == 0, stderr
        # Released at once, and the registry left: nothing waits for the 5 minute ttl.
        assert [redis_client.get(owner_key(layout, p)) for p in range(count)] == [None] * count
        assert redis_client.zcard("{orders}:members") == 0
        workers.start("w2", **env)
        eventually(
            lambda: [redis_client.get(owner_key(layout, p)) for p in range(count)] == ["w2|2"] * count,
            within=30,
            what="w2 owns every partition, each with the next generation",
        )
        Producer(redis_client, layout).send_many(keyed_events(keys=10, per_key=10))
        out = tmp_path / "w2.out"
        eventually(lambda: out.exists() and len(out.read_text().splitlines()) == 100, within=30, what="100")
        lines = [line.split() for line in out.read_text().splitlines()]
        assert by_key([("w2", key, int(seq)) for key, seq in lines]) == {
            f"c-{k}": list(range(10)) for k in range(10)
        }
    finally:
        workers.stop_all()


RECORDING_MODULE = """
import os
import time

import redis

_client = redis.Redis.from_url(os.environ["STREAMPIPE_REDIS_URL"], decode_responses=True)


def handle(entry):
    # One stream records every worker's handler calls in the order they started.
    _client.xadd("handled", {"by": os.environ["STREAMPIPE_CONSUMER"], "key": entry.fields["customer_id"],
                             "seq": entry.fields["seq"]})
    time.sleep(0.01)
"""


def exposition_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    [sample] = [sample for sample in families[name].samples if sample.name.endswith("_total")]
    return float(sample.value)


def test_a_stopped_process_loses_its_leases_and_its_keys_stay_in_order(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    count = 4
    layout = PartitionLayout(BASE, count, key=KEY)
    workers = WorkerProcesses(redis_url, tmp_path, BASE, GROUP, "recording_handlers", RECORDING_MODULE)
    env = {
        "STREAMPIPE_PARTITIONS": str(count),
        "STREAMPIPE_ORDERING": "PerKey",
        "STREAMPIPE_PARTITION_KEY": KEY,
        "STREAMPIPE_CREATE_GROUP": "0",
        "STREAMPIPE_LEASE_TTL": "1s",
        "STREAMPIPE_METRICS_HOST": "127.0.0.1",
    }
    ports = {"w1": free_port(), "w2": free_port()}
    owners = lambda: [redis_client.get(owner_key(layout, p)) or "" for p in range(count)]  # noqa: E731
    try:
        first = workers.start("w1", STREAMPIPE_METRICS_PORT=str(ports["w1"]), **env)
        workers.start("w2", STREAMPIPE_METRICS_PORT=str(ports["w2"]), **env)
        eventually(
            lambda: sorted(o.split("|")[0] for o in owners()) == ["w1", "w1", "w2", "w2"], what="2 each"
        )
        Producer(redis_client, layout).send_many(keyed_events(keys=20, per_key=30))
        eventually(lambda: redis_client.xlen("handled") >= 60, what="under way")
        first.send_signal(signal.SIGSTOP)  # w1 stops renewing, mid-batch
        try:
            eventually(lambda: all(o.startswith("w2|") for o in owners()), what="w2 takes every partition")
        finally:
            first.send_signal(signal.SIGCONT)
        eventually(lambda: exposition_value(ports["w1"], "streampipe_worker_partition_leases_lost") == 2.0)
        eventually(
            lambda: len({(f["key"], f["seq"]) for _, f in redis_client.xrange("handled")}) == 600,
            within=60,
            what="every entry handled",
        )
        eventually(
            lambda: all(group_state(redis_client, stream) == (0, 0) for stream in layout.streams),
            what="acked",
        )
        handled = [(f["by"], f["key"], int(f["seq"])) for _, f in redis_client.xrange("handled")]
        assert first_handlings_in_order(handled)
        assert exposition_value(ports["w2"], "streampipe_worker_partition_leases_lost") == 0.0
    finally:
        workers.stop_all()


def test_check_reports_the_ordering(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    env.update(
        {
            "STREAMPIPE_STREAM": BASE,
            "STREAMPIPE_PARTITIONS": "4",
            "STREAMPIPE_ORDERING": "PerKey",
            "STREAMPIPE_PARTITION_KEY": KEY,
            "STREAMPIPE_GROUP": GROUP,
            "STREAMPIPE_HANDLER": "json:dumps",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "streampipe_worker", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["ordering"], report["partition_key"], report["partitions"]) == ("PerKey", KEY, 4)


@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_on_a_cluster_two_workers_own_the_partitions_on_every_primary(
    kind: str, tmp_path: Path
) -> None:
    cluster = start_cluster(kind, tmp_path)
    try:
        count = 6
        layout = PartitionLayout(BASE, count, key=KEY)
        handled: Handled = []
        workers = [
            OrderedConsumer(settings_for(cluster.url, n, count, redis_mode="cluster"), recorder(handled, n))
            for n in ("w1", "w2")
        ]
        client = create_client(ConnectionSettings(url=cluster.url, mode="cluster"))
        events = keyed_events(keys=20, per_key=20)
        async with fleet(workers):
            shares = await eventually_async(lambda: spread(workers, count), within=30, what="an even spread")
            assert shares == [3, 3]
            Producer(client, layout).send_many(events)
            await eventually_async(lambda: len(handled) >= len(events), within=60, what="every entry handled")
        assert by_key(handled) == {f"c-{k}": list(range(20)) for k in range(20)}
        for stream in layout.streams:
            assert group_state(client, stream) == (0, 0)
        client.close()
    finally:
        cluster.stop()


PERKEY_ACL = Path(__file__).resolve().parents[2] / "docs" / "acl" / "worker-perkey.acl"


async def test_the_documented_acl_user_suffices(redis_url: str, redis_client: redis.Redis) -> None:
    # docs/acl/worker-perkey.acl as it is (a real password): reads, acks, retries, a dead-letter move,
    # the leases and the registry all work, and the server logs no refusal for the user.
    [line] = [line for line in PERKEY_ACL.read_text().splitlines() if line.startswith("user ")]
    name, *rules = line.removeprefix("user ").replace(">CHANGE-ME", ">pw").split()
    redis_client.execute_command("ACL", "SETUSER", name, "reset", *rules)
    redis_client.execute_command("ACL", "LOG", "RESET")
    layout = PartitionLayout(BASE, 2, key=KEY)
    Producer(redis_client, layout).send_many(keyed_events(keys=6, per_key=5))
    handled: Handled = []

    def poison(entry: Entry) -> None:
        if (entry.fields[KEY], entry.fields["seq"]) == ("c-1", "2"):
            raise ValueError("poison")

    url = redis_url.replace("redis://", f"redis://{name}:pw@")
    worker = OrderedConsumer(settings_for(url, "w1", 2), recorder(handled, "w1", poison))
    async with fleet([worker]):
        await eventually_async(
            lambda: worker.stats.dead_lettered == 1, within=30, what="the dead-letter move"
        )
        await eventually_async(
            lambda: all(group_state(redis_client, stream) == (0, 0) for stream in layout.streams),
            within=30,
            what="everything acked",
        )
    assert {(key, seq) for _, key, seq in handled} == {(f"c-{k}", s) for k in range(6) for s in range(5)}
    # redis-py sends CLIENT SETINFO on connect (servers >= 7.2) and ignores a refusal: not needed.
    refused = [
        _field(entry, "object")
        for entry in redis_client.execute_command("ACL", "LOG")
        if _field(entry, "username") == name and _field(entry, "object") != "client|setinfo"
    ]
    assert refused == []


def _field(entry: Any, name: str) -> Any:
    """A field of an ACL LOG entry (a flat list on RESP2, a mapping on RESP3)."""
    if isinstance(entry, dict):
        return entry.get(name)
    pairs = dict(zip(entry[::2], entry[1::2], strict=True))
    return pairs.get(name)
