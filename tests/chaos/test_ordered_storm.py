"""Per-key ordering (``ordering: PerKey``) under faults: 3 workers own the 4 partitions of a stream
through fenced leases (``STREAMPIPE_ORDERING=PerKey``) while a producer routes keyed, numbered entries.

1. A lease holder is frozen (SIGSTOP) for longer than its lease, then thawed: the others take its
   partitions once the lease runs out; the thawed worker must not read or ack them any more.
2. A crash storm: every ``storm_kill_interval`` one ready worker is SIGKILLed (and restarted by the
   local runtime, as a kubelet restarts a container).

Oracle: nothing lost, each poison entry dead-lettered once in its own partition, duplicates bounded,
and per key, every entry is first handled only after every older entry of that key was (the record
files carry each call's CLOCK_MONOTONIC start; a redelivery of an entry not yet acked repeats it,
which is allowed).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from streampipe_operator.local.processes import LocalRuntime, ReplicaSet, ReplicaSpec, ReplicaStatus
from streampipe_worker.ownership import owner_key
from tests.chaos.harness import drained, signal_child, storm_replicas, wait_until
from tests.chaos.oracle import dead_letters, judge, key_order_violations, read_calls
from tests.chaos.test_partitioned_storm import GROUP, LAYOUT, KeyedProducer, poison
from tests.support.polling import eventually
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

LEASE_TTL = 2.0  # seconds: short, so a frozen holder loses its partitions within the test
ENTRIES = 6000
BATCH = 20


def key_of(n: int) -> str:
    return f"c-{n % 101}"  # KeyedProducer's key field


def all_drained(client: redis.Redis) -> bool:
    return all(drained(client, stream, GROUP) for stream in LAYOUT.streams)


def owners(client: redis.Redis) -> list[str | None]:
    values = [client.get(owner_key(LAYOUT, index)) for index in range(LAYOUT.count)]
    return [value.rpartition("|")[0] if value else None for value in values]


Owners = list[str | None]


def owned_by_replica(client: redis.Redis, workers: ReplicaSet) -> tuple[Owners, ReplicaStatus] | None:
    """The partitions' owners and partition 0's owner, a running replica; None while a partition has
    no owner (mid hand-over) or partition 0's owner is not one of ``workers``."""
    held = owners(client)
    if None in held:
        return None
    replica = next((r for r in workers.status().replicas if r.name == held[0] and r.pid is not None), None)
    return (held, replica) if replica is not None else None


def ordered_workers(name: str, url: str, records: Path) -> ReplicaSpec:
    settings = {
        "stream": LAYOUT.base,
        "group": GROUP,
        "partitions": LAYOUT.count,
        "ordering": "PerKey",
        "partition_key": LAYOUT.key,
        "lease_ttl": f"{int(LEASE_TTL * 1000)}ms",
    }
    return storm_replicas(name, url, records, 0.0005, batch_size=BATCH, **settings)


def start(runtime: LocalRuntime, server: ServerProcess, records: Path, name: str) -> ReplicaSet:
    with server.client() as client:
        for stream in LAYOUT.streams:
            client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    workers = runtime.replica_set(ordered_workers(name, server.url, records))
    workers.scale(3)
    assert workers.wait_ready(timeout=60), "workers did not start"
    return workers


def check(client: redis.Redis, records: Path, sent: list[int], kills: int) -> None:
    calls = read_calls(records)
    dead = [envelope for stream in LAYOUT.streams for envelope in dead_letters(client, f"{stream}:dlq")]
    verdict = judge(sent, calls, dead)
    assert verdict.lost == [], verdict.summary()
    assert verdict.unknown == []
    assert verdict.dead_twice == []
    assert verdict.processed_and_dead == []
    wanted = {n for n in sent if poison(n)}
    for index, stream in enumerate(LAYOUT.streams):
        here = {int(e.original["n"]) for e in dead_letters(client, f"{stream}:dlq")}
        assert here == {n for n in wanted if LAYOUT.partition_for(key_of(n)) == index}
    assert key_order_violations(calls, key_of) == []
    # A worker that loses a partition (killed, or frozen past its lease) leaves at most what it had
    # read and not acked: one batch per partition it owned.
    assert verdict.duplicates <= max(kills, 1) * BATCH * LAYOUT.count, verdict.summary()


def test_a_frozen_lease_holder_loses_its_partitions_and_order_holds(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    client = server.client()
    records = tmp_path / "records"
    records.mkdir()
    with LocalRuntime(tmp_path / "run", probe_interval=0.05) as runtime:
        workers = start(runtime, server, records, "frozen")
        wait_until(lambda: None not in owners(client), 30, "every partition owned")
        producer = KeyedProducer(server.url, ENTRIES, 100, 0.2)
        producer.start()
        time.sleep(1.0)
        # Shares still move while the workers join (a hand-over leaves a partition without an owner
        # for up to a third of the ttl): pick the victim from a moment when every partition has one.
        held, victim = eventually(lambda: owned_by_replica(client, workers), "every partition owned", 30)
        assert victim.pid is not None
        taken = [index for index, owner in enumerate(held) if owner == victim.name]
        assert signal_child(victim.pid, signal.SIGSTOP)
        try:
            # Its partitions pass to the others once its lease has run out on the server.
            wait_until(
                lambda: all(owners(client)[i] not in (None, victim.name) for i in taken),
                10 * LEASE_TTL,
                "the frozen worker's partitions taken over",
            )
            time.sleep(LEASE_TTL)  # frozen well past its lease
        finally:
            signal_child(victim.pid, signal.SIGCONT)
        producer.join()
        assert producer.error is None, producer.error
        wait_until(lambda: all_drained(client), 120, "every partition drained")
        assert workers.stop(grace=15)
    check(client, records, producer.sent, kills=1)


def test_a_crash_storm_keeps_per_key_order(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    client = server.client()
    records = tmp_path / "records"
    records.mkdir()
    chooser = random.Random(random.randrange(2**32))
    kills = 0
    with LocalRuntime(tmp_path / "run", probe_interval=0.05) as runtime:
        workers = start(runtime, server, records, "ostorm")
        producer = KeyedProducer(server.url, 4 * ENTRIES, 200, 0.05)
        began = time.monotonic()
        producer.start()
        while producer.is_alive() or not all_drained(client):
            time.sleep(0.3)  # workers are busy: a kill lands mid-batch
            candidates = [r for r in workers.status().replicas if r.ready and r.pid is not None]
            if candidates and kills < 12:
                victim = chooser.choice(candidates)
                assert victim.pid is not None
                kills += signal_child(victim.pid, signal.SIGKILL)
            assert time.monotonic() - began < 240, "the storm made no progress"
        producer.join()
        assert producer.error is None, producer.error
        wait_until(lambda: all_drained(client), 120, "every partition drained after the storm")
        assert workers.stop(grace=15)
    assert kills > 0
    check(client, records, producer.sent, kills)
