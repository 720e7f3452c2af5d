"""redis_admin on real Valkey 9.1 and Redis 7.0: observation, nil lag, groups, consumers, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import redis
from streampipe_operator.plan.consumers import DeleteConsumer, plan_consumer_cleanup
from streampipe_operator.plan.groups import (
    DesiredGroup,
    LastKnownPosition,
    plan_groups,
    plan_teardown,
)
from streampipe_operator.plan.observed import Lag
from streampipe_operator.plan.retention import RetentionPolicy, plan_dead_letter_trim
from streampipe_operator.streams.admin import (
    GroupMissingError,
    RedisAdmin,
    RedisAuthError,
    RedisUnreachableError,
    WrongKeyTypeError,
)
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.entry_ids import EntryId
from tests.support.servers import SERVER_IDS, ServerProcess, free_port
from tests.support.topologies import start_cluster, write_acl_file

pytestmark = pytest.mark.timeout(60)

STREAM = "{orders}:events"
DLQ = "{orders}:dead"
# redis-py retries a failed connection for ~5 s by default; the worker's client factory does not.
NO_RETRY = Retry(NoBackoff(), 0)


def fill(client: redis.Redis, count: int, key: str = STREAM) -> list[str]:
    return [str(client.xadd(key, {"n": str(i)})) for i in range(count)]


def server_lag(client: redis.Redis, group: str) -> int | None:
    return next(g["lag"] for g in client.xinfo_groups(STREAM) if g["name"] == group)


async def test_observation_of_a_stream_with_pending_entries(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 10)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xgroup_create(STREAM, "audit", id="$")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=4)
    redis_client.xreadgroup("billing", "pod-b", {STREAM: ">"}, count=1)
    redis_client.xack(STREAM, "billing", ids[0])
    fill(redis_client, 2, DLQ)

    seen = await admin.observe_stream(STREAM, dead_letter=DLQ)

    assert seen.exists
    assert seen.stream is not None
    assert (seen.stream.length, seen.stream.entries_added) == (10, 10)
    assert (seen.stream.first_entry_id, seen.stream.last_entry_id) == (
        EntryId.parse(ids[0]),
        EntryId.parse(ids[9]),
    )
    billing = seen.group("billing")
    assert billing is not None
    assert billing.last_delivered_id == EntryId.parse(ids[4])
    assert billing.pending == 4
    assert billing.oldest_pending_id == EntryId.parse(ids[1])
    assert billing.lag == Lag(value=5, source="server")
    assert {(c.name, c.pending) for c in billing.consumers} == {("pod-a", 3), ("pod-b", 1)}
    audit = seen.group("audit")
    assert audit is not None
    assert (audit.lag.value, audit.pending, audit.consumers) == (0, 0, ())
    assert seen.dead_letter_length == 2
    assert seen.memory_bytes is not None
    assert seen.memory_bytes > 0


async def test_missing_stream_is_observed_as_absent(admin: RedisAdmin, redis_client: redis.Redis) -> None:
    seen = await admin.observe_stream(STREAM, dead_letter=DLQ)
    assert (seen.exists, seen.stream, seen.groups, seen.dead_letter_length) == (False, None, (), 0)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"decode_responses": True}, id="text"),
        pytest.param({"protocol": 3}, id="resp3"),
    ],
)
async def test_observation_is_the_same_whatever_the_client_decodes(
    admin: RedisAdmin, redis_client: redis.Redis, redis_url: str, options: dict[str, object]
) -> None:
    ids = fill(redis_client, 5)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=2)
    redis_client.xdel(STREAM, ids[3])
    other = redis.asyncio.Redis.from_url(redis_url, **options)  # type: ignore[arg-type]
    try:
        seen = [
            await RedisAdmin(client).observe_stream(STREAM, memory=False) for client in (other, admin.client)
        ]
    finally:
        await other.aclose()
    # Idle times move between the two looks; everything else must be identical.
    without_idle = [
        s.model_dump(exclude={"groups": {"__all__": {"consumers": {"__all__": {"idle", "inactive"}}}}})
        for s in seen
    ]
    assert without_idle[0] == without_idle[1]
    assert seen[0].groups[0].lag == Lag(value=2, source="counted")


async def test_nil_lag_after_xdel_is_detected_and_counted(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    """Both servers report lag nil after an XDEL in the unread range; we count instead of reading 0."""
    ids = fill(redis_client, 10)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=3)
    assert server_lag(redis_client, "billing") == 7

    redis_client.xdel(STREAM, ids[6])
    assert server_lag(redis_client, "billing") is None  # what the server does, verified here

    seen = await admin.observe_stream(STREAM)
    billing = seen.group("billing")
    assert billing is not None
    assert billing.lag == Lag(value=6, source="counted")
    assert billing.lag.estimated

    # Reading across the tombstone leaves the group's counter invalid: still nil, still counted.
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=4)
    assert server_lag(redis_client, "billing") is None
    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    assert billing.lag == Lag(value=2, source="counted")

    # At the end of the stream the lag is exactly zero, whatever the counter says.
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=10)
    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    assert billing.lag.value == 0


async def test_xdel_in_the_read_range_keeps_the_servers_lag(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 10)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=5)
    redis_client.xdel(STREAM, ids[1])
    assert server_lag(redis_client, "billing") == 5
    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    assert billing.lag == Lag(value=5, source="server")


async def test_lag_after_a_trim_past_the_group_is_right_on_both_servers(
    admin: RedisAdmin, redis_client: redis.Redis, request: pytest.FixtureRequest
) -> None:
    """Redis 7.0 keeps a too-large lag once a group fell behind a trim; Valkey 9.1 repairs it once the
    group reads again; Redis 8.2 reports it right from the trim on."""
    ids = fill(redis_client, 10)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=2)
    redis_client.xtrim(STREAM, minid=ids[5], approximate=False)
    behind = (await admin.observe_stream(STREAM)).group("billing")
    assert behind is not None
    kind = request.node.callspec.params["shared_server"]
    # every remaining entry is unread
    assert behind.lag == Lag(value=5, source="server" if kind == "redis8" else "derived")

    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=1)
    reported = server_lag(redis_client, "billing")
    if request.node.callspec.params["shared_server"] == "redis7":
        assert reported == 7  # counter missed the 3 trimmed unread entries
    else:
        assert reported == 4
    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    assert billing.lag.value == 4


async def test_lag_count_stops_at_its_cap(redis_url: str, redis_client: redis.Redis) -> None:
    ids = fill(redis_client, 30)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=2)
    redis_client.xdel(STREAM, ids[20])
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        billing = (await RedisAdmin(client, lag_count_cap=5).observe_stream(STREAM)).group("billing")
    finally:
        await client.aclose()
    assert billing is not None
    assert billing.lag == Lag(value=5, source="lower_bound")


async def test_groups_are_created_and_a_vanished_group_recreated_where_it_was(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    desired = [DesiredGroup(name="billing", start_id="0"), DesiredGroup(name="audit", start_id="$")]
    results = await admin.apply_group_plan(STREAM, plan_groups(desired, set(), {}, "Retain"))
    assert [(r.group, r.changed) for r in results] == [("billing", True), ("audit", True)]
    # MKSTREAM made the stream; applying again changes nothing (BUSYGROUP is "already so").
    again = await admin.apply_group_plan(STREAM, plan_groups([desired[0]], set(), {}, "Retain"))
    assert [r.changed for r in again] == [False]

    ids = fill(redis_client, 10)
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=5)
    seen = await admin.observe_stream(STREAM)
    billing = seen.group("billing")
    assert billing is not None
    known = {
        "billing": LastKnownPosition(
            last_delivered_id=billing.last_delivered_id, entries_read=billing.entries_read
        )
    }

    redis_client.xgroup_destroy(STREAM, "billing")  # behind the operator's back
    plan = plan_groups(
        desired, {g.name for g in (await admin.observe_stream(STREAM)).groups}, known, "Retain"
    )
    assert [a.group for a in plan.recreated] == ["billing"]
    await admin.apply_group_plan(STREAM, plan)

    raw = next(g for g in redis_client.xinfo_groups(STREAM) if g["name"] == "billing")
    assert raw["last-delivered-id"] == ids[4]
    assert (raw["entries-read"], raw["lag"]) == (5, 5)  # ENTRIESREAD restored the exact counter
    entries = redis_client.xreadgroup("billing", "pod-b", {STREAM: ">"}, count=1)
    assert entries[0][1][0][0] == ids[5]  # resumes after, not at "$"


async def test_recreated_group_redelivers_what_was_pending(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 6)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=4)
    redis_client.xack(STREAM, "billing", ids[0], ids[2], ids[3])  # ids[1] stays pending
    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    known = {
        "billing": LastKnownPosition(
            last_delivered_id=billing.last_delivered_id,
            entries_read=billing.entries_read,
            oldest_pending_id=billing.oldest_pending_id,
        )
    }
    redis_client.xgroup_destroy(STREAM, "billing")
    await admin.apply_group_plan(STREAM, plan_groups([DesiredGroup(name="billing")], set(), known, "Retain"))
    delivered = redis_client.xreadgroup("billing", "pod-b", {STREAM: ">"}, count=10)
    assert [entry_id for entry_id, _ in delivered[0][1]] == ids[1:]


async def test_removed_group_destroyed_only_with_delete_policy(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    fill(redis_client, 1)
    redis_client.xgroup_create(STREAM, "legacy", id="0")
    keep = plan_groups([], {"legacy"}, {}, "Retain")
    assert keep.orphaned == ("legacy",)
    assert await admin.apply_group_plan(STREAM, keep) == []
    results = await admin.apply_group_plan(STREAM, plan_groups([], {"legacy"}, {}, "Delete"))
    assert [(r.action, r.changed) for r in results] == [("destroy", True)]
    assert redis_client.xinfo_groups(STREAM) == []


async def test_consumer_cleanup_keeps_consumers_with_pending_entries(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 5)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "busy", {STREAM: ">"}, count=2)
    redis_client.xreadgroup("billing", "gone", {STREAM: ">"}, count=1)
    redis_client.xack(STREAM, "billing", ids[2])
    redis_client.xgroup_createconsumer(STREAM, "billing", "alive")
    await asyncio.sleep(0.05)  # every consumer is now idle for more than 0 s

    billing = (await admin.observe_stream(STREAM)).group("billing")
    assert billing is not None
    cleanup = plan_consumer_cleanup([billing], idle_after=0.0, live_consumers={"alive"})
    assert [d.consumer for d in cleanup.delete] == ["gone"]
    assert [(s.consumer, s.pending) for s in cleanup.stranded] == [("busy", 2)]
    results = [await admin.delete_consumer(STREAM, d) for d in cleanup.delete]
    assert [r.deleted for r in results] == [True]
    names = {c["name"] for c in redis_client.xinfo_consumers(STREAM, "billing")}
    assert names == {"busy", "alive"}

    # The server-side check refuses a consumer that has pending entries, whatever the caller thinks.
    refused = await admin.delete_consumer(
        STREAM, DeleteConsumer(group="billing", consumer="busy", idle=999, reason="stale observation")
    )
    assert not refused.deleted
    assert redis_client.xpending(STREAM, "billing")["pending"] == 2


async def test_dead_letter_trim_and_teardown(admin: RedisAdmin, redis_client: redis.Redis) -> None:
    fill(redis_client, 3)
    fill(redis_client, 25, DLQ)
    seen = await admin.observe_stream(STREAM, dead_letter=DLQ)
    assert seen.dead_letter_length == 25
    action = plan_dead_letter_trim(25, 10, approximate=False)
    assert action is not None
    assert await admin.apply_trims(STREAM, DLQ, [action]) == {DLQ: 15}
    assert redis_client.xlen(DLQ) == 10

    teardown = plan_teardown("Delete", STREAM, DLQ)
    assert teardown.delete is not None
    assert await admin.delete_keys(teardown.delete) == 2
    assert redis_client.exists(STREAM, DLQ) == 0


async def test_unprotected_trim_follows_the_policy(admin: RedisAdmin, redis_client: redis.Redis) -> None:
    ids = [str(redis_client.xadd(STREAM, {"n": str(i)}, id=f"{1000 + i}-0")) for i in range(50)]
    redis_client.xgroup_create(STREAM, "billing", id="0")  # unread everything, and not protected
    policy = RetentionPolicy(max_length=30, max_age=0.010, approximate=False, protect_unprocessed=False)
    seen = await admin.observe_stream(STREAM)
    plan = await admin.retention_plan(seen, policy, now=1.045)
    assert await admin.apply_trims(STREAM, None, plan.actions) == {STREAM: 35}
    assert [i for i, _ in redis_client.xrange(STREAM)] == ids[35:]
    assert plan.held is None


async def test_capabilities_are_detected_once_per_client(admin: RedisAdmin) -> None:
    first = await admin.capabilities()
    assert await RedisAdmin(admin.client).capabilities() is first
    assert first.lag_in_xinfo


async def test_errors_say_what_to_do(admin: RedisAdmin, redis_client: redis.Redis) -> None:
    redis_client.set(STREAM, "not a stream")
    with pytest.raises(WrongKeyTypeError, match=r"key \{orders\}:events exists and is not a stream"):
        await admin.observe_stream(STREAM)
    redis_client.delete(STREAM)
    fill(redis_client, 1)
    with pytest.raises(GroupMissingError, match="group billing missing \\(NOGROUP\\); the operator creates"):
        await admin.delete_consumer(STREAM, DeleteConsumer(group="billing", consumer="c", idle=1, reason="r"))


async def test_unreachable_server() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=NO_RETRY)
    try:
        with pytest.raises(
            RedisUnreachableError, match=r"cannot reach Redis at 127\.0\.0\.1:\d+ .* is the server running"
        ):
            await RedisAdmin(client).observe_stream(STREAM)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_refused_credentials_and_permissions(
    server_factory: Callable[..., ServerProcess], kind: str
) -> None:
    server = server_factory(kind, password="s3cret")
    port = server.port
    without = redis.asyncio.Redis(host="127.0.0.1", port=port, retry=NO_RETRY)
    wrong = redis.asyncio.Redis(host="127.0.0.1", port=port, password="nope", retry=NO_RETRY)
    with server.client() as setup:
        setup.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+ping", "+xinfo")
    limited = redis.asyncio.Redis(host="127.0.0.1", port=port, username="reader", password="pw")
    try:
        with pytest.raises(RedisAuthError, match="refused the credentials"):
            await RedisAdmin(without).observe_stream(STREAM)
        with pytest.raises(RedisAuthError, match="refused the credentials"):
            await RedisAdmin(wrong).ping()
        with server.client() as setup:
            setup.xadd(STREAM, {"n": "1"})
            setup.xgroup_create(STREAM, "billing", id="0")
        with pytest.raises(RedisAuthError, match="ACL user may not"):
            await RedisAdmin(limited).delete_consumer(
                STREAM, DeleteConsumer(group="billing", consumer="c", idle=1, reason="r")
            )
    finally:
        for client in (without, wrong, limited):
            await client.aclose()


@pytest.mark.timeout(120)
async def test_works_through_a_cluster_client(tmp_path: Path) -> None:
    """The worker's own factory in cluster mode: keyless commands (INFO, COMMAND DOCS) go to one node."""
    cluster = start_cluster("valkey9", tmp_path)
    client: Any = create_async_client(ConnectionSettings(url=cluster.url, mode="cluster"))
    try:
        # Nodes of 4 entries, so that approximate trimming acts on a 30-entry stream (this cluster is ours).
        await client.config_set("stream-node-max-entries", 4, target_nodes=client.ALL_NODES)
        admin = RedisAdmin(client)
        assert (await admin.capabilities()).family == "valkey"
        server = await admin.server_state()  # one INFO with two sections, sent to one node
        assert (server.maxmemory_policy, server.aof_enabled) == ("noeviction", False)
        assert server.used_memory is not None
        assert server.used_memory > 0
        await admin.apply_group_plan(
            STREAM, plan_groups([DesiredGroup(name="billing", start_id="0")], set(), {}, "Retain")
        )
        ids = [await client.xadd(STREAM, {"n": str(i)}) for i in range(30)]
        await client.xadd(DLQ, {"n": "dead"})
        await client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=20)
        await client.xack(STREAM, "billing", *ids[:20])
        await client.xgroup_createconsumer(STREAM, "billing", "gone")

        seen = await admin.observe_stream(STREAM, dead_letter=DLQ)
        billing = seen.group("billing")
        assert billing is not None
        assert (billing.lag, billing.pending, seen.dead_letter_length) == (
            Lag(value=10, source="server"),
            0,
            1,
        )
        deletion = await admin.delete_consumer(
            STREAM, DeleteConsumer(group="billing", consumer="gone", idle=1, reason="gone")
        )
        assert deletion.deleted
        plan = await admin.retention_plan(seen, RetentionPolicy(max_length=5, approximate=True), now=0)
        assert plan.held is not None
        assert plan.held.entries.value == 5  # 10 unread entries stay, the policy wanted 5
        assert await admin.apply_trims(STREAM, DLQ, plan.actions) == {STREAM: 20}
        teardown = plan_teardown("Delete", STREAM, DLQ).delete
        assert teardown is not None
        assert await admin.delete_keys(teardown) == 2
    finally:
        await client.aclose()
        cluster.stop()


