"""One housekeeping pass of a StreamPipeline on its server: the orchestration the operator
(``reconcile``, worker Deployments) and ``streampipe up`` (``up``, worker processes) share, on top of
``plan/``, ``streams.admin`` and ``spec_mapping``. :func:`run_pass`:

1. observes the stream, its groups and the dead-letter stream, and the server's capabilities;
2. creates missing groups, recreates vanished ones where they were last seen (``memory``, or a durable
   record such as status), destroys removed ones under ``deletionPolicy: Delete``, reports orphans
   once, and remembers every group's position;
3. per group when its ``pollInterval`` is due (always while its workload does not exist yet), decides
   replicas on lag + pending and hands a change to the :class:`WorkloadBackend`;
4. every ``retention.interval``, runs the protected trims and the dead-letter stream's ``maxLength``;
5. every claimIdle, removes consumers idle past ``2 x claimIdle`` that own nothing (and that no running
   worker has, where the backend knows their names).

Failures that stop the pass (unreachable, refused credentials, a key that is not a stream) raise
``RedisAdminError``; failures of one step are in the :class:`PassReport`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from streampipe_operator import api
from streampipe_operator.api import Reason
from streampipe_operator.engine.spec_mapping import replica_cap, retention_policy, scaling_policy
from streampipe_operator.plan.backlog import Backlog, group_backlog
from streampipe_operator.plan.consumers import plan_consumer_cleanup
from streampipe_operator.plan.groups import (
    CreateGroup,
    DesiredGroup,
    DestroyGroup,
    GroupPlan,
    LastKnownPosition,
    plan_groups,
)
from streampipe_operator.plan.observed import GroupState, Lag, ServerState, StreamObservation
from streampipe_operator.plan.partitions import merge_observations
from streampipe_operator.plan.retention import (
    RetentionOutcome,
    TrimAction,
    plan_dead_letter_trim,
    protection_path,
)
from streampipe_operator.plan.scaling import Recommendation, ScalingDecision, decide_replicas
from streampipe_operator.streams.admin import (
    RedisAdmin,
    RedisAdminError,
    RedisAuthError,
    RedisUnreachableError,
)
from streampipe_worker.capabilities import ServerCapabilities
from streampipe_worker.epochs import read_layout, record_growth, retire_settled_switches
from streampipe_worker.ownership import owner_key
from streampipe_worker.partitions import layout_key

CONSUMER_IDLE_FLOOR = 5.0  # never remove a consumer idle for less than this many seconds
DEFAULT_RETENTION_INTERVAL = api.RetentionSpec.model_fields["interval"].default.total_seconds()

# Steps that failed on the server while the pass went on.
FAILURES: frozenset[Reason] = frozenset({Reason.RETENTION_FAILED, Reason.CONSUMER_CLEANUP_FAILED})


class Clock(Protocol):
    """Where a pass reads the time: ``monotonic`` for when steps are due, ``time`` (Unix seconds) for
    entry IDs and scaling histories. The ``time`` module is one."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class WorkloadBackend(Protocol):
    """What runs a pipeline's workers: Deployments (the operator) or local processes (``up``)."""

    def current_replicas(self, group: str) -> int | None:
        """Replicas the group's workers have now; None when its workload does not exist yet (the caller
        creates it with the replicas of ``PassReport.decisions``)."""
        ...

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        """Change the group's replicas from ``current`` to ``decision.desired_replicas``. A failure is
        the backend's to report; the pass goes on."""
        ...

    def live_consumers(self) -> AbstractSet[str] | None:
        """Consumer names of the workers running now, or None when the backend cannot tell (then a
        consumer's idle time alone says it is gone)."""
        ...


@dataclass
class PipelineMemory:
    """What a pipeline's passes keep between them. None of it is needed for correctness after a
    restart: positions come back from a durable record, histories start from the current replicas."""

    positions: dict[str, LastKnownPosition] = field(default_factory=dict)
    histories: dict[str, tuple[Recommendation, ...]] = field(default_factory=dict)
    scale_due: dict[str, float] = field(default_factory=dict)
    retention_due: float = 0.0
    cleanup_due: float = 0.0
    retention: RetentionOutcome | None = None
    orphans_reported: set[str] = field(default_factory=set)
    # A partitioned pipeline: each partition's groups, retention and cleanup (by partition index).
    partitions: dict[int, PipelineMemory] = field(default_factory=dict)

    def next_due(self, spec: api.StreamPipelineSpec) -> float:
        """The monotonic time at which the next step of a pass is due."""
        native = [g.name for g in spec.groups if g.scaling.mode == "native" and g.name in self.scale_due]
        return min(self.retention_due, self.cleanup_due, *(self.scale_due[name] for name in native))


