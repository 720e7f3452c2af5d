"""What was observed on the server, as the planners take it: a stream, its groups, their consumers.

``RedisAdmin.observe_stream`` (streams.admin) fills these from XINFO / XPENDING replies; tests build
them by hand.
They are frozen pydantic models so that the CLI and status can dump them as JSON unchanged.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from streampipe_operator.plan.frozen import Frozen
from streampipe_worker.entry_ids import EntryId

LagSource = Literal["server", "derived", "counted", "lower_bound", "unknown"]
"""Where a lag figure comes from:

- ``server``: XINFO GROUPS reported it and it is consistent with the stream;
- ``derived``: computed exactly from the stream's own figures (empty stream, group at the end, or
  group positioned before the first entry: then every entry is unread);
- ``counted``: the server reported nil (or a figure that cannot be right) and the entries after the
  group's last-delivered-id were counted;
- ``lower_bound``: counted, but the count stopped at its cap: the lag is at least ``value``;
- ``unknown``: nothing could be learned; ``value`` is None. Never read it as zero.
"""


class Lag(Frozen):
    """Entries in the stream not yet delivered to a group, with where the figure comes from."""

    value: int | None = Field(ge=0, description="None only when the source is 'unknown'")
    source: LagSource

    @model_validator(mode="after")
    def _value_matches_source(self) -> Self:
        if (self.value is None) != (self.source == "unknown"):
            raise ValueError("a lag has a value exactly when its source is not 'unknown'")
        return self

    @property
    def estimated(self) -> bool:
        """True when the figure is not the server's own report."""
        return self.source != "server"

    def __str__(self) -> str:
        if self.value is None:
            return "unknown"
        if self.source == "lower_bound":
            return f">={self.value}"
        if self.source == "counted":
            return f"{self.value} (counted)"
        return str(self.value)


class ConsumerState(Frozen):
    """One consumer of a group (XINFO CONSUMERS)."""

    name: str
    pending: int = Field(ge=0, description="Entries delivered to it and not acknowledged")
    idle: float = Field(ge=0, description="Seconds since its last attempted interaction (read or claim)")
    inactive: float | None = Field(
        default=None,
        description="Seconds since its last successful read or claim (servers >= 7.2; else None)",
    )


class GroupState(Frozen):
    """One consumer group (XINFO GROUPS + XPENDING summary), lag already made trustworthy."""

    name: str
    last_delivered_id: EntryId
    entries_read: int | None = Field(default=None, description="The group's logical read counter, if valid")
    lag: Lag = Field(description="Entries not yet delivered to the group (see backlog.Lag for its source)")
    pending: int = Field(ge=0, description="Delivered and not acknowledged (the PEL size)")
    oldest_pending_id: EntryId | None = Field(default=None, description="Smallest ID in the PEL")
    oldest_unread_id: EntryId | None = Field(
        default=None, description="The first entry after last_delivered_id; None when nothing is unread"
    )
    consumers: tuple[ConsumerState, ...] = ()


class ServerState(Frozen):
    """What the server says of its memory and persistence now (INFO, CONFIG GET), read every pass."""

    used_memory: int | None = Field(default=None, ge=0, description="INFO memory used_memory, bytes")
    maxmemory: int | None = Field(default=None, ge=0, description="INFO memory maxmemory; 0 = no limit")
    maxmemory_policy: str | None = Field(default=None, description="INFO memory maxmemory_policy")
    aof_enabled: bool | None = Field(default=None, description="INFO persistence aof_enabled")
    appendfsync: str | None = Field(
        default=None, description="CONFIG GET appendfsync: always, everysec or no; None when not readable"
    )

    @property
    def evicts_any_key(self) -> bool:
        """An ``allkeys-*`` policy may evict any key, streams included (``volatile-*`` only keys with
        a TTL, which streams do not have)."""
        return (self.maxmemory_policy or "").startswith("allkeys-")


class StreamState(Frozen):
    """One stream (XINFO STREAM). ``first_entry_id`` / ``last_entry_id`` are None when it is empty."""

    length: int = Field(ge=0)
    first_entry_id: EntryId | None = None
    last_entry_id: EntryId | None = None
    last_generated_id: EntryId = Field(description="Greatest ID ever added (survives deletion of that entry)")
    entries_added: int | None = Field(default=None, description="Entries ever added (Redis >= 7.0)")
    max_deleted_entry_id: EntryId | None = Field(default=None, description="Greatest ID removed by XDEL")


class StreamObservation(Frozen):
    """One look at a pipeline's keys on the server."""

    stream_key: str
    exists: bool = Field(description="False when the stream key is missing (nothing observed about it)")
    stream: StreamState | None = None
    groups: tuple[GroupState, ...] = ()
    memory_bytes: int | None = Field(default=None, description="MEMORY USAGE of the stream key")
    dead_letter_key: str | None = None
    dead_letter_length: int | None = None

    def group(self, name: str) -> GroupState | None:
        return next((g for g in self.groups if g.name == name), None)
