"""Protected retention on real servers: nothing pending or unread is ever trimmed, entries added meanwhile
included; what is held back is reported. Servers here run with 4 entries per stream node, so that
approximate trimming (whole nodes) acts on streams of a few dozen entries."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redis
from streampipe_operator.plan.retention import EntryCount, RetentionPolicy
from streampipe_operator.streams.admin import RedisAdmin
from tests.support.servers import SERVER_IDS, ServerProcess

pytestmark = pytest.mark.timeout(120)

GROUPS = ("billing", "audit")


@pytest.fixture(params=SERVER_IDS)
def small_node_server(
    request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]
) -> ServerProcess:
    server: ServerProcess = server_factory(request.param, "--stream-node-max-entries", "4")
    return server


def protected_ids(client: redis.Redis, stream: str) -> set[str]:
    """Every entry some group has pending or has not read yet, as the server says."""
    found: set[str] = set()
    for group in client.xinfo_groups(stream):
        pending = client.xpending_range(stream, group["name"], "-", "+", 10_000)
        found |= {p["message_id"] for p in pending}
        found |= {entry_id for entry_id, _ in client.xrange(stream, f"({group['last-delivered-id']}", "+")}
    return found


def add(client: redis.Redis, stream: str, clock: Iterator[int], count: int) -> list[str]:
    return [str(client.xadd(stream, {"n": "x"}, id=f"{next(clock)}-0")) for _ in range(count)]


async def protected_trim(
    url: str, stream: str, policy: RetentionPolicy, now: float, meanwhile: Callable[[], None]
) -> dict[str, int]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        admin = RedisAdmin(client, trim_chunk=8, retention_count_cap=50)
        plan = await admin.retention_plan(await admin.observe_stream(stream), policy, now=now)
        meanwhile()  # producers keep writing between the observation and the trims
        return await admin.apply_trims(stream, None, plan.actions)
    finally:
        await client.aclose()


def test_a_stuck_pending_entry_holds_retention_and_is_reported(small_node_server: ServerProcess) -> None:
    client = small_node_server.client()
    clock = itertools.count(1000)
    stream = "{o}:events"
    ids = add(client, stream, clock, 40)
    client.xgroup_create(stream, "billing", id="0")
    client.xreadgroup("billing", "pod-a", {stream: ">"}, count=30)
    client.xack(stream, "billing", *ids[:20])  # ids 20..29 stay pending, 30..39 unread

    async def plan_and_trim() -> tuple[object, dict[str, int]]:
        async_client = redis.asyncio.Redis.from_url(small_node_server.url)
        try:
            admin = RedisAdmin(async_client)
            plan = await admin.retention_plan(
                await admin.observe_stream(stream), RetentionPolicy(max_length=5), now=2.0
            )
            return plan, await admin.apply_trims(stream, None, plan.actions)
        finally:
            await async_client.aclose()

    plan, removed = asyncio.run(plan_and_trim())
    assert removed == {stream: 20}
    assert [i for i, _ in client.xrange(stream)] == ids[20:]
    held = plan.held  # type: ignore[attr-defined]
    assert held.entries == EntryCount(value=15)
    assert held.message == (
        "retention is holding back 15 entries that the policy would remove: group billing has "
        f"unacknowledged entries from {ids[20]}"
    )

    # Once the work is done, the same policy trims to its length (whole nodes of 4: 8 entries stay).
    client.xreadgroup("billing", "pod-a", {stream: ">"}, count=100)
    client.xack(stream, "billing", *ids[20:])
    plan, removed = asyncio.run(plan_and_trim())
    assert plan.held is None  # type: ignore[attr-defined]
    assert client.xlen(stream) == 8


def test_age_retention_stops_at_unread_entries(small_node_server: ServerProcess) -> None:
    client = small_node_server.client()
    clock = itertools.count(1000)
    stream = "{o}:events"
    ids = add(client, stream, clock, 40)  # IDs 1000-0 .. 1039-0
    client.xgroup_create(stream, "billing", id="0")
    client.xreadgroup("billing", "pod-a", {stream: ">"}, count=12)
    client.xack(stream, "billing", *ids[:12])
    policy = RetentionPolicy(max_age=0.010, approximate=False)  # older than 1030-0 at now=1.040
    asyncio.run(protected_trim(small_node_server.url, stream, policy, now=1.040, meanwhile=lambda: None))
    assert [i for i, _ in client.xrange(stream)] == ids[12:]


@dataclass(frozen=True)
class Step:
    kind: str
    group: int = 0
    count: int = 0
    keep_oldest: bool = False
    max_length: int | None = None
    max_age_ms: int | None = None
    exact_age: bool = False


# group 2 means both groups: trimming needs every group to have processed a prefix of the stream.
READS = st.builds(Step, kind=st.just("read"), group=st.integers(0, 2), count=st.integers(1, 30))
ACKS = st.builds(
    Step, kind=st.just("ack"), group=st.integers(0, 2), count=st.integers(1, 30), keep_oldest=st.booleans()
)
# "process": every group reads and acknowledges n entries, as healthy workers do; reads and acks on
# their own leave entries pending or unread.
PROCESS = st.builds(Step, kind=st.just("process"), count=st.integers(1, 30))
STEPS = st.one_of(
    st.builds(Step, kind=st.just("add"), count=st.integers(1, 25)),
    PROCESS,
    PROCESS,
    READS,
    ACKS,
    st.builds(
        Step,
        kind=st.just("trim"),
        count=st.integers(0, 10),  # entries added between planning and trimming
        max_length=st.one_of(st.none(), st.integers(0, 12)),
        max_age_ms=st.one_of(st.none(), st.integers(1, 20)),
        exact_age=st.booleans(),
    ),
)

_streams = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEPS, min_size=4, max_size=16))
def test_random_interleavings_never_trim_unprocessed_entries(
    small_node_server: ServerProcess, steps: list[Step]
) -> None:
    client = small_node_server.client()
    stream = f"{{p{next(_streams)}}}:events"  # a fresh stream per example; the server is shared
    clock = itertools.count(1000)
    for group in GROUPS:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    add(client, stream, clock, 20)
    for step in steps:
        groups = GROUPS if step.group == 2 else (GROUPS[step.group],)
        if step.kind == "add":
            add(client, stream, clock, step.count)
        elif step.kind == "read":
            for group in groups:
                client.xreadgroup(group, f"{group}-pod", {stream: ">"}, count=step.count)
        elif step.kind == "process":
            for group in GROUPS:
                delivered = client.xreadgroup(group, f"{group}-pod", {stream: ">"}, count=step.count)
                if delivered:
                    client.xack(stream, group, *[entry_id for entry_id, _ in delivered[0][1]])
        elif step.kind == "ack":
            for group in groups:
                pending = [p["message_id"] for p in client.xpending_range(stream, group, "-", "+", 1000)]
                chosen = pending[1 : step.count + 1] if step.keep_oldest else pending[: step.count]
                if chosen:
                    client.xack(stream, group, *chosen)
        else:
            before = protected_ids(client, stream)
            added: list[str] = []
            policy = RetentionPolicy(
                max_length=step.max_length,
                max_age=step.max_age_ms / 1000 if step.max_age_ms else None,
                approximate=not step.exact_age,
            )
            now = next(clock) / 1000
            asyncio.run(
                protected_trim(
                    small_node_server.url,
                    stream,
                    policy,
                    now,
                    meanwhile=lambda n=step.count, out=added: out.extend(add(client, stream, clock, n)),
                )
            )
            remaining = {entry_id for entry_id, _ in client.xrange(stream)}
            assert before | set(added) <= remaining, "a pending or unread entry was trimmed"