def next_due(due: float | None, now: float, interval: float) -> float:
    """When a step that was due at ``due`` and ran ``now`` is due again: one ``interval`` after ``due``
    while that is still ahead (a fixed rate, so a pass woken a little late does not push every later
    one back, and the operator's passes stay on the ticks they share, see ``reconcile``), else one
    ``interval`` from now (the first run, a late or early pass)."""
    if due is not None and due <= now < due + interval:
        return due + interval
    return now + interval


@dataclass(frozen=True)
class PassEvent:
    """Something a pass did or found that a person may want to know (a Kubernetes Event, a log line)."""

    reason: Reason
    message: str
    group: str | None = None
    warning: bool = False


@dataclass
class PassReport:
    """What one pass saw and did."""

    observation: StreamObservation
    server: ServerCapabilities
    server_state: ServerState | None = None  # memory and persistence, read every pass
    events: list[PassEvent] = field(default_factory=list)
    group_problems: dict[str, str] = field(default_factory=dict)
    orphaned: tuple[str, ...] = ()
    decisions: dict[str, ScalingDecision] = field(default_factory=dict)
    # The latest retention outcome (retention runs every interval, not every pass).
    retention: RetentionOutcome | None = None
    # Entries removed by trims this pass, by target ("stream", "dead_letter"); None: no trim ran.
    trimmed: dict[str, int] | None = None
    # A partitioned pipeline: each partition's own observation, by index (``observation`` is their sum),
    # and with per-key ordering the consumer holding each partition's lease (None: nobody).
    partitions: list[StreamObservation] = field(default_factory=list)
    owners: list[str | None] = field(default_factory=list)


def scaling_decision(
    group: api.GroupSpec,
    state: GroupState | None,
    *,
    current: int | None,
    history: Sequence[Recommendation] | None,
    now: float,
    cap: int | None = None,
) -> ScalingDecision:
    """The replica decision for one group from its observed state (None: the group is missing, so
    the backlog is unknown and replicas hold) and its workload's ``current`` replicas (None: there
    is no workload yet). Pure.

    ``history`` None means this process has made no decision for the group yet (it just started):
    the current count then counts as recommended ``now``, so a restart delays a scale-down by one
    stabilization window and never allows one at once.
    """
    backlog = (
        group_backlog(state)
        if state is not None
        else Backlog(lag=Lag(value=None, source="unknown"), pending=0)
    )
    if history is None and current is not None:
        history = (Recommendation(at=now, replicas=current),)
    policy = scaling_policy(group.scaling, cap=cap)
    return decide_replicas(
        group.name,
        policy,
        backlog,
        current_replicas=current if current is not None else policy.min_replicas,
        history=history or (),
        now=now,
    )


async def run_pass(
    spec: api.StreamPipelineSpec,
    admin: RedisAdmin,
    backend: WorkloadBackend,
    memory: PipelineMemory,
    *,
    clock: Clock = time,
    known_positions: Mapping[str, LastKnownPosition] | None = None,
    consumer_idle_floor: float = CONSUMER_IDLE_FLOOR,
) -> PassReport:
    """One pass (see the module docstring). ``known_positions`` are group positions from a durable
    record (the operator's status); what ``memory`` saw last is fresher and wins."""
    if spec.partitions is not None:
        return await _run_partitioned_pass(
            spec, admin, backend, memory, clock=clock, consumer_idle_floor=consumer_idle_floor
        )
    observation = await admin.observe_stream(spec.stream, dead_letter=spec.dead_letter_stream)
    report = PassReport(
        observation=observation, server=await admin.capabilities(), server_state=await admin.server_state()
    )
    steps = _Steps(spec, admin, backend, memory, report, clock, consumer_idle_floor)
    await steps.fix_groups(known_positions or {})
    await steps.scale()
    await steps.retain()
    await steps.clean_consumers()
    report.retention = memory.retention
    return report


class _NoScaling:
    """The backend of a partition's steps: they never scale (the pipeline scales on the sum)."""

    def __init__(self, backend: WorkloadBackend) -> None:
        self.backend = backend

    def current_replicas(self, group: str) -> int | None:
        return self.backend.current_replicas(group)

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        raise AssertionError("a partition's steps do not scale")

    def live_consumers(self) -> AbstractSet[str] | None:
        return self.backend.live_consumers()


