"""The StreamPipeline's status from what one reconcile pass found, and when it is worth writing. Pure.

A pass collects :class:`Findings` (the spec's problems, the server, the observed stream and groups,
the worker Deployments, what retention held back); :func:`build_status` turns them into the status
with its six conditions, keeping ``lastTransitionTime`` unless a condition's status flips.

:func:`worth_writing` keeps the API server from a write storm: a change in a condition's status or
reason, ``observedGeneration``, the groups, the server or a group's desired replicas is written at
once; figures that move all the time (lengths, lag, pending, ages, ready pods, condition messages)
are written at most every ``figures_interval`` seconds, and nothing is written when nothing changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from streampipe_operator import api
from streampipe_operator.api import ConditionType, Reason
from streampipe_operator.plan.backlog import group_backlog
from streampipe_operator.plan.observed import GroupState, ServerState, StreamObservation
from streampipe_operator.plan.retention import RetentionOutcome
from streampipe_worker.capabilities import ServerCapabilities
from streampipe_worker.partitions import PartitionLayout

if TYPE_CHECKING:
    from streampipe_operator.engine.housekeeping import PassReport

# Ready's reason when the server cannot be used, and the one RedisReachable gets with it.
RedisProblem = Literal[Reason.REDIS_UNREACHABLE, Reason.REDIS_AUTH_FAILED, Reason.CREDENTIALS_MISSING]
_REACHABLE_REASON = {
    Reason.REDIS_UNREACHABLE: Reason.UNREACHABLE,
    Reason.REDIS_AUTH_FAILED: Reason.AUTH_FAILED,
    Reason.CREDENTIALS_MISSING: Reason.CREDENTIALS_MISSING,
}


@dataclass
class GroupWorkload:
    """One group's worker Deployment as this pass left it."""

    replicas: int = 0
    ready_replicas: int = 0
    desired_replicas: int = 0
    mode: Literal["native", "none"] = "native"
    backlog_unknown: bool = False
    last_scale_time: datetime | None = None


@dataclass
class Findings:
    """Everything one reconcile pass learned that status reports."""

    generation: int | None = None
    invalid: Sequence[str] = ()
    not_allowed: Sequence[str] = ()  # what the operator's workload policy refuses (kube.policy)
    conflict_with: str | None = None
    deletion_blocked: str | None = None
    redis_problem: tuple[RedisProblem, str] | None = None
    server: ServerCapabilities | None = None
    server_state: ServerState | None = None
    where: str = ""
    observation: StreamObservation | None = None
    group_names: Sequence[str] = ()
    group_problems: Mapping[str, str] = field(default_factory=dict)
    orphaned: Sequence[str] = ()
    workloads: Mapping[str, GroupWorkload] = field(default_factory=dict)
    workload_problems: Mapping[str, str] = field(default_factory=dict)
    retention_configured: bool = False
    retention: RetentionOutcome | None = None
    trimmed_total: int | None = None
    last_trim_at: datetime | None = None
    dead_letter_stream: str | None = None
    # A partitioned pipeline: its layout, and each partition's observation (``observation`` is the sum).
    partition_layout: PartitionLayout | None = None
    partitions: Sequence[StreamObservation] = ()
    owners: Sequence[str | None] = ()

    def take_pass(self, report: PassReport, where: str) -> None:
        """What a housekeeping pass on the server ``where`` saw (the operator's and ``housekeep``'s)."""
        self.server = report.server
        self.server_state = report.server_state
        self.where = where
        self.observation = report.observation
        self.partitions = report.partitions
        self.owners = report.owners
        self.group_problems = report.group_problems
        self.orphaned = report.orphaned
        self.retention = report.retention


def _age(seconds: float) -> str:
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def oldest_pending_seconds(state: GroupState, *, now: float) -> float:
    """Seconds since the group's oldest pending entry was added (its ID's timestamp); 0 when nothing
    is pending. The same figure as ``oldestPendingAge`` in status, as a number for metrics."""
    if not state.pending or state.oldest_pending_id is None:
        return 0.0
    return max(0.0, now - state.oldest_pending_id.unix_seconds)


