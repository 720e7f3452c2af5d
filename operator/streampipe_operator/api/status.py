"""The StreamPipeline status: conditions, stream, groups, dead letters.

Status models are lenient (they are written by the operator, read back from the server) and mutable;
:func:`set_condition` is the one way to change a condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

from streampipe_operator.api.fields import MAX_GROUP_NAME, MAX_GROUPS, ShortText, Timestamp
from streampipe_worker.partitions import MAX_PARTITIONS

# ------------------------------------------------------------------------------------------- status


class ConditionType(StrEnum):
    """The condition types the operator reports (see docs/api.md for reasons)."""

    READY = "Ready"
    REDIS_REACHABLE = "RedisReachable"
    GROUPS_READY = "GroupsReady"
    SCALING = "Scaling"
    RETENTION_HELD = "RetentionHeld"
    DURABILITY_AT_RISK = "DurabilityAtRisk"
    EVICTION_RISK = "EvictionRisk"


ConditionStatus = Literal["True", "False", "Unknown"]

_STATUS_CONFIG = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class StatusModel(BaseModel):
    """Base of the status models: written by the operator, so lenient on input and mutable."""

    model_config = _STATUS_CONFIG


class Condition(StatusModel):
    """One aspect of the pipeline's state, in the shape of Kubernetes' metav1.Condition."""

    type: Annotated[str, StringConstraints(max_length=316)] = Field(
        description="Condition type: Ready, RedisReachable, GroupsReady, Scaling, RetentionHeld, "
        "DurabilityAtRisk, EvictionRisk."
    )
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    ] = Field(description="CamelCase reason for the last transition, for machines.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="What happened and what to do about it, for people."
    )
    last_transition_time: Timestamp = Field(description="When status last changed (not reason or message).")
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the spec this condition was computed from."
    )


class ServerStatus(StatusModel):
    """The Redis-protocol server the pipeline runs on, as it reports itself."""

    family: Literal["redis", "valkey"] = Field(description="`redis` or `valkey`.")
    version: Annotated[str, StringConstraints(max_length=64)] = Field(description="The server's own version.")
    maxmemory: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The server's memory limit in bytes (`maxmemory`); 0 = none."
    )
    maxmemory_policy: ShortText | None = Field(
        default=None, description="What the server does at `maxmemory` (`noeviction`, `allkeys-lru`, ...)."
    )
    appendonly: bool | None = Field(default=None, description="The server writes an append-only file.")
    appendfsync: ShortText | None = Field(
        default=None,
        description="`always`, `everysec` or `no`; unset when the operator's user may not run CONFIG GET.",
    )


class ServerFeatures(StatusModel):
    """Optional stream commands the server has, and the path taken where that gives a choice."""

    stream_commands: Annotated[list[ShortText], Field(max_length=16)] = Field(
        default_factory=list,
        description="Optional stream commands found with COMMAND INFO / COMMAND DOCS (never by version): "
        "`XAUTOCLAIM`, `XTRIM ACKED`, `XACKDEL`, `XDELEX`, `XREADGROUP CLAIM`.",
    )
    protected_trim: Literal["Planned", "ServerAcked"] | None = Field(
        default=None,
        description="How protected retention trims: `Planned` (the operator's MINID / `MAXLEN ~ LIMIT`, "
        "bounded by what every group processed) or `ServerAcked` (`XTRIM = ... ACKED`: exact trims on a "
        "server that has it). Unset when retention is off or unprotected.",
    )


class StreamStatus(StatusModel):
    """Figures of the stream (XINFO STREAM, MEMORY USAGE) and of the operator's trimming."""

    length: Annotated[int, Field(ge=0)] = Field(default=0, description="Entries in the stream (XLEN).")
    first_entry_id: ShortText | None = Field(default=None, description="ID of the oldest entry.")
    last_generated_id: ShortText | None = Field(
        default=None, description="ID of the newest entry ever added."
    )
    entries_added: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Entries ever added to the stream (Redis >= 7.0)."
    )
    memory_bytes: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Memory used by the stream key (MEMORY USAGE)."
    )
    trimmed_total: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Entries the operator's trimming has removed since the pipeline was created."
    )
    last_trim_at: Timestamp | None = Field(default=None, description="When the operator last trimmed.")