async def _run_partitioned_pass(
    spec: api.StreamPipelineSpec,
    admin: RedisAdmin,
    backend: WorkloadBackend,
    memory: PipelineMemory,
    *,
    clock: Clock,
    consumer_idle_floor: float,
) -> PassReport:
    """The pass of a partitioned pipeline: groups, retention and consumer cleanup per partition (each
    with its own memory), then scaling once on the partitions' summed backlog (plan/partitions.py).
    Group positions are remembered per partition in memory only: after a restart a vanished group is
    recreated at its startId."""
    assert spec.partitions is not None
    layout = spec.partition_layout
    assert layout is not None
    server = await admin.capabilities()
    report = PassReport(
        observation=StreamObservation(stream_key=spec.stream, exists=False),
        server=server,
        server_state=await admin.server_state(),
    )
    trimmed: dict[str, int] = {}
    held = []
    for index in range(spec.partitions.count):
        part_spec = spec.partition(index)
        part_memory = memory.partitions.setdefault(index, PipelineMemory())
        part = PassReport(
            observation=await admin.observe_stream(
                part_spec.stream, dead_letter=part_spec.dead_letter_stream
            ),
            server=server,
        )
        steps = _Steps(part_spec, admin, _NoScaling(backend), part_memory, part, clock, consumer_idle_floor)
        await steps.fix_groups({})
        await steps.retain()
        await steps.clean_consumers()
        report.partitions.append(part.observation)
        if spec.partitions.ordering == "PerKey" and len(report.owners) == index:
            await _read_owner(admin, owner_key(layout, index), report.owners)
        report.events.extend(part.events)
        for group, problem in part.group_problems.items():
            report.group_problems.setdefault(group, f"{part_spec.stream}: {problem}")
        report.orphaned = tuple(sorted({*report.orphaned, *part.orphaned}))
        for target, removed in (part.trimmed or {}).items():
            trimmed[target] = trimmed.get(target, 0) + removed
        if part_memory.retention is not None:
            held.append(part_memory.retention)
    if spec.partitions.ordering == "PerKey":
        # After the groups: once the switch is recorded producers may write to the new partitions.
        await _record_layout(spec, admin, report)
    report.events = _coalesced(report.events)
    report.trimmed = trimmed or None
    report.observation = merge_observations(spec.stream, report.partitions)
    parts = memory.partitions.values()
    memory.retention_due = min(part.retention_due for part in parts)
    memory.cleanup_due = min(part.cleanup_due for part in parts)
    memory.retention = next(
        (outcome for outcome in held if outcome.held is not None), held[0] if held else None
    )
    await _Steps(spec, admin, backend, memory, report, clock, consumer_idle_floor).scale()
    report.retention = memory.retention
    return report


async def _record_layout(spec: api.StreamPipelineSpec, admin: RedisAdmin, report: PassReport) -> None:
    """PerKey: make ``{B}:layout`` say the spec's count (a grown count adds an epoch switch the workers
    hold moved keys behind, streampipe_worker.epochs), and retire the switches every group has settled.
    One GET when nothing changed; a few reads per old partition and group while a switch is in force."""
    layout = spec.partition_layout
    assert layout is not None
    key = layout_key(layout.base)
    try:
        before = await read_layout(admin.client, layout.base)
        record = await record_growth(admin.client, layout.base, layout.count)
        if before is not None and before.count < record.count:
            cutoffs = ", ".join(record.switches[-1].cutoffs)
            report.events.append(
                PassEvent(
                    Reason.LAYOUT_GROWN,
                    f"recorded the growth from {before.count} to {record.count} partitions on {key} (cutoffs "
                    f"{cutoffs}): a key that moved waits until its old partition is processed up to them",
                )
            )
        if record.switches:
            groups = [group.name for group in spec.groups]
            after = await retire_settled_switches(admin.client, layout.base, groups)
            if after is not None and len(after.switches) < len(record.switches):
                report.events.append(
                    PassEvent(
                        Reason.LAYOUT_SWITCH_RETIRED,
                        f"{key}: every group processed the old partitions up to their cutoffs; "
                        f"{len(record.switches) - len(after.switches)} switch(es) retired",
                    )
                )
    except (RedisError, OSError, ValueError) as exc:
        report.events.append(
            PassEvent(
                Reason.LAYOUT_RECORD_FAILED,
                f"could not record {layout.count} partitions on {key}: {exc}; PerKey workers started with "
                f"{layout.count} wait until it is recorded",
                warning=True,
            )
        )


