"""Status from what a reconcile pass found (status.build_status), when to write it (worth_writing), and
which pipeline owns a stream (conflicts). Pure functions, table-driven; the same behaviour on a real
API server is in tests/k8s/test_operator_*.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streampipe_operator import api
from streampipe_operator.controller.ownership import PipelineRef, established, others, owner, stream_identity
from streampipe_operator.kube.status import (
    Findings,
    GroupWorkload,
    build_status,
    same_status,
    status_document,
    transition_events,
    worth_writing,
)
from streampipe_operator.plan.observed import (
    ConsumerState,
    GroupState,
    Lag,
    ServerState,
    StreamObservation,
    StreamState,
)
from streampipe_operator.plan.retention import EntryCount, ProtectionBound, RetentionHeld, RetentionOutcome
from streampipe_worker.capabilities import ServerCapabilities
from streampipe_worker.entry_ids import EntryId

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
VALKEY = ServerCapabilities(
    family="valkey",
    version="9.1.0",
    lag_in_xinfo=True,
    xtrim_acked=False,
    xreadgroup_claim=False,
    xautoclaim=True,
    aof_enabled=False,
)


def observation(lag: int | None = 40, pending: int = 2, source: str = "server") -> StreamObservation:
    first, last = EntryId(1_700_000_000_000, 0), EntryId(1_700_000_060_000, 0)
    return StreamObservation(
        stream_key="{orders}:events",
        exists=True,
        stream=StreamState(
            length=100, first_entry_id=first, last_entry_id=last, last_generated_id=last, entries_added=120
        ),
        groups=(
            GroupState(
                name="billing",
                last_delivered_id=EntryId(1_700_000_030_000, 0),
                entries_read=80,
                lag=Lag(value=lag, source=source),  # type: ignore[arg-type]
                pending=pending,
                oldest_pending_id=EntryId(1_700_000_020_000, 0) if pending else None,
                consumers=(ConsumerState(name="orders-billing-abc", pending=pending, idle=1.0),),
            ),
        ),
        memory_bytes=4096,
        dead_letter_key="{orders}:events:dlq",
        dead_letter_length=3,
    )


def healthy(**changes: Any) -> Findings:
    findings = Findings(
        generation=3,
        server=VALKEY,
        server_state=ServerState(
            used_memory=2_000_000, maxmemory=0, maxmemory_policy="noeviction", aof_enabled=False
        ),
        where="127.0.0.1:6379",
        observation=observation(),
        group_names=["billing"],
        workloads={"billing": GroupWorkload(replicas=2, ready_replicas=1, desired_replicas=2)},
        retention_configured=True,
        retention=RetentionOutcome(),
        dead_letter_stream="{orders}:events:dlq",
    )
    for key, value in changes.items():
        setattr(findings, key, value)
    return findings


def conditions(status: api.StreamPipelineStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_healthy_pipeline() -> None:
    status = build_status(healthy(), None, now=NOW)
    assert conditions(status) == {
        "Ready": ("True", "Reconciled"),
        "RedisReachable": ("True", "Connected"),
        "GroupsReady": ("True", "AllGroupsExist"),
        "Scaling": ("True", "Active"),
        "RetentionHeld": ("False", "NotHeld"),
        "DurabilityAtRisk": ("True", "AppendOnlyOff"),
        "EvictionRisk": ("False", "StreamsNotEvicted"),
    }
    assert [c.type for c in status.conditions] == [str(t) for t in api.ConditionType]
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert status.observed_generation == 3
    assert status.server == api.ServerStatus(
        family="valkey",
        version="9.1.0",
        maxmemory=0,
        maxmemory_policy="noeviction",
        appendonly=False,
    )
    assert status.server_features == api.ServerFeatures(stream_commands=["XAUTOCLAIM"], protected_trim=None)
    group = status.groups[0]
    assert (group.lag, group.pending, group.backlog, group.consumers) == (40, 2, 42, 1)
    assert group.last_delivered_id == "1700000030000-0"
    assert group.entries_read == 80
    assert group.oldest_pending_id == "1700000020000-0"
    assert (group.replicas, group.ready_replicas, group.desired_replicas) == (2, 1, 2)
    assert status.backlog == 42
    assert status.workers == "1/2"
    assert status.stream is not None
    assert (status.stream.length, status.stream.entries_added, status.stream.memory_bytes) == (100, 120, 4096)
    assert status.dead_letter == api.DeadLetterStatus(stream="{orders}:events:dlq", length=3)


def test_null_lag_is_reported_estimated_never_zero() -> None:
    status = build_status(healthy(observation=observation(lag=7, source="counted")), None, now=NOW)
    assert (status.groups[0].lag, status.groups[0].lag_estimated, status.groups[0].backlog) == (7, True, 9)
    unknown = build_status(healthy(observation=observation(lag=None, source="unknown")), None, now=NOW)
    assert unknown.groups[0].lag is None
    assert unknown.groups[0].backlog is None


@pytest.mark.parametrize(
    ("changes", "ready_reason", "others_expected"),
    [
        pytest.param(
            {
                "invalid": ["spec.groups[0].scaling.maxReplicas: must be >= minReplicas (3)"],
                "observation": None,
            },
            "InvalidSpec",
            {"RedisReachable": ("Unknown", "NotChecked"), "Scaling": ("Unknown", "NotChecked")},
            id="invalid",
        ),
        pytest.param(
            {
                "conflict_with": "StreamPipeline shop/first already uses stream",
                "observation": None,
                "server": None,
            },
            "Conflict",
            {"GroupsReady": ("Unknown", "NotChecked")},
            id="conflict",
        ),
        pytest.param(
            {
                "redis_problem": ("RedisUnreachable", "cannot reach Redis"),
                "observation": None,
                "server": None,
            },
            "RedisUnreachable",
            {
                "RedisReachable": ("False", "Unreachable"),
                "GroupsReady": ("Unknown", "NotChecked"),
                "Scaling": ("False", "Held"),
            },
            id="unreachable",
        ),
        pytest.param(
            {"redis_problem": ("RedisAuthFailed", "WRONGPASS"), "observation": None, "server": None},
            "RedisAuthFailed",
            {"RedisReachable": ("False", "AuthFailed")},
            id="auth",
        ),
        pytest.param(
            {"redis_problem": ("CredentialsMissing", "Secret shop/creds not found"), "observation": None},
            "CredentialsMissing",
            {"RedisReachable": ("False", "CredentialsMissing")},
            id="secret-missing",
        ),
        pytest.param(
            {"group_problems": {"billing": "key exists and is not a stream (WRONGTYPE)"}},
            "GroupsNotReady",
            {"GroupsReady": ("False", "GroupsMissing")},
            id="wrongtype",
        ),
        pytest.param(
            {"workload_problems": {"billing": "Deployment.apps is invalid: affinity"}},
            "WorkloadFailed",
            {"Scaling": ("False", "ScaleFailed")},
            id="workload",
        ),
    ],
)
def test_ready_says_what_blocks(
    changes: dict[str, Any], ready_reason: str, others_expected: dict[str, tuple[str, str]]
) -> None:
    status = build_status(healthy(**changes), None, now=NOW)
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", ready_reason)
    assert ready.message
    found = conditions(status)
    for type_, expected in others_expected.items():
        assert found[type_] == expected


def test_unreachable_keeps_the_last_figures_and_refreshes_replicas() -> None:
    before = build_status(healthy(), None, now=NOW)
    after = build_status(
        healthy(
            redis_problem=("RedisUnreachable", "down"),
            observation=None,
            server=None,
            workloads={"billing": GroupWorkload(replicas=2, ready_replicas=0, desired_replicas=2)},
        ),
        before,
        now=NOW + timedelta(seconds=5),
    )
    assert after.groups[0].backlog == 42
    assert after.groups[0].ready_replicas == 0
    assert after.stream == before.stream
    assert after.server == before.server
    assert after.server_features == before.server_features
    # Durability was not checked again: the condition stays as it was.
    assert after.condition("DurabilityAtRisk") == before.condition("DurabilityAtRisk")


def test_server_features_name_the_commands_and_the_trim_path() -> None:
    redis8 = VALKEY.model_copy(
        update={"family": "redis", "version": "8.2.3", "xtrim_acked": True, "xackdel": True, "xdelex": True}
    )
    status = build_status(
        healthy(server=redis8, retention=RetentionOutcome(protected=True, path="ServerAcked")), None, now=NOW
    )
    assert status.server_features == api.ServerFeatures(
        stream_commands=["XAUTOCLAIM", "XTRIM ACKED", "XACKDEL", "XDELEX"], protected_trim="ServerAcked"
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["serverFeatures"] == {
        "streamCommands": ["XAUTOCLAIM", "XTRIM ACKED", "XACKDEL", "XDELEX"],
        "protectedTrim": "ServerAcked",
    }


@pytest.mark.parametrize(
    ("state", "durability", "eviction"),
    [
        pytest.param(
            ServerState(aof_enabled=True, appendfsync="everysec", maxmemory_policy="noeviction"),
            ("False", "AppendOnlyOn"),
            ("False", "StreamsNotEvicted"),
            id="everysec-is-the-documented-trade-off",
        ),
        pytest.param(
            ServerState(aof_enabled=True, appendfsync="no", maxmemory_policy="volatile-lru", maxmemory=10**9),
            ("True", "AppendFsyncNo"),
            ("False", "StreamsNotEvicted"),
            id="fsync-no-is-a-risk-volatile-never-evicts-streams",
        ),
        pytest.param(
            ServerState(aof_enabled=True, appendfsync=None, maxmemory_policy="allkeys-lru", maxmemory=10**9),
            ("False", "AppendOnlyOn"),
            ("True", "KeysEvictable"),
            id="allkeys-evicts-streams-fsync-unreadable",
        ),
        pytest.param(
            ServerState(aof_enabled=False, maxmemory_policy="allkeys-lfu"),
            ("True", "AppendOnlyOff"),
            ("True", "KeysEvictable"),
            id="read-this-pass-not-the-cached-capabilities",
        ),
    ],
)
def test_durability_and_eviction_follow_the_server_state(
    state: ServerState, durability: tuple[str, str], eviction: tuple[str, str]
) -> None:
    status = build_status(healthy(server_state=state), None, now=NOW)
    found = conditions(status)
    assert found["DurabilityAtRisk"] == durability
    assert found["EvictionRisk"] == eviction
    events = {reason for _, reason, _ in transition_events(None, status)}
    assert ("EvictionRisk" in events) == (eviction[0] == "True")
    assert ("DurabilityAtRisk" in events) == (durability[0] == "True")


def test_oldest_unread_age_comes_from_the_first_unread_id() -> None:
    base = observation()
    group = base.groups[0].model_copy(
        update={"oldest_unread_id": EntryId(int(NOW.timestamp() * 1000) - 75_000)}
    )
    status = build_status(healthy(observation=base.model_copy(update={"groups": (group,)})), None, now=NOW)
    assert status.groups[0].oldest_unread_age == "1m15s"
    assert build_status(healthy(), None, now=NOW).groups[0].oldest_unread_age is None


def test_transition_time_moves_only_when_status_flips() -> None:
    first = build_status(healthy(), None, now=NOW)
    same = build_status(healthy(), first, now=NOW + timedelta(minutes=1))
    assert same.condition("Ready") == first.condition("Ready")
    down = build_status(
        healthy(redis_problem=("RedisUnreachable", "down"), observation=None),
        same,
        now=NOW + timedelta(minutes=2),
    )
    ready = down.condition("Ready")
    assert ready is not None
    assert ready.last_transition_time == NOW + timedelta(minutes=2)
    assert down.condition("GroupsReady") is not None


def test_retention_conditions() -> None:
    held = RetentionHeld(
        entries=EntryCount(value=120),
        holders=(ProtectionBound(group="billing", id=EntryId(1_700_000_020_000, 0), cause="pending"),),
    )
    holding = build_status(healthy(retention=RetentionOutcome(held=held)), None, now=NOW)
    condition = holding.condition("RetentionHeld")
    assert condition is not None
    assert (condition.status, condition.reason) == ("True", "UnprocessedEntries")
    assert "120 entries" in condition.message
    assert "billing" in condition.message
    off = build_status(healthy(retention=RetentionOutcome(protected=False)), None, now=NOW)
    assert conditions(off)["RetentionHeld"] == ("False", "ProtectionOff")
    none = build_status(healthy(retention_configured=False, retention=None), None, now=NOW)
    assert conditions(none)["RetentionHeld"] == ("False", "NoRetention")
    # Retention did not run in this pass: the last verdict stands.
    kept = build_status(healthy(retention=None), holding, now=NOW + timedelta(seconds=1))
    assert kept.condition("RetentionHeld") == holding.condition("RetentionHeld")


def test_trim_totals_and_orphans() -> None:
    status = build_status(healthy(trimmed_total=500, last_trim_at=NOW, orphaned=["legacy"]), None, now=NOW)
    assert status.stream is not None
    assert status.stream.trimmed_total == 500
    assert status.stream.last_trim_at == NOW
    groups_ready = status.condition("GroupsReady")
    assert groups_ready is not None
    assert "legacy is on the stream but not in the spec" in groups_ready.message


def test_scaling_disabled_when_every_group_is_mode_none() -> None:
    status = build_status(
        healthy(workloads={"billing": GroupWorkload(replicas=3, desired_replicas=3, mode="none")}),
        None,
        now=NOW,
    )
    assert conditions(status)["Scaling"] == ("False", "Disabled")
    unknown = build_status(
        healthy(workloads={"billing": GroupWorkload(replicas=3, desired_replicas=3, backlog_unknown=True)}),
        None,
        now=NOW,
    )
    assert conditions(unknown)["Scaling"] == ("False", "BacklogUnknown")


# --- no write storms ------------------------------------------------------------------------------


def test_nothing_changed_nothing_written() -> None:
    document = status_document(build_status(healthy(), None, now=NOW))
    again = status_document(
        build_status(healthy(), api.StreamPipelineStatus.model_validate(document), now=NOW)
    )
    assert not worth_writing(again, document, figures_due=True)
    assert worth_writing(document, None, figures_due=False)


def idle(**changes: Any) -> Findings:
    """Nothing pending, nothing unread: status and figures do not depend on the time."""
    quiet = observation(pending=0)
    group = quiet.groups[0].model_copy(update={"consumers": ()})
    return healthy(**{"observation": quiet.model_copy(update={"groups": (group,)}), **changes})


def server(**changes: Any) -> ServerState:
    state = ServerState(used_memory=2_000_000, maxmemory=0, maxmemory_policy="noeviction", aof_enabled=False)
    return state.model_copy(update=changes)


@pytest.mark.parametrize(
    ("findings", "same"),
    [
        (idle(), True),
        (idle(server_state=server(used_memory=3_000_000)), True),  # used memory is only a metric
        (idle(server_state=server(maxmemory=1)), False),
        (idle(server_state=server(used_memory=1, maxmemory_policy="allkeys-lru")), False),
        (idle(generation=4), False),
        (idle(redis_problem=("RedisUnreachable", "down")), False),
        (healthy(), False),  # two pending entries: their age grows
        (idle(observation=observation(pending=0)), False),  # a consumer appeared
    ],
)
def test_same_status_means_the_same_inputs_and_no_ages(findings: Findings, same: bool) -> None:
    assert same_status(findings, idle()) is same
    if same:
        # What the operator relies on when it reuses the last pass's status over the same previous one.
        previous = build_status(idle(), None, now=NOW - timedelta(minutes=1))
        assert status_document(build_status(findings, previous, now=NOW + timedelta(minutes=5))) == (
            status_document(build_status(idle(), previous, now=NOW))
        )


def test_same_status_does_not_look_at_consumers_idle_times() -> None:
    def with_consumer(idle: float, name: str = "orders-billing-abc") -> Findings:
        quiet = observation(pending=0)
        consumer = ConsumerState(name=name, pending=0, idle=idle)
        group = quiet.groups[0].model_copy(update={"consumers": (consumer,)})
        return healthy(observation=quiet.model_copy(update={"groups": (group,)}))

    assert same_status(with_consumer(idle=9.0), with_consumer(idle=1.0))  # a live worker's reads
    assert not same_status(with_consumer(idle=1.0, name="another"), with_consumer(idle=1.0))
    assert not same_status(idle(), with_consumer(idle=1.0))  # status counts consumers


def test_same_status_is_false_while_entries_are_unread() -> None:
    unread = observation(pending=0)
    group = unread.groups[0].model_copy(update={"oldest_unread_id": EntryId(1_700_000_040_000, 0)})
    findings = healthy(observation=unread.model_copy(update={"groups": (group,)}))
    assert not same_status(findings, findings)


def test_figures_wait_for_their_interval_but_decisions_do_not() -> None:
    document = status_document(build_status(healthy(), None, now=NOW))
    previous = api.StreamPipelineStatus.model_validate(document)
    busier = status_document(build_status(healthy(observation=observation(lag=9000)), previous, now=NOW))
    assert not worth_writing(busier, document, figures_due=False)
    assert worth_writing(busier, document, figures_due=True)
    scaled = status_document(
        build_status(
            healthy(workloads={"billing": GroupWorkload(replicas=2, ready_replicas=1, desired_replicas=5)}),
            previous,
            now=NOW,
        )
    )
    assert worth_writing(scaled, document, figures_due=False)
    broken = status_document(
        build_status(healthy(redis_problem=("RedisUnreachable", "down"), observation=None), previous, now=NOW)
    )
    assert worth_writing(broken, document, figures_due=False)
    new_generation = status_document(build_status(healthy(generation=4), previous, now=NOW))
    assert worth_writing(new_generation, document, figures_due=False)


# --- conflicts ------------------------------------------------------------------------------------


def spec(url: str, stream: str = "{orders}:events", mode: str = "standalone") -> api.StreamPipelineSpec:
    redis: dict[str, Any] = {"url": url, "mode": mode}
    if mode == "sentinel":
        redis["sentinel"] = {"masterName": "m"}
    return api.StreamPipelineSpec.model_validate(
        {
            "redis": redis,
            "stream": stream,
            "groups": [{"name": "g", "handler": "a:b", "image": "i"}],
        }
    )


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (spec("redis://Redis.shop:6379/0"), spec("redis://redis.shop/0"), True),
        (spec("redis://redis.shop:6379/0"), spec("redis://redis.shop:6379/1"), False),
        (spec("redis://redis.shop:6379/0"), spec("redis://redis.shop:6380/0"), False),
        (spec("redis://redis.shop:6379/0"), spec("redis://redis.shop:6379/0", "{orders}:other"), False),
        (spec("redis://user@redis.shop:6379/0"), spec("redis://redis.shop:6379"), True),
        (
            spec("redis://s1:26379,s2:26379/0", mode="sentinel"),
            spec("redis://s2:26379,s1:26379/0", mode="sentinel"),
            True,
        ),
        (spec("redis://n1:7000/0", mode="cluster"), spec("redis://n1:7000/3", mode="cluster"), True),
    ],
)
def test_stream_identity(a: api.StreamPipelineSpec, b: api.StreamPipelineSpec, same: bool) -> None:
    assert (stream_identity(a) == stream_identity(b)) is same


def test_the_oldest_pipeline_owns_the_stream() -> None:
    first = PipelineRef(namespace="shop", name="orders", uid="1", created="2026-11-26T10:00:00Z")
    second = PipelineRef(namespace="a", name="copy", uid="2", created="2026-11-26T11:00:00Z")
    tie = PipelineRef(namespace="shop", name="alpha", uid="3", created="2026-11-26T11:00:00Z")
    assert owner([second, first, tie]) == first
    assert owner([second, tie]) == second
    assert owner([]) is None
    assert others([first, second, tie], "2") == [first, tie]


def test_an_established_owner_keeps_the_stream_against_a_same_second_newcomer() -> None:
    """creationTimestamp has whole seconds: a pipeline created in the same second as the owner, with a
    name that sorts first, must not take the stream over once the owner has reconciled it."""
    owner_ref = PipelineRef(
        namespace="shop", name="orders", uid="1", created="2026-11-26T10:00:00Z", established=True
    )
    newcomer = PipelineRef(namespace="shop", name="copy", uid="2", created="2026-11-26T10:00:00Z")
    assert owner([newcomer, owner_ref]) == owner_ref
    assert others([owner_ref, newcomer], "2") == [owner_ref]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("Reconciled", True),
        ("RedisUnreachable", True),
        ("DeletionBlocked", True),
        ("Conflict", False),
        ("InvalidSpec", False),
        (None, False),
    ],
)
def test_established(reason: str | None, expected: bool) -> None:
    conditions = [] if reason is None else [{"type": "Ready", "status": "False", "reason": reason}]
    assert established({"status": {"conditions": conditions}}) is expected