class GroupStatus(StatusModel):
    """Figures of one consumer group and its workers."""

    name: Annotated[str, StringConstraints(max_length=MAX_GROUP_NAME)] = Field(description="The group.")
    lag: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Entries not yet delivered to the group; absent when unknown."
    )
    lag_estimated: bool = Field(
        default=False,
        description="The server could not report lag (after XDEL or trimming) and it was estimated.",
    )
    pending: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Delivered, not yet acknowledged (PEL)."
    )
    backlog: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="lag + pending: the figure the group is scaled on."
    )
    consumers: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Consumers registered in the group."
    )
    oldest_pending_age: ShortText | None = Field(
        default=None,
        description="Age of the oldest pending entry (since it was added, from its ID), e.g. `2s`.",
    )
    oldest_unread_age: ShortText | None = Field(
        default=None,
        description="Age of the oldest entry the group has not read yet (since it was added, from its ID), "
        "e.g. `45s`: how far behind the group's reading is in time. Unset when nothing is unread.",
    )
    last_delivered_id: ShortText | None = Field(
        default=None,
        description="Last ID delivered to the group; a group deleted by hand is recreated here.",
    )
    entries_read: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="The group's read counter seen with lastDeliveredId; makes lag exact after recreation.",
    )
    oldest_pending_id: ShortText | None = Field(
        default=None,
        description="Smallest pending ID; a group deleted by hand is recreated just before it, so its "
        "unacknowledged entries are delivered again.",
    )
    replicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Worker pods that exist.")
    ready_replicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Worker pods that are ready.")
    desired_replicas: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Worker pods the scaling policy asks for."
    )
    last_scale_time: Timestamp | None = Field(default=None, description="When replicas were last changed.")


class DeadLetterStatus(StatusModel):
    """Figures of the dead-letter stream."""

    stream: ShortText | None = Field(default=None, description="Key of the dead-letter stream.")
    length: Annotated[int, Field(ge=0)] = Field(default=0, description="Entries in the dead-letter stream.")


class PartitionStatus(StatusModel):
    """Figures of one partition of a partitioned pipeline (spec.partitions)."""

    index: Annotated[int, Field(ge=0, le=MAX_PARTITIONS - 1)] = Field(description="The partition's number.")
    stream: ShortText = Field(description="Key of the partition's stream, e.g. `{orders:3}`.")
    slot: Annotated[int, Field(ge=0, le=16383)] = Field(description="Cluster hash slot of its keys.")
    length: Annotated[int, Field(ge=0)] = Field(default=0, description="Entries in its stream (XLEN).")
    lag: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Entries not yet delivered, summed over the groups; absent when unknown."
    )
    pending: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Delivered and not yet acknowledged, summed over the groups."
    )
    dead_letters: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Entries in its dead-letter stream (`<stream>:dlq`)."
    )
    owner: ShortText | None = Field(
        default=None,
        description="With ordering PerKey: the worker (consumer name) holding the partition's lease; "
        "absent when nobody holds it.",
    )


class StreamPipelineStatus(StatusModel):
    """The observed state, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the spec the operator last acted on."
    )
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(
        default_factory=list,
        description="Current conditions; Ready summarises the others.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    server: ServerStatus | None = Field(default=None, description="The server, as detected.")
    server_features: ServerFeatures | None = Field(
        default=None, description="The server's optional stream commands and the paths in use."
    )
    stream: StreamStatus | None = Field(default=None, description="Stream figures.")
    groups: Annotated[list[GroupStatus], Field(max_length=MAX_GROUPS)] = Field(
        default_factory=list,
        description="Per-group figures.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    dead_letter: DeadLetterStatus | None = Field(default=None, description="Dead-letter stream figures.")
    partitions: Annotated[list[PartitionStatus], Field(max_length=MAX_PARTITIONS)] | None = Field(
        default=None,
        description="Per-partition figures of a partitioned pipeline; stream, groups and deadLetter are "
        "then the partitions' sums.",
    )
    backlog: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Sum of the groups' backlogs (the Backlog column)."
    )
    workers: ShortText | None = Field(
        default=None, description="Ready worker pods / desired worker pods over all groups, e.g. `3/4`."
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if any."""
        return find_condition(self.conditions, type_)

    def summarized(self) -> StreamPipelineStatus:
        """A copy with backlog and workers recomputed from the groups (for the printer columns)."""
        backlogs = [group.backlog for group in self.groups if group.backlog is not None]
        ready = sum(group.ready_replicas for group in self.groups)
        desired = sum(group.desired_replicas for group in self.groups)
        return self.model_copy(
            update={
                "backlog": sum(backlogs) if backlogs else None,
                "workers": f"{ready}/{desired}" if self.groups else None,
            }
        )


def plain(node: Any) -> Any:
    """A deep copy of ``node`` in plain dicts and lists (kopf hands over read-only Mapping views)."""
    if isinstance(node, Mapping):
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [plain(item) for item in node]
    return node


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of this type in ``conditions``, if any."""
    return next((condition for condition in conditions if condition.type == type_), None)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of ``type_`` set; the input is not modified.

    ``lastTransitionTime`` changes only when ``status`` flips (or the condition is new): a reason or
    message update keeps the time, as Kubernetes' conventions ask. Order is kept; a new type is appended.
    """
    previous = find_condition(conditions, type_)
    transition = now if previous is None or previous.status != status else previous.last_transition_time
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if condition.type == type_ else condition for condition in conditions]