async def _read_owner(admin: RedisAdmin, lease: str, owners: list[str | None]) -> None:
    """Append the consumer holding the partition ``lease`` (None: nobody). A user without GET
    (docs/reliability.md, ACL) leaves the owners unreported: nothing is appended."""
    try:
        holder = await admin.value(lease)
    except RedisAuthError:
        return
    owners.append(holder.rpartition("|")[0] if holder else None)


def _coalesced(events: Sequence[PassEvent]) -> list[PassEvent]:
    """One event per reason and group: the same thing done on many partitions is said once."""
    seen: dict[tuple[Reason, str | None, bool], list[PassEvent]] = {}
    for event in events:
        seen.setdefault((event.reason, event.group, event.warning), []).append(event)
    merged = []
    for same in seen.values():
        first = same[0]
        if len(same) > 1:
            first = PassEvent(
                first.reason,
                f"{first.message} (and the same on {len(same) - 1} more partitions)",
                group=first.group,
                warning=first.warning,
            )
        merged.append(first)
    return merged


@dataclass
class _Steps:
    """The steps of one pass over what they share."""

    spec: api.StreamPipelineSpec
    admin: RedisAdmin
    backend: WorkloadBackend
    memory: PipelineMemory
    report: PassReport
    clock: Clock
    consumer_idle_floor: float

    def event(self, reason: Reason, message: str, group: str | None = None, *, warning: bool = False) -> None:
        self.report.events.append(PassEvent(reason, message, group=group, warning=warning))

    async def fix_groups(self, known_positions: Mapping[str, LastKnownPosition]) -> None:
        spec, memory = self.spec, self.memory
        observed = [group.name for group in self.report.observation.groups]
        if sorted(observed) == sorted(group.name for group in spec.groups):
            plan = GroupPlan()  # every group there and no other: nothing to plan (most passes)
        else:
            plan = plan_groups(
                [DesiredGroup(name=group.name, start_id=group.start_id) for group in spec.groups],
                observed,
                {**known_positions, **memory.positions},
                spec.deletion_policy,
            )
        changed = False
        for action in plan.actions:
            changed = await self._apply_group_action(action) or changed
        for name in plan.orphaned:
            if name not in memory.orphans_reported:
                memory.orphans_reported.add(name)
                self.event(
                    Reason.GROUP_ORPHANED,
                    f"group {name} is on stream {spec.stream} but not in the spec; left in place because "
                    f"deletionPolicy is Retain (destroy it by hand, or use deletionPolicy Delete)",
                    name,
                    warning=True,
                )
        self.report.orphaned = plan.orphaned
        if changed:
            self.report.observation = await self.admin.observe_stream(
                spec.stream, dead_letter=spec.dead_letter_stream
            )
        for state in self.report.observation.groups:
            oldest_pending = state.oldest_pending_id if state.pending else None
            known = memory.positions.get(state.name)
            seen = (state.last_delivered_id, state.entries_read, oldest_pending)
            was = (known.last_delivered_id, known.entries_read, known.oldest_pending_id) if known else None
            if was == seen:
                continue  # unchanged: no new record (an idle pipeline's passes)
            memory.positions[state.name] = LastKnownPosition(
                last_delivered_id=state.last_delivered_id,
                entries_read=state.entries_read,
                oldest_pending_id=oldest_pending,
            )

    async def _apply_group_action(self, action: CreateGroup | DestroyGroup) -> bool:
        """Run one group action; True when it changed the server."""
        stream = self.spec.stream
        if isinstance(action, DestroyGroup):
            self.memory.positions.pop(action.group, None)
            if not (await self.admin.destroy_group(stream, action)).changed:
                return False
            self.event(Reason.GROUP_DESTROYED, action.reason, action.group)
            return True
        try:
            result = await self.admin.create_group(stream, action)
        except (RedisUnreachableError, RedisAuthError):
            raise
        except RedisAdminError as exc:
            self.report.group_problems[action.group] = str(exc)
            return False
        if not result.changed:
            return False
        if action.recreated:
            self.event(Reason.GROUP_RECREATED, action.reason, action.group, warning=True)
        else:
            self.event(Reason.GROUP_CREATED, f"{action.reason} on {stream}", action.group)
        return True

    async def scale(self) -> None:
        now, memory = self.clock.monotonic(), self.memory
        for group in self.spec.groups:
            if group.scaling.mode == "none":
                continue
            current = self.backend.current_replicas(group.name)
            if now < memory.scale_due.get(group.name, 0.0) and current is not None:
                continue
            memory.scale_due[group.name] = next_due(
                memory.scale_due.get(group.name), now, group.scaling.poll_interval.total_seconds()
            )
            decision = scaling_decision(
                group,
                self.report.observation.group(group.name),
                current=current,
                history=memory.histories.get(group.name),
                now=self.clock.time(),
                cap=replica_cap(self.spec),
            )
            memory.histories[group.name] = decision.history
            self.report.decisions[group.name] = decision
            if current is not None and decision.desired_replicas != current:
                await self.backend.set_replicas(group.name, decision, current)

    async def retain(self) -> None:
        spec, memory, now = self.spec, self.memory, self.clock.monotonic()
        if now < memory.retention_due:
            return
        interval = spec.retention.interval.total_seconds() if spec.retention else DEFAULT_RETENTION_INTERVAL
        memory.retention_due = next_due(memory.retention_due, now, interval)
        observation = self.report.observation
        actions: list[TrimAction] = []
        try:
            outcome = None
            if spec.retention is not None:
                policy = retention_policy(spec.retention)
                plan = await self.admin.retention_plan(observation, policy, now=self.clock.time())
                actions.extend(plan.actions)
                caps = self.report.server
                path = protection_path(policy, xtrim_acked=caps is not None and caps.xtrim_acked)
                outcome = RetentionOutcome(
                    held=plan.held,
                    protected=policy.protect_unprocessed,
                    path=path if policy.protect_unprocessed else None,
                )
                if plan.held is not None and (memory.retention is None or memory.retention.held is None):
                    self.event(Reason.RETENTION_HELD, plan.held.message, warning=True)
            memory.retention = outcome
            dead_letter = plan_dead_letter_trim(
                observation.dead_letter_length or 0, spec.dead_letter.max_length, approximate=True
            )
            if dead_letter is not None:
                actions.append(dead_letter)
            if not actions:
                return
            removed = await self.admin.apply_trims(spec.stream, spec.dead_letter_stream, actions)
        except RedisAdminError as exc:
            self.event(Reason.RETENTION_FAILED, f"retention: {exc}", warning=True)
            return
        trimmed = {
            "stream": removed.get(spec.stream, 0),
            "dead_letter": removed.get(spec.dead_letter_stream, 0),
        }
        self.report.trimmed = trimmed
        for target, key in (("stream", spec.stream), ("dead_letter", spec.dead_letter_stream)):
            if trimmed[target]:
                why = "; ".join(action.reason for action in actions if action.target == target)
                self.event(Reason.TRIMMED, f"trimmed {trimmed[target]} entries from {key}: {why}")

    async def clean_consumers(self) -> None:
        spec, memory, now = self.spec, self.memory, self.clock.monotonic()
        if now < memory.cleanup_due:
            return
        claim_idle = spec.retry.claim_idle.total_seconds()
        memory.cleanup_due = next_due(memory.cleanup_due, now, max(claim_idle, self.consumer_idle_floor))
        names = {group.name for group in spec.groups}
        cleanup = plan_consumer_cleanup(
            [state for state in self.report.observation.groups if state.name in names],
            # Idle for two claimIdle periods: a live worker reads far more often than that.
            idle_after=max(2 * claim_idle, self.consumer_idle_floor),
            live_consumers=self.backend.live_consumers(),
        )
        for action in cleanup.delete:
            try:
                result = await self.admin.delete_consumer(spec.stream, action)
            except RedisAdminError as exc:
                self.event(
                    Reason.CONSUMER_CLEANUP_FAILED, f"consumer cleanup: {exc}", action.group, warning=True
                )
                continue
            if result.deleted:
                self.event(Reason.CONSUMER_REMOVED, action.reason, action.group)
        for kept in cleanup.stranded:
            self.event(
                Reason.CONSUMER_KEPT,
                f"consumer {kept.consumer} of group {kept.group} is idle {kept.idle:.0f}s with "
                f"{kept.pending} pending entries: kept; a running worker claims them after claimIdle",
                kept.group,
            )