def oldest_unread_seconds(state: GroupState, *, now: float) -> float | None:
    """Seconds since the oldest entry the group has not read was added (its ID's timestamp): the age
    of the lag. None when nothing is unread; the figure of ``oldestUnreadAge`` and of the metric."""
    if state.oldest_unread_id is None:
        return None
    return max(0.0, now - state.oldest_unread_id.unix_seconds)


def group_status(
    name: str, state: GroupState | None, workload: GroupWorkload | None, *, now: float
) -> api.GroupStatus:
    """One group's status entry from its observed state (None: not on the server) and Deployment."""
    status = api.GroupStatus(name=name)
    if state is not None:
        backlog = group_backlog(state)
        status.lag = state.lag.value
        status.lag_estimated = state.lag.estimated
        status.pending = state.pending
        status.backlog = backlog.total
        status.consumers = len(state.consumers)
        status.last_delivered_id = str(state.last_delivered_id)
        status.entries_read = state.entries_read
        if state.oldest_pending_id is not None and state.pending:
            status.oldest_pending_id = str(state.oldest_pending_id)
            status.oldest_pending_age = _age(oldest_pending_seconds(state, now=now))
        unread_age = oldest_unread_seconds(state, now=now)
        if unread_age is not None:
            status.oldest_unread_age = _age(unread_age)
    if workload is not None:
        status.replicas = workload.replicas
        status.ready_replicas = workload.ready_replicas
        status.desired_replicas = workload.desired_replicas
        status.last_scale_time = workload.last_scale_time
    return status


def same_status(findings: Findings, last: Findings) -> bool:
    """Whether :func:`build_status` over the same previous status, and the figures exported with it,
    give for ``findings`` what they gave for ``last`` (a pass's findings against the last pass's). Not
    when a group has pending or unread entries: status and metrics report their ages, which grow. What
    status never shows may differ: the server's used memory (only a metric, see
    ``OperatorMetrics.export_server``) and consumers' idle times (status counts consumers)."""
    observation = findings.observation
    if observation is not None and any(
        state.pending or state.oldest_unread_id is not None for state in observation.groups
    ):
        return False
    if not _same_observation(observation, last.observation):
        return False
    state, before = findings.server_state, last.server_state
    if (state is None or before is None) and state is not before:
        return False
    if state is not None and _but(state, "used_memory") != _but(before, "used_memory"):
        return False
    return replace(findings, observation=last.observation, server_state=before) == last


def _same_observation(new: StreamObservation | None, old: StreamObservation | None) -> bool:
    """Equal but for consumers' idle times (a worker blocked in XREADGROUP resets its own)."""
    if new is None or old is None:
        return new is old
    if _but(new, "groups") != _but(old, "groups") or len(new.groups) != len(old.groups):
        return False
    return all(
        _but(a, "consumers") == _but(b, "consumers")
        and [(c.name, c.pending) for c in a.consumers] == [(c.name, c.pending) for c in b.consumers]
        for a, b in zip(new.groups, old.groups, strict=True)
    )


def _but(model: Any, field_name: str) -> dict[str, Any]:
    return {name: value for name, value in model.__dict__.items() if name != field_name}


