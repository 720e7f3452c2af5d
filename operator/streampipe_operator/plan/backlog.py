"""Backlog = lag + pending, and when the server's lag figure can be trusted.

XINFO GROUPS reports ``lag`` as nil after an XDEL inside a group's unread range (verified on Valkey 9.1
and Redis 7.0), and Redis 7.0 keeps reporting a too-large lag for a group that fell behind a trim (its
read counter misses the trimmed entries; Valkey 9.1 repairs it on the next read). Reading nil as zero
would scale a busy group to zero, so :func:`lag_from_server` decides, from the stream's own figures,
whether the report stands, whether the exact value follows from the stream alone, or whether the
entries after the group's last-delivered-id must be counted (``streams.admin`` does that, with a cap).
"""

from __future__ import annotations

from pydantic import Field

from streampipe_operator.plan.frozen import Frozen
from streampipe_operator.plan.observed import GroupState, Lag, StreamState
from streampipe_worker.entry_ids import ZERO, EntryId


class Backlog(Frozen):
    """The work a group still has: entries not yet delivered plus entries delivered and not acked."""

    lag: Lag
    pending: int = Field(ge=0)

    @property
    def total(self) -> int | None:
        """lag + pending; None when the lag is unknown (never guessed as zero)."""
        if self.lag.value is None:
            return None
        return self.lag.value + self.pending

    @property
    def is_lower_bound(self) -> bool:
        """The true backlog may be larger than ``total`` (the lag count hit its cap)."""
        return self.lag.source == "lower_bound"

    def __str__(self) -> str:
        total = self.total
        if total is None:
            return f"unknown (lag unknown, {self.pending} pending)"
        prefix = ">=" if self.is_lower_bound else ""
        detail = f"lag {self.lag}" + (f" + {self.pending} pending" if self.pending else "")
        return f"{prefix}{total} ({detail})"


def group_backlog(group: GroupState) -> Backlog:
    """The backlog of one observed group."""
    return Backlog(lag=group.lag, pending=group.pending)


def lag_from_server(
    reported: int | None,
    *,
    last_delivered_id: EntryId,
    entries_read: int | None,
    stream: StreamState,
) -> Lag | None:
    """The group's lag from XINFO's report and the stream's figures, or None: "count the entries".

    Exact answers that need no report come first (they also correct a wrong report):

    - an empty stream has nothing to deliver: 0;
    - a group at or after the last entry has nothing to read: 0;
    - a group before the first entry (it started at 0, or entries were trimmed past it) has every
      entry unread: ``length``.

    A report is then kept only when it is consistent: not larger than the stream, and - when no XDEL
    happened at or after the first entry, so every entry ever removed was trimmed from before it - the
    group's read counter covers at least the removed entries plus its own last entry. Otherwise the
    caller counts (:func:`counted_lag`).
    """
    if stream.length == 0 or stream.first_entry_id is None or stream.last_entry_id is None:
        return _labelled(0, reported)
    if last_delivered_id >= stream.last_entry_id:
        return _labelled(0, reported)
    if last_delivered_id < stream.first_entry_id:
        return _labelled(stream.length, reported)
    if reported is None or reported > stream.length:
        return None
    deleted = stream.max_deleted_entry_id
    only_trimmed = deleted is None or deleted == ZERO or deleted < stream.first_entry_id
    if only_trimmed and stream.entries_added is not None and entries_read is not None:
        removed = stream.entries_added - stream.length
        # The group's last entry is at or after the first entry, so its counter includes every removed
        # entry and itself. Less than that is Redis 7.0's counter that fell behind a trim.
        if entries_read < removed + 1:
            return None
    return Lag(value=reported, source="server")


def counted_lag(count: int, cap: int) -> Lag:
    """A lag from counting the entries after last-delivered-id with ``COUNT cap``."""
    if count >= cap:
        return Lag(value=cap, source="lower_bound")
    return Lag(value=count, source="counted")


def _labelled(value: int, reported: int | None) -> Lag:
    return Lag(value=value, source="server" if reported == value else "derived")