async def test_the_oldest_unread_entry_is_observed_per_group(
    admin: RedisAdmin, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client, 5)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xgroup_create(STREAM, "done", id="$")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=2)
    observed = await admin.observe_stream(STREAM)
    billing, done = observed.group("billing"), observed.group("done")
    assert billing is not None
    assert done is not None
    assert str(billing.oldest_unread_id) == ids[2]  # the first entry after last-delivered-id
    assert done.oldest_unread_id is None


@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_server_state_is_read_every_time_and_config_get_is_optional(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    user = "user reader on >s3cret ~* -@all +ping +client|setname +info"
    server = server_factory(kind, "--aclfile", str(write_acl_file(tmp_path / "users.acl", [user])))
    setup = server.client()
    full = redis.asyncio.Redis.from_url(server.url)
    limited = redis.asyncio.Redis(host="127.0.0.1", port=server.port, username="reader", password="s3cret")
    try:
        first = await RedisAdmin(full).server_state()
        assert (first.aof_enabled, first.appendfsync, first.maxmemory_policy) == (
            False,
            "everysec",
            "noeviction",
        )
        assert first.used_memory is not None
        assert first.used_memory > 0
        assert not first.evicts_any_key
        setup.config_set("maxmemory-policy", "allkeys-lfu")
        setup.config_set("maxmemory", str(512 * 1024 * 1024))
        setup.config_set("appendonly", "yes")
        setup.config_set("appendfsync", "no")
        # The same admin object (and client) sees the change: nothing of it is cached.
        again = await RedisAdmin(full).server_state()
        assert (again.aof_enabled, again.appendfsync, again.maxmemory_policy) == (True, "no", "allkeys-lfu")
        assert again.maxmemory == 512 * 1024 * 1024
        assert again.evicts_any_key
        # A user without +config|get (the documented operator ACL) gets everything but appendfsync.
        refused = await RedisAdmin(limited).server_state()
        assert (refused.aof_enabled, refused.appendfsync, refused.maxmemory_policy) == (
            True,
            None,
            "allkeys-lfu",
        )
        assert (await RedisAdmin(limited).server_state()).appendfsync is None  # not asked again
    finally:
        await full.aclose()
        await limited.aclose()
        setup.close()
