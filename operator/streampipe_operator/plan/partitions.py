"""A partitioned pipeline seen as one: the partitions' observations added up (docs/partitions.md).

Housekeeping runs groups, retention and consumer cleanup on each partition's stream; scaling and the
pipeline's status take the sum, :func:`merge_observations`:

- lengths, pending counts, dead letters and memory add up;
- a group's lag is the sum of its partitions' lags, and only as trustworthy as the least trustworthy
  of them: one unknown partition makes the whole lag unknown (never read as zero), one lower bound
  makes the sum a lower bound;
- a group counts as present only when it exists on every partition (a partition without it has an
  unknown backlog, and housekeeping creates it there);
- oldest IDs are the minimum over the partitions: entry IDs start with their millisecond time, so the
  minimum is the oldest entry of the pipeline, which is what the ages in status are computed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from streampipe_operator.plan.observed import (
    ConsumerState,
    GroupState,
    Lag,
    LagSource,
    StreamObservation,
    StreamState,
)
from streampipe_worker.entry_ids import EntryId

# From most to least trustworthy: a sum is as trustworthy as its worst part.
_LAG_TRUST: tuple[LagSource, ...] = ("server", "derived", "counted", "lower_bound", "unknown")

T = TypeVar("T", int, float, EntryId)


def _least(values: Iterable[T | None]) -> T | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def _greatest(values: Iterable[T | None]) -> T | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _sum_all(values: Sequence[int | None]) -> int | None:
    """The sum when every part is known, else None."""
    return None if any(value is None for value in values) else sum(value or 0 for value in values)


def merge_lags(lags: Sequence[Lag]) -> Lag:
    """The lag of a group over partitions: the sum, with the least trustworthy source."""
    source: LagSource = max((lag.source for lag in lags), key=_LAG_TRUST.index, default="derived")
    if source == "unknown":
        return Lag(value=None, source="unknown")
    return Lag(value=sum(lag.value or 0 for lag in lags), source=source)


def merge_streams(states: Sequence[StreamState]) -> StreamState:
    """The partitions' streams as one: lengths and counters add up, IDs span them all."""
    return StreamState(
        length=sum(state.length for state in states),
        first_entry_id=_least(state.first_entry_id for state in states),
        last_entry_id=_greatest(state.last_entry_id for state in states),
        last_generated_id=max(state.last_generated_id for state in states),
        entries_added=_sum_all([state.entries_added for state in states]),
        max_deleted_entry_id=_greatest(state.max_deleted_entry_id for state in states),
    )


def merge_consumers(groups: Sequence[GroupState]) -> tuple[ConsumerState, ...]:
    """A consumer's figures over partitions: what it holds adds up, its idle time is its least."""
    by_name: dict[str, list[ConsumerState]] = {}
    for group in groups:
        for consumer in group.consumers:
            by_name.setdefault(consumer.name, []).append(consumer)
    return tuple(
        ConsumerState(
            name=name,
            pending=sum(c.pending for c in states),
            idle=min(c.idle for c in states),
            inactive=_least(c.inactive for c in states),
        )
        for name, states in sorted(by_name.items())
    )


def merge_groups(groups: Sequence[GroupState]) -> GroupState:
    """One group over all partitions (every element is the same group on another partition)."""
    return GroupState(
        name=groups[0].name,
        last_delivered_id=max(group.last_delivered_id for group in groups),
        entries_read=_sum_all([group.entries_read for group in groups]),
        lag=merge_lags([group.lag for group in groups]),
        pending=sum(group.pending for group in groups),
        oldest_pending_id=_least(group.oldest_pending_id for group in groups if group.pending),
        oldest_unread_id=_least(group.oldest_unread_id for group in groups),
        consumers=merge_consumers(groups),
    )


def merge_observations(base: str, partitions: Sequence[StreamObservation]) -> StreamObservation:
    """The observation of a pipeline whose partitions were observed one by one (see the module).

    ``stream_key`` becomes ``base``; the pipeline exists when any partition does.
    """
    existing = [p for p in partitions if p.exists and p.stream is not None]
    names = [group.name for group in partitions[0].groups] if partitions else []
    groups = []
    for name in names:
        parts = [p.group(name) for p in partitions]
        if all(part is not None for part in parts):
            groups.append(merge_groups([part for part in parts if part is not None]))
    return StreamObservation(
        stream_key=base,
        exists=bool(existing),
        stream=merge_streams([p.stream for p in existing if p.stream is not None]) if existing else None,
        groups=tuple(groups),
        memory_bytes=_sum_all([p.memory_bytes for p in partitions]) if partitions else None,
        dead_letter_key=None,
        dead_letter_length=_sum_all([p.dead_letter_length for p in partitions]) if partitions else None,
    )
