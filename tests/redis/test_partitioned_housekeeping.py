"""The housekeeping pass of a partitioned pipeline (``spec.partitions``) on real servers: groups,
retention and consumer cleanup on every partition, scaling once on the summed backlog, one event for
what was done on many partitions, and under PerKey the layout record's growth and retired switch. Same
test doubles as test_housekeeping.py (``Workers``, ``StepClock``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import redis
from streampipe_operator import api
from streampipe_operator.engine.housekeeping import PipelineMemory, run_pass
from streampipe_operator.streams.admin import RedisAdmin
from streampipe_worker.partitions import PartitionLayout, layout_key
from tests.redis.test_housekeeping import StepClock, Workers, reasons

pytestmark = pytest.mark.timeout(60)

BASE = "orders"
COUNT = 4
LAYOUT = PartitionLayout(BASE, COUNT)


def partitioned_spec(*groups: dict[str, Any], **fields: Any) -> api.StreamPipelineSpec:
    scaling = {"minReplicas": 0, "maxReplicas": 8, "backlogPerReplica": 10, "pollInterval": "1s"}
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "redis": {"url": "redis://unused:6379"},
            "stream": BASE,
            "partitions": {"count": COUNT},
            "retry": {"claimIdle": "1s"},
            "groups": [
                {"handler": "shop:handle", "image": "worker:1", "scaling": scaling, **group}
                for group in groups
            ],
            **fields,
        },
    }
    return api.StreamPipeline.from_body(body).spec


def fill(client: redis.Redis, per_partition: list[int]) -> None:
    pipe = client.pipeline(transaction=False)
    for index, count in enumerate(per_partition):
        for n in range(count):
            pipe.xadd(LAYOUT.stream(index), {"n": str(n)})
    pipe.execute()


async def test_groups_are_created_on_every_partition_and_said_once(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    fill(redis_client, [3, 0, 5, 1])
    spec = partitioned_spec({"name": "billing", "startId": "0"})
    memory = PipelineMemory()

    report = await run_pass(spec, admin, Workers(), memory, clock=StepClock())

    for stream in LAYOUT.streams:
        assert [g["name"] for g in redis_client.xinfo_groups(stream)] == ["billing"]
    # One event for the four creations.
    assert reasons(report) == ["GroupCreated"]
    assert report.events[0].message.endswith("(and the same on 3 more partitions)")
    assert [p.stream_key for p in report.partitions] == LAYOUT.streams
    assert [p.stream.length if p.stream else 0 for p in report.partitions] == [3, 0, 5, 1]
    # The pipeline's observation is the sum: 9 entries, all unread by billing.
    merged = report.observation
    assert merged.stream_key == BASE
    assert merged.stream is not None
    assert merged.stream.length == 9
    billing = merged.group("billing")
    assert billing is not None
    assert (billing.lag.value, billing.pending) == (9, 0)
    assert (await run_pass(spec, admin, Workers(), memory, clock=StepClock())).events == []


async def test_scaling_follows_the_summed_backlog(admin: RedisAdmin, redis_client: redis.Redis) -> None:
    spec = partitioned_spec({"name": "billing", "startId": "0"})
    workers = Workers(replicas={"billing": 0})
    clock = StepClock()
    memory = PipelineMemory()
    await run_pass(spec, admin, workers, memory, clock=clock)
    # 12 + 8 + 9 + 6 = 35 entries, 10 per replica: 4 replicas; no single partition would ask for more than 2.
    fill(redis_client, [12, 8, 9, 6])
    redis_client.xreadgroup("billing", "pod-a", {LAYOUT.stream(1): ">"}, count=5)
    clock.now += 1

    report = await run_pass(spec, admin, workers, memory, clock=clock)

    assert workers.changes == [("billing", 0, 4)]
    billing = report.observation.group("billing")
    assert billing is not None
    assert (billing.lag.value, billing.pending) == (30, 5)
    assert [p.group("billing").pending for p in report.partitions] == [0, 5, 0, 0]  # type: ignore[union-attr]


async def test_retention_trims_each_partition_to_its_own_length(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    spec = partitioned_spec(
        {"name": "billing", "startId": "$"},
        retention={"maxLength": 5, "approximate": False, "protectUnprocessed": False},
    )
    await run_pass(spec, admin, Workers(), PipelineMemory(), clock=StepClock())
    fill(redis_client, [20, 3, 7, 5])
    memory = PipelineMemory()

    report = await run_pass(spec, admin, Workers(), memory, clock=StepClock())

    assert [redis_client.xlen(stream) for stream in LAYOUT.streams] == [5, 3, 5, 5]
    assert report.trimmed == {"stream": 17, "dead_letter": 0}
    assert memory.retention_due == min(part.retention_due for part in memory.partitions.values()) > 0


async def test_idle_consumers_are_removed_from_every_partition(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    spec = partitioned_spec({"name": "billing", "startId": "0"})
    clock = StepClock()
    memory = PipelineMemory()
    await run_pass(spec, admin, Workers(), memory, clock=clock)
    for stream in LAYOUT.streams:
        redis_client.xgroup_createconsumer(stream, "billing", "gone-pod")
    clock.now += 10  # past the cleanup interval
    # The bound is 2 x claimIdle (1 s) on the server's idle clock: let the consumers pass it.
    await asyncio.sleep(2.2)

    report = await run_pass(spec, admin, Workers(live=set()), memory, clock=clock, consumer_idle_floor=0.0)

    assert reasons(report) == ["ConsumerRemoved"]
    for stream in LAYOUT.streams:
        assert redis_client.xinfo_consumers(stream, "billing") == []


async def test_one_entry_on_any_partition_activates_from_zero_and_a_null_lag_is_counted(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    spec = partitioned_spec({"name": "billing", "startId": "0"})
    workers = Workers(replicas={"billing": 0})
    clock = StepClock()
    memory = PipelineMemory()
    await run_pass(spec, admin, workers, memory, clock=clock)
    assert workers.changes == []

    fill(redis_client, [0, 0, 0, 1])  # the last partition's first entry
    clock.now += 1
    await run_pass(spec, admin, workers, memory, clock=clock)
    assert workers.changes == [("billing", 0, 1)]

    # An XDEL after the group's position leaves the server's lag NULL on that partition: it is counted,
    # not read as 0 (nor does it make the pipeline's lag unknown).
    fill(redis_client, [0, 5, 0, 0])
    delivered = redis_client.xreadgroup("billing", "pod-a", {LAYOUT.stream(1): ">"}, count=1)
    assert len(delivered[0][1]) == 1
    third = redis_client.xrange(LAYOUT.stream(1))[2][0]
    redis_client.xdel(LAYOUT.stream(1), third)
    clock.now += 1
    report = await run_pass(spec, admin, workers, memory, clock=clock)
    lags = [p.group("billing").lag for p in report.partitions]  # type: ignore[union-attr]
    assert [lag.value for lag in lags] == [0, 3, 0, 1]
    assert lags[1].source == "counted"
    billing = report.observation.group("billing")
    assert billing is not None
    assert (billing.lag.value, billing.lag.source, billing.pending) == (4, "counted", 1)


async def test_a_per_key_pass_records_the_growth_and_retires_the_switch_once_settled(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    def per_key(count: int) -> api.StreamPipelineSpec:
        return partitioned_spec(
            {"name": "billing", "startId": "0"},
            partitions={"count": count, "key": "customer", "ordering": "PerKey"},
        )

    memory = PipelineMemory()
    await run_pass(per_key(2), admin, Workers(), memory, clock=StepClock())
    assert json.loads(redis_client.get(layout_key(BASE))) == {"count": 2, "switches": []}
    [entry] = [redis_client.xadd(LAYOUT.stream(0), {"customer": "c-1"})]

    report = await run_pass(per_key(4), admin, Workers(), memory, clock=StepClock())

    assert "LayoutGrown" in reasons(report)
    assert json.loads(redis_client.get(layout_key(BASE))) == {
        "count": 4,
        "switches": [{"from": 2, "cutoffs": [entry, "0-0"]}],
    }
    report = await run_pass(per_key(4), admin, Workers(), memory, clock=StepClock())
    assert "LayoutGrown" not in reasons(report)
    redis_client.xreadgroup("billing", "w", {LAYOUT.stream(0): ">"})
    redis_client.xack(LAYOUT.stream(0), "billing", entry)
    report = await run_pass(per_key(4), admin, Workers(), memory, clock=StepClock())
    assert "LayoutSwitchRetired" in reasons(report)
    assert json.loads(redis_client.get(layout_key(BASE))) == {"count": 4, "switches": []}
