"""housekeeping.run_pass, the pass the operator and ``streampipe up`` share, on real Valkey 9.1 and Redis
7.0 through a real RedisAdmin. The workload side is an in-memory ``Workers`` (a test double of our own
``WorkloadBackend`` protocol: replica counts per group, the consumer names it calls alive) and time is a
``StepClock`` the test moves, so what is due when is the test's to say.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import redis
from streampipe_operator import api
from streampipe_operator.engine.housekeeping import PassReport, PipelineMemory, run_pass
from streampipe_operator.plan.groups import LastKnownPosition
from streampipe_operator.plan.scaling import ScalingDecision
from streampipe_operator.streams.admin import RedisAdmin, RedisUnreachableError, WrongKeyTypeError
from streampipe_worker.entry_ids import EntryId
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(60)

STREAM = "{orders}:events"
DLQ = "{orders}:events:dlq"
T0 = 1_800_000_000.0


@dataclass
class Workers:
    """WorkloadBackend in memory: ``replicas`` per group (absent: not created yet), and ``live`` names."""

    replicas: dict[str, int] = field(default_factory=dict)
    live: set[str] | None = None
    changes: list[tuple[str, int, int]] = field(default_factory=list)

    def current_replicas(self, group: str) -> int | None:
        return self.replicas.get(group)

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        self.changes.append((group, current, decision.desired_replicas))
        self.replicas[group] = decision.desired_replicas

    def live_consumers(self) -> set[str] | None:
        return self.live


@dataclass
class StepClock:
    """A clock that moves only when told: ``monotonic`` from 0, ``time`` from T0."""

    now: float = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return T0 + self.now


def spec_of(*groups: dict[str, Any], **fields: Any) -> api.StreamPipelineSpec:
    """A spec with the given groups (scaling every 1 s, 1000 entries per replica, down after 10 s)."""
    scaling = {"minReplicas": 0, "maxReplicas": 8, "backlogPerReplica": 1000, "pollInterval": "1s"}
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "redis": {"url": "redis://unused:6379"},
            "stream": STREAM,
            "retry": {"claimIdle": "1s"},
            "groups": [
                {
                    "handler": "shop:handle",
                    "image": "worker:1",
                    **group,
                    "scaling": {**scaling, "scaleDownStabilization": "10s", **group.get("scaling", {})},
                }
                for group in groups
            ],
            **fields,
        },
    }
    return api.StreamPipeline.from_body(body).spec


def fill(client: redis.Redis, count: int, key: str = STREAM) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(key, {"n": str(n)})
    return [str(entry_id) for entry_id in pipe.execute()]


def reasons(report: PassReport) -> list[str]:
    return [event.reason for event in report.events]


# --- groups -------------------------------------------------------------------------------------------


async def test_missing_groups_are_created_and_their_positions_remembered(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 5)
    spec = spec_of({"name": "billing", "startId": "0"}, {"name": "audit"})
    memory = PipelineMemory()

    report = await run_pass(spec, admin, Workers(), memory, clock=StepClock())

    assert reasons(report) == ["GroupCreated", "GroupCreated"]
    assert report.events[0].message == f"created group billing at 0 (every entry in the stream) on {STREAM}"
    assert {g["name"] for g in redis_client.xinfo_groups(STREAM)} == {"billing", "audit"}
    # The report's observation is the one after the change; memory knows where each group is.
    assert report.observation.group("billing") is not None
    assert memory.positions["audit"].last_delivered_id == EntryId.parse(ids[-1])
    assert (await run_pass(spec, admin, Workers(), memory, clock=StepClock())).events == []


@pytest.mark.parametrize(
    ("remembered", "from_status", "recreated_at"),
    [
        pytest.param(True, False, "read", id="memory"),
        pytest.param(False, True, "read", id="status-after-a-restart"),
        pytest.param(True, True, "read", id="memory-wins-over-an-older-status"),
        pytest.param(False, False, "$", id="nothing-known-starts-at-startId"),
    ],
)
async def test_a_vanished_group_is_recreated_where_it_was_last_seen(
    admin: RedisAdmin, redis_client: redis.Redis, remembered: bool, from_status: bool, recreated_at: str
) -> None:
    ids = fill(redis_client, 10)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    for entry_id, _ in redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=4)[0][1]:
        redis_client.xack(STREAM, "billing", entry_id)
    spec = spec_of({"name": "billing", "startId": "$"})
    memory = PipelineMemory()
    await run_pass(spec, admin, Workers(), memory, clock=StepClock())
    if not remembered:
        memory = PipelineMemory()
    # An older status says the group was at the second entry.
    status = {"billing": LastKnownPosition(last_delivered_id=EntryId.parse(ids[1]))} if from_status else {}
    redis_client.xgroup_destroy(STREAM, "billing")

    report = await run_pass(spec, admin, Workers(), memory, clock=StepClock(), known_positions=status)

    expected = {"read": ids[3] if remembered else ids[1], "$": ids[-1]}[recreated_at]
    group = report.observation.group("billing")
    assert group is not None
    assert str(group.last_delivered_id) == expected
    assert reasons(report) == (["GroupRecreated"] if remembered or from_status else ["GroupCreated"])
    assert report.events[0].warning is (remembered or from_status)


@pytest.mark.parametrize(
    ("policy", "events", "left"),
    [
        pytest.param("Retain", ["GroupOrphaned"], {"billing", "legacy"}, id="retain-reports-once"),
        pytest.param("Delete", ["GroupDestroyed"], {"billing"}, id="delete-destroys"),
    ],
)
async def test_a_group_not_in_the_spec(
    admin: RedisAdmin, redis_client: redis.Redis, policy: str, events: list[str], left: set[str]
) -> None:
    redis_client.xgroup_create(STREAM, "legacy", id="$", mkstream=True)
    spec = spec_of({"name": "billing"}, deletionPolicy=policy)
    memory = PipelineMemory()

    first = await run_pass(spec, admin, Workers(), memory, clock=StepClock())
    second = await run_pass(spec, admin, Workers(), memory, clock=StepClock())

    assert [r for r in reasons(first) if r != "GroupCreated"] == events
    assert second.events == []
    assert {g["name"] for g in redis_client.xinfo_groups(STREAM)} == left
    assert first.orphaned == (("legacy",) if policy == "Retain" else ())


async def test_a_server_that_does_not_answer_stops_the_pass() -> None:
    client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    memory = PipelineMemory()
    with pytest.raises(RedisUnreachableError):
        await run_pass(spec_of({"name": "billing"}), RedisAdmin(client), Workers(), memory)
    await client.aclose()
    assert memory == PipelineMemory()


# --- scaling ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """A first pass at t=0 on an empty stream with ``replicas`` workers (None: no workload yet), then
    ``entries`` added, the clock moved by ``advance`` and a second pass: what the backend is asked
    (``changes``), and whether the group was decided at all."""

    entries: int
    replicas: int | None
    advance: float
    changes: tuple[tuple[str, int, int], ...]
    decided: bool = True
    mode: str = "native"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Scaling(2500, 0, 1.0, (("billing", 0, 3),)), id="backlog-scales-up"),
        pytest.param(Scaling(9000, 1, 1.0, (("billing", 1, 5),)), id="up-step-limited"),
        pytest.param(Scaling(2500, 3, 1.0, ()), id="steady"),
        pytest.param(Scaling(0, 3, 1.0, ()), id="down-waits-for-the-window"),
        pytest.param(Scaling(0, 3, 11.0, (("billing", 3, 0),)), id="down-after-the-window"),
        pytest.param(Scaling(2500, 0, 0.5, (), decided=False), id="not-due-before-pollInterval"),
        pytest.param(Scaling(2500, None, 0.5, ()), id="no-workload-yet-decides-every-pass"),
        pytest.param(Scaling(2500, 0, 1.0, (), decided=False, mode="none"), id="scaling-mode-none"),
    ],
)
async def test_scaling_per_group_when_due(
    admin: RedisAdmin, redis_client: redis.Redis, case: Scaling
) -> None:
    spec = spec_of({"name": "billing", "startId": "0", "scaling": {"mode": case.mode}})
    workers = Workers(replicas={} if case.replicas is None else {"billing": case.replicas})
    clock = StepClock()
    memory = PipelineMemory()
    await run_pass(spec, admin, workers, memory, clock=clock)
    assert workers.changes == []
    fill(redis_client, case.entries)
    clock.now += case.advance

    report = await run_pass(spec, admin, workers, memory, clock=clock)

    assert tuple(workers.changes) == case.changes
    assert ("billing" in report.decisions) is case.decided
    if case.replicas is None:
        assert report.decisions["billing"].desired_replicas == 3  # the caller creates it with these


async def test_a_key_that_is_not_a_stream_stops_the_pass(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    redis_client.set(STREAM, "not a stream")
    workers = Workers({"billing": 2})
    with pytest.raises(WrongKeyTypeError):
        await run_pass(spec_of({"name": "billing"}), admin, workers, PipelineMemory())
    assert workers.changes == []


# --- retention ----------------------------------------------------------------------------------------


async def test_retention_trims_what_every_group_processed_and_reports_holding_once(
    admin: RedisAdmin, redis_client: redis.Redis, request: pytest.FixtureRequest
) -> None:
    spec = spec_of(
        {"name": "billing", "startId": "0"},
        retention={"maxLength": 100, "approximate": False, "interval": "10s"},
        deadLetter={"maxLength": 5},
    )
    fill(redis_client, 300)
    fill(redis_client, 250, DLQ)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    read = redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=250)[0][1]
    redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in read[:150]])
    clock = StepClock()
    memory = PipelineMemory()

    first = await run_pass(spec, admin, Workers(), memory, clock=clock)

    # The policy wants 200 gone; 150 are processed, the rest is pending and stays (held: 50). Protected
    # trims are approximate (whole nodes of 100 entries, never past the oldest pending entry), and so
    # is the dead-letter stream's, down to no fewer than its maxLength. Redis 8.2 trims exactly: the
    # server's XTRIM = ... ACKED removes every processed entry.
    server_acked = request.node.callspec.params["shared_server"] == "redis8"
    processed_removed = 150 if server_acked else 100
    assert first.trimmed == {"stream": processed_removed, "dead_letter": 200}
    assert redis_client.xlen(STREAM) == 300 - processed_removed
    assert redis_client.xlen(DLQ) == 50
    assert reasons(first) == ["RetentionHeld", "Trimmed", "Trimmed"]
    assert first.retention is not None
    assert first.retention.held is not None
    assert first.retention.held.entries.value == 50

    clock.now += 5  # not due: nothing trimmed, the last outcome still reported
    redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in read[150:]])
    assert (await run_pass(spec, admin, Workers(), memory, clock=clock)).trimmed is None
    clock.now += 5
    third = await run_pass(spec, admin, Workers(), memory, clock=clock)
    assert third.trimmed == {"stream": 200 - processed_removed, "dead_letter": 0}
    assert redis_client.xlen(STREAM) == 100
    assert "RetentionHeld" not in reasons(third)
    assert third.retention is not None
    assert third.retention.held is None


# --- consumers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "removed"),
    [
        pytest.param(None, {"gone"}, id="idle-alone-decides"),
        pytest.param({"gone"}, set(), id="a-live-worker-is-never-removed"),
        pytest.param(set(), {"gone"}, id="no-worker-has-that-name"),
    ],
)
async def test_consumers_idle_past_the_bound_and_owning_nothing_are_removed(
    admin: RedisAdmin, redis_client: redis.Redis, live: set[str] | None, removed: set[str]
) -> None:
    fill(redis_client, 3)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "holder", {STREAM: ">"}, count=1)  # owns one entry
    redis_client.xgroup_createconsumer(STREAM, "billing", "gone")
    # The bound is 2 x claimIdle (1 s) on the server's idle clock: let both consumers pass it.
    await asyncio.sleep(2.2)

    report = await run_pass(
        spec_of({"name": "billing"}), admin, Workers(live=live), PipelineMemory(), consumer_idle_floor=0.0
    )

    gone = {e.message.split()[2] for e in report.events if e.reason == "ConsumerRemoved"}
    assert gone == removed
    assert [e.group for e in report.events if e.reason == "ConsumerKept"] == ["billing"]
    consumers = {c["name"] for c in redis_client.xinfo_consumers(STREAM, "billing")}
    assert consumers == {"holder", "gone"} - removed


def test_next_due_is_the_earliest_step() -> None:
    spec = spec_of({"name": "billing"}, {"name": "audit", "scaling": {"mode": "none"}})
    memory = PipelineMemory(scale_due={"billing": 7.0, "audit": 1.0}, retention_due=9.0, cleanup_due=8.0)
    assert memory.next_due(spec) == 7.0  # audit is not scaled: its old due time does not count
    memory.retention_due = 2.0
    assert memory.next_due(spec) == 2.0