def build_status(
    findings: Findings,
    previous: api.StreamPipelineStatus | None,
    *,
    now: datetime,
) -> api.StreamPipelineStatus:
    """The status for ``findings``; ``previous`` supplies transition times and what this pass did not
    look at (stream figures while Redis is unreachable, trim totals)."""
    previous = previous if previous is not None else api.StreamPipelineStatus()
    conditions = list(previous.conditions)
    generation = findings.generation

    def put(type_: str, status: api.ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = api.set_condition(
            conditions, type_, status, reason, message, observed_generation=generation, now=now
        )

    ready_reason, ready_message = _ready(findings)
    _redis_conditions(findings, put)
    _groups_condition(findings, put)
    _scaling_condition(findings, put)
    _retention_condition(findings, previous, put)
    _durability_condition(findings, put)
    _eviction_condition(findings, put)
    put(
        ConditionType.READY,
        "True" if ready_reason == Reason.RECONCILED else "False",
        ready_reason,
        ready_message,
    )
    order = [str(t) for t in ConditionType]
    conditions.sort(key=lambda c: order.index(c.type) if c.type in order else len(order))

    status = api.StreamPipelineStatus(observed_generation=generation, conditions=conditions)
    observation = findings.observation
    if findings.server is not None:
        state = findings.server_state or ServerState()
        status.server = api.ServerStatus(
            family=findings.server.family,
            version=findings.server.version,
            maxmemory=state.maxmemory,
            maxmemory_policy=state.maxmemory_policy,
            appendonly=state.aof_enabled,
            appendfsync=state.appendfsync,
        )
        status.server_features = api.ServerFeatures(
            stream_commands=findings.server.stream_commands(),
            protected_trim=findings.retention.path if findings.retention is not None else None,
        )
    else:
        status.server = previous.server
        status.server_features = previous.server_features
    status.stream = _stream_status(findings, previous)
    if observation is not None:
        states = {state.name: state for state in observation.groups}
        status.groups = [
            group_status(name, states.get(name), findings.workloads.get(name), now=now.timestamp())
            for name in findings.group_names
        ]
        status.dead_letter = api.DeadLetterStatus(
            stream=findings.dead_letter_stream, length=observation.dead_letter_length or 0
        )
        status.partitions = _partition_status(findings)
    else:
        # Redis not seen this pass: keep the last figures, refresh what Kubernetes says.
        before = {group.name: group for group in previous.groups}
        status.groups = []
        for name in findings.group_names:
            kept = before.get(name, api.GroupStatus(name=name)).model_copy()
            workload = findings.workloads.get(name)
            if workload is not None:
                kept.replicas = workload.replicas
                kept.ready_replicas = workload.ready_replicas
                kept.desired_replicas = workload.desired_replicas
                kept.last_scale_time = workload.last_scale_time
            status.groups.append(kept)
        status.dead_letter = previous.dead_letter
        status.partitions = previous.partitions
    return status.summarized()


def _partition_status(findings: Findings) -> list[api.PartitionStatus] | None:
    """Each partition's figures, when the pipeline is partitioned and its partitions were observed."""
    layout = findings.partition_layout
    if layout is None or len(findings.partitions) != layout.count:
        return None
    parts = []
    for index, observation in enumerate(findings.partitions):
        lags = [group.lag.value for group in observation.groups]
        parts.append(
            api.PartitionStatus(
                index=index,
                stream=observation.stream_key,
                slot=layout.slot(index),
                length=observation.stream.length if observation.stream is not None else 0,
                lag=None if None in lags else sum(value or 0 for value in lags),
                pending=sum(group.pending for group in observation.groups),
                dead_letters=observation.dead_letter_length or 0,
                owner=findings.owners[index] if index < len(findings.owners) else None,
            )
        )
    return parts


def _stream_status(findings: Findings, previous: api.StreamPipelineStatus) -> api.StreamStatus | None:
    before = previous.stream
    trimmed_total = findings.trimmed_total
    if trimmed_total is None:
        trimmed_total = before.trimmed_total if before is not None else 0
    last_trim = findings.last_trim_at or (before.last_trim_at if before is not None else None)
    observation = findings.observation
    if observation is None:
        if before is None:
            return None
        return before.model_copy(update={"trimmed_total": trimmed_total, "last_trim_at": last_trim})
    stream = observation.stream
    if stream is None:
        return api.StreamStatus(length=0, trimmed_total=trimmed_total, last_trim_at=last_trim)
    return api.StreamStatus(
        length=stream.length,
        first_entry_id=str(stream.first_entry_id) if stream.first_entry_id is not None else None,
        last_generated_id=str(stream.last_generated_id),
        entries_added=stream.entries_added,
        memory_bytes=observation.memory_bytes,
        trimmed_total=trimmed_total,
        last_trim_at=last_trim,
    )


def _per_group(problems: Mapping[str, str]) -> str:
    return "; ".join(f"group {group}: {message}" for group, message in sorted(problems.items()))


def _ready(findings: Findings) -> tuple[str, str]:
    """Ready's reason and message: the first problem in order of what blocks the most."""
    problems: list[tuple[str, str] | None] = [
        (
            Reason.INVALID_SPEC,
            "the spec is invalid (it slipped past the CRD's schema): " + "; ".join(findings.invalid),
        )
        if findings.invalid
        else None,
        (
            Reason.NOT_ALLOWED,
            "this operator does not run what the spec asks for: " + "; ".join(findings.not_allowed),
        )
        if findings.not_allowed
        else None,
        (Reason.DELETION_BLOCKED, findings.deletion_blocked) if findings.deletion_blocked else None,
        (Reason.CONFLICT, findings.conflict_with) if findings.conflict_with else None,
        findings.redis_problem,
        (Reason.GROUPS_NOT_READY, _per_group(findings.group_problems)) if findings.group_problems else None,
        (Reason.WORKLOAD_FAILED, _per_group(findings.workload_problems))
        if findings.workload_problems
        else None,
    ]
    for problem in problems:
        if problem is not None:
            return problem
    groups = ", ".join(findings.group_names)
    return Reason.RECONCILED, f"groups {groups} exist and their worker Deployments match the spec"


def _not_checked(findings: Findings) -> str | None:
    if findings.invalid:
        return "not checked: the spec is invalid"
    if findings.not_allowed:
        return "not checked: the spec names images or ServiceAccounts this operator does not allow"
    if findings.conflict_with:
        return "not checked: another StreamPipeline owns this stream"
    return None


def _redis_conditions(findings: Findings, put: Any) -> None:
    skipped = _not_checked(findings)
    if skipped:
        put(ConditionType.REDIS_REACHABLE, "Unknown", Reason.NOT_CHECKED, skipped)
    elif findings.redis_problem:
        reason, message = findings.redis_problem
        put(ConditionType.REDIS_REACHABLE, "False", _REACHABLE_REASON[reason], message)
    elif findings.server is not None:
        put(
            ConditionType.REDIS_REACHABLE,
            "True",
            Reason.CONNECTED,
            f"connected to {findings.server.describe()} at {findings.where}",
        )


def _groups_condition(findings: Findings, put: Any) -> None:
    skipped = _not_checked(findings)
    if skipped:
        put(ConditionType.GROUPS_READY, "Unknown", Reason.NOT_CHECKED, skipped)
        return
    if findings.redis_problem:
        put(
            ConditionType.GROUPS_READY,
            "Unknown",
            Reason.NOT_CHECKED,
            "not checked: the server cannot be reached",
        )
        return
    if findings.group_problems:
        put(
            ConditionType.GROUPS_READY,
            "False",
            Reason.GROUPS_MISSING,
            "; ".join(f"group {g}: {m}" for g, m in sorted(findings.group_problems.items())),
        )
        return
    message = f"groups {', '.join(findings.group_names)} exist"
    if findings.orphaned:
        names = ", ".join(findings.orphaned)
        message += (
            f"; {names} {'is' if len(findings.orphaned) == 1 else 'are'} on the stream but not in the spec, "
            f"left in place (deletionPolicy Retain)"
        )
    put(ConditionType.GROUPS_READY, "True", Reason.ALL_GROUPS_EXIST, message)


def _scaling_condition(findings: Findings, put: Any) -> None:
    skipped = _not_checked(findings)
    if skipped:
        put(ConditionType.SCALING, "Unknown", Reason.NOT_CHECKED, skipped)
        return
    workloads = {
        name: findings.workloads[name] for name in findings.group_names if name in findings.workloads
    }
    native = {name: w for name, w in workloads.items() if w.mode == "native"}
    if workloads and not native:
        put(
            ConditionType.SCALING,
            "False",
            Reason.SCALING_DISABLED,
            "scaling.mode is none for every group: replicas are left alone",
        )
        return
    if findings.redis_problem:
        put(
            ConditionType.SCALING,
            "False",
            Reason.SCALING_HELD,
            "replicas held: the backlog cannot be read while the server is unreachable",
        )
        return
    failed = {g: m for g, m in findings.workload_problems.items() if g in native}
    if failed:
        put(
            ConditionType.SCALING,
            "False",
            Reason.SCALE_FAILED,
            "; ".join(f"group {g}: {m}" for g, m in sorted(failed.items())),
        )
        return
    unknown = sorted(name for name, w in native.items() if w.backlog_unknown)
    if unknown:
        put(
            ConditionType.SCALING,
            "False",
            Reason.BACKLOG_UNKNOWN,
            f"replicas of {', '.join(unknown)} held: the lag could not be read or counted",
        )
        return
    parts = [
        f"{name}: {w.desired_replicas} replica{'' if w.desired_replicas == 1 else 's'}"
        + ("" if w.mode == "native" else " (scaling.mode none)")
        for name, w in workloads.items()
    ]
    put(ConditionType.SCALING, "True", Reason.SCALING_ACTIVE, "; ".join(parts) or "no groups")


def _retention_condition(findings: Findings, previous: api.StreamPipelineStatus, put: Any) -> None:
    skipped = _not_checked(findings)
    if skipped:
        put(ConditionType.RETENTION_HELD, "Unknown", Reason.NOT_CHECKED, skipped)
        return
    if not findings.retention_configured:
        put(
            ConditionType.RETENTION_HELD,
            "False",
            Reason.NO_RETENTION,
            "no retention in the spec: the operator does not trim the stream",
        )
        return
    outcome = findings.retention
    if outcome is None:
        # Retention has not run yet in this operator's life: keep what was reported.
        return
    if not outcome.protected:
        put(
            ConditionType.RETENTION_HELD,
            "False",
            Reason.PROTECTION_OFF,
            "protectUnprocessed is false: trimming may remove entries groups have not processed",
        )
    elif outcome.held is not None:
        put(ConditionType.RETENTION_HELD, "True", Reason.RETENTION_HOLDING, outcome.held.message)
    else:
        put(
            ConditionType.RETENTION_HELD,
            "False",
            Reason.RETENTION_NOT_HELD,
            "retention is not holding back any entries",
        )


def _durability_condition(findings: Findings, put: Any) -> None:
    """From what the server says this pass (INFO persistence, CONFIG GET appendfsync), so a change
    made to a running server shows on the next pass, not only after a reconnect."""
    server = findings.server
    if server is None:
        skipped = _not_checked(findings)
        if skipped:
            put(ConditionType.DURABILITY_AT_RISK, "Unknown", Reason.NOT_CHECKED, skipped)
        return
    state = findings.server_state
    aof = state.aof_enabled if state is not None and state.aof_enabled is not None else server.aof_enabled
    fsync = state.appendfsync if state is not None else None
    where = f"{server.describe()} at {findings.where}"
    if aof and fsync == "no":
        put(
            ConditionType.DURABILITY_AT_RISK,
            "True",
            Reason.APPEND_FSYNC_NO,
            f"{where} writes an append-only file but never syncs it (appendfsync no): the kernel decides "
            f"when entries reach the disk, so a host crash can lose many seconds of acknowledged writes; "
            f"set appendfsync everysec (at most about one second lost) or always",
        )
    elif aof:
        if fsync == "everysec":
            detail = (
                "appendfsync everysec: a host crash can lose up to about one second of acknowledged "
                "writes, the documented trade-off"
            )
        elif fsync == "always":
            detail = "appendfsync always: every write is on disk before it is acknowledged"
        else:
            detail = "appendfsync not readable by this user (CONFIG GET); everysec is the default"
        put(
            ConditionType.DURABILITY_AT_RISK,
            "False",
            Reason.APPEND_ONLY_ON,
            f"{server.describe()} writes an append-only file ({detail})",
        )
    else:
        put(
            ConditionType.DURABILITY_AT_RISK,
            "True",
            Reason.APPEND_ONLY_OFF,
            f"{server.describe()} at {findings.where} runs without an append-only file (appendonly no): a "
            f"server crash loses every entry written since its last snapshot, acknowledged or not; turn on "
            f"appendonly (appendfsync everysec) to keep them",
        )


def _eviction_condition(findings: Findings, put: Any) -> None:
    """EvictionRisk: whether the server's maxmemory-policy may evict the pipeline's streams."""
    state, server = findings.server_state, findings.server
    if server is None or state is None or state.maxmemory_policy is None:
        skipped = _not_checked(findings)
        if skipped:
            put(ConditionType.EVICTION_RISK, "Unknown", Reason.NOT_CHECKED, skipped)
        return
    policy = state.maxmemory_policy
    limit = f"maxmemory {state.maxmemory} bytes" if state.maxmemory else "no maxmemory set yet"
    if state.evicts_any_key:
        put(
            ConditionType.EVICTION_RISK,
            "True",
            Reason.KEYS_EVICTABLE,
            f"{server.describe()} at {findings.where} has maxmemory-policy {policy} ({limit}): at the "
            f"limit it evicts any key, this pipeline's stream and dead-letter stream included, and every "
            f"entry in them is lost without an error; use noeviction (writes fail instead) or a volatile-* "
            f"policy "
            f"(streams have no TTL, so they are never chosen)",
        )
    else:
        put(
            ConditionType.EVICTION_RISK,
            "False",
            Reason.NO_EVICTION,
            f"maxmemory-policy {policy} ({limit}) never evicts keys without a TTL, such as streams",
        )


# ------------------------------------------------------------------------------------ writing it

_GROUP_FIGURES = (
    "lag",
    "lagEstimated",
    "pending",
    "backlog",
    "consumers",
    "oldestPendingAge",
    "oldestUnreadAge",
    "oldestPendingId",
    "lastDeliveredId",
    "entriesRead",
    "replicas",
    "readyReplicas",
)


def status_document(status: api.StreamPipelineStatus) -> dict[str, Any]:
    """The status as the API server stores it (camelCase, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def significant(document: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a status document whose change is written at once."""
    return {
        "observedGeneration": document.get("observedGeneration"),
        "conditions": [
            (c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
            for c in document.get("conditions") or []
        ],
        "server": {
            key: value for key, value in (document.get("server") or {}).items() if key != "usedMemory"
        },
        "groups": [
            {key: value for key, value in group.items() if key not in _GROUP_FIGURES}
            for group in document.get("groups") or []
        ],
        "deadLetterStream": (document.get("deadLetter") or {}).get("stream"),
    }


def _comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    # lastTransitionTime only moves with status, which `significant` already covers.
    copy = dict(document)
    copy["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in document.get("conditions") or []
    ]
    return copy


def worth_writing(new: Mapping[str, Any], written: Mapping[str, Any] | None, *, figures_due: bool) -> bool:
    """Whether to write ``new`` over ``written`` (the last document written, or read back)."""
    if written is None:
        return True
    if significant(new) != significant(written):
        return True
    return figures_due and _comparable(new) != _comparable(written)


EventType = Literal["Normal", "Warning"]


def transition_events(
    before: Mapping[str, Any] | None, status: api.StreamPipelineStatus
) -> list[tuple[EventType, str, str]]:
    """The Events a status change is worth (type, reason, message): one per change of Ready's status or
    reason (not for the very first status, when Ready is True: DeploymentCreated etc. say enough), and
    one when DurabilityAtRisk or EvictionRisk turns True."""
    events: list[tuple[EventType, str, str]] = []
    old = api.StreamPipelineStatus.model_validate(before) if before else api.StreamPipelineStatus()
    ready, was = status.condition(ConditionType.READY), old.condition(ConditionType.READY)
    if ready is not None and (was is None or (was.status, was.reason) != (ready.status, ready.reason)):
        if ready.status != "True":
            events.append(("Warning", ready.reason, ready.message))
        elif was is not None:
            events.append(("Normal", ready.reason, ready.message))
    risk, had = (
        status.condition(ConditionType.DURABILITY_AT_RISK),
        old.condition(ConditionType.DURABILITY_AT_RISK),
    )
    if risk is not None and risk.status == "True" and (had is None or had.status != "True"):
        events.append(("Warning", Reason.DURABILITY_AT_RISK, risk.message))
    eviction, evicted = (
        status.condition(ConditionType.EVICTION_RISK),
        old.condition(ConditionType.EVICTION_RISK),
    )
    if eviction is not None and eviction.status == "True" and (evicted is None or evicted.status != "True"):
        events.append(("Warning", Reason.EVICTION_RISK, eviction.message))
    return events
