"""Retention: which XTRIM calls keep a stream within its policy without dropping unprocessed entries.

The policy asks for two things: at most ``max_length`` entries (XTRIM MAXLEN) and nothing older than
``max_age`` (XTRIM MINID ``<now - max_age>-0``; auto IDs start with their millisecond timestamp).

**Protection** (``protect_unprocessed``). An entry is unprocessed while some group has it pending
(delivered, not acknowledged) or has not read it yet (after its last-delivered-id). Every group thus
has a bound - its oldest pending ID, or else the ID just after its last-delivered-id - and no trim
may remove an entry at or after the smallest bound ``B`` of all groups.

- **Age** is an ID bound already, so protecting it is a minimum: ``MINID min(cutoff, B)``.
- **Length cannot be protected as MAXLEN alone.** ``MAXLEN n`` removes the oldest ``length - n``
  entries *counted when the command runs*; entries added between our observation and the XTRIM make
  it remove more, and those extra removals may pass ``B``. Converting it to an exact MINID would need
  the ID of the entry at position ``length - n``, which costs reading that many entries. Instead we
  count the entries before ``B`` (call it ``P``) and send ``MAXLEN ~ n LIMIT P``: the server removes
  the oldest entries, whole nodes at a time, never more than ``P`` in total, and the oldest ``P``
  entries are all before ``B`` whatever is added meanwhile. (``LIMIT`` is a hard cap in Redis and
  Valkey: a node that would exceed it is not removed.) ``LIMIT`` needs ``~``, so *protected length
  trimming is always approximate*; ``approximate: false`` is honoured for age and for unprotected
  length trimming. Length trimming runs before age trimming, because an age trim first would remove
  some of the ``P`` entries and let the limit reach past ``B``.
- Counting ``P`` is usually free: when ``B`` is a group's first unread entry, the entries from ``B``
  on are exactly that group's lag, so ``P = length - lag``. When ``B`` is a pending entry the planner
  asks for one bounded count (the entries between it and that group's last-delivered-id: the
  in-flight window, small in a healthy pipeline), and only if that does not settle it, for a count
  of the entries before ``B``, capped by ``count_cap``. See :class:`CountRequest`.
- Servers with ``XTRIM ... ACKED`` (Redis >= 8.2, detected) protect pending and unread entries
  themselves, atomically. The planner sends ``ACKED`` only for **exact** trimming
  (``approximate: false``), and only when the server knows every group's position (no group is being
  recreated). Two facts measured on Redis 8.2.3 decide this (``make bench``, "Redis 8.2 paths"):
  ``XTRIM ... ~ ... ACKED`` removes nothing at all, so approximate trims cannot use it; and an exact
  ``ACKED`` trim checks every entry against every group, 7-15x the server CPU per removed entry of
  the planned ``MAXLEN ~ n LIMIT P`` (whole nodes). So approximate trimming (the default) stays
  planned on every server, and exact protected length trimming, which the planned path cannot do,
  becomes possible where ``ACKED`` exists.

The plan also reports what protection **held back**: how many entries the policy wanted removed
that stay because some group has not processed them, and which groups hold them.

A trim another client makes at the same time (a producer's ``XADD ... MAXLEN``) is outside all of
this: such a producer drops unprocessed entries on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

from pydantic import Field, model_validator

from streampipe_operator.plan.frozen import Frozen
from streampipe_operator.plan.observed import GroupState, StreamState
from streampipe_worker.entry_ids import ZERO, EntryId

Target = Literal["stream", "dead_letter"]
# How protected trims run: the operator's proven plan, or the server's XTRIM = ... ACKED.
ProtectionPath = Literal["Planned", "ServerAcked"]


class RetentionPolicy(Frozen):
    """The retention settings (the handler maps ``spec.retention`` onto this)."""

    max_length: int | None = Field(default=None, ge=0)
    max_age: float | None = Field(default=None, gt=0, description="Seconds")
    approximate: bool = True
    protect_unprocessed: bool = True


class CountRequest(Frozen):
    """Count the entries with ``start <= ID <= end`` (None = stream edge), stopping at ``cap``."""

    start: EntryId | None = None
    end: EntryId | None = None
    cap: int = Field(ge=1)


class EntryCount(Frozen):
    """A number of entries; ``exact=False`` means "at least ``value``" (a count that hit its cap)."""

    value: int = Field(ge=0)
    exact: bool = True

    def __str__(self) -> str:
        return str(self.value) if self.exact else f"at least {self.value}"


class TrimAction(Frozen):
    """One XTRIM: ``MAXLEN [~|=] max_length`` or ``MINID [~|=] min_id``, maybe ``LIMIT`` and ``ACKED``.

    ``limit`` bounds the entries removed in total; ``streams.admin`` spreads it over several calls so
    that no single call blocks the server for long.
    """

    target: Target = "stream"
    max_length: int | None = Field(default=None, ge=0)
    min_id: EntryId | None = None
    approximate: bool = True
    limit: int | None = Field(default=None, ge=1)
    acked: bool = False
    reason: str

    @model_validator(mode="after")
    def _one_strategy(self) -> Self:
        if (self.max_length is None) == (self.min_id is None):
            raise ValueError("a trim has exactly one of max_length (MAXLEN) and min_id (MINID)")
        if self.limit is not None and not self.approximate:
            raise ValueError("LIMIT needs approximate (~) trimming")
        return self

    @property
    def strategy(self) -> Literal["MAXLEN", "MINID"]:
        return "MAXLEN" if self.max_length is not None else "MINID"

    @property
    def threshold(self) -> str:
        return str(self.max_length) if self.max_length is not None else str(self.min_id)


class ProtectionBound(Frozen):
    """Entries at or after ``id`` are unprocessed for ``group``: pending there, or not yet read."""

    group: str
    id: EntryId
    cause: Literal["pending", "unread"]

    def describe(self) -> str:
        if self.cause == "pending":
            return f"group {self.group} has unacknowledged entries from {self.id}"
        return f"group {self.group} has not read past {self.id.predecessor() if self.id > ZERO else ZERO}"


class RetentionHeld(Frozen):
    """Entries the policy wanted removed that stay because groups have not processed them."""

    entries: EntryCount
    holders: tuple[ProtectionBound, ...]

    @property
    def message(self) -> str:
        """For the RetentionHeld condition."""
        how_many = f"{self.entries} entries"
        who = "; ".join(bound.describe() for bound in self.holders)
        return f"retention is holding back {how_many} that the policy would remove: {who}"


class RetentionPlan(Frozen):
    """Trims to run in order, what protection held back, and counts that would settle more.

    When ``missing_counts`` is not empty, count them (``RedisAdmin.count_entries``) and plan again
    with the results; the plan without them is already safe, only less complete.
    """

    actions: tuple[TrimAction, ...] = ()
    held: RetentionHeld | None = None
    missing_counts: tuple[CountRequest, ...] = ()


def protection_bounds(
    groups: Sequence[GroupState], recreating: Mapping[str, EntryId] | None = None
) -> tuple[ProtectionBound, ...]:
    """Each group's bound, smallest first. ``recreating``: groups about to be (re)created at an ID."""
    bounds: list[ProtectionBound] = []
    for group in groups:
        if group.pending > 0:
            # A PEL without a known smallest ID protects everything: better no trim than a wrong one.
            oldest = group.oldest_pending_id if group.oldest_pending_id is not None else ZERO
            bounds.append(ProtectionBound(group=group.name, id=oldest, cause="pending"))
        else:
            bounds.append(
                ProtectionBound(group=group.name, id=group.last_delivered_id.successor(), cause="unread")
            )
    for name, position in (recreating or {}).items():
        bounds.append(ProtectionBound(group=name, id=position.successor(), cause="unread"))
    return tuple(sorted(bounds, key=lambda bound: (bound.id, bound.group)))


def plan_retention(
    policy: RetentionPolicy,
    stream: StreamState,
    groups: Sequence[GroupState],
    *,
    now: float,
    xtrim_acked: bool = False,
    counts: Mapping[CountRequest, EntryCount] | None = None,
    recreating: Mapping[str, EntryId] | None = None,
    count_cap: int = 10_000,
) -> RetentionPlan:
    """The trims for one retention pass at ``now`` (Unix seconds). Pure; see the module docstring."""
    first, last = stream.first_entry_id, stream.last_entry_id
    if stream.length == 0 or first is None or last is None:
        return RetentionPlan()
    cutoff = EntryId.at_time(now - policy.max_age) if policy.max_age is not None else None
    age_wanted = cutoff is not None and first < cutoff
    max_length = policy.max_length
    excess = stream.length - max_length if max_length is not None and stream.length > max_length else 0
    if not age_wanted and not excess:
        return RetentionPlan()

    bounds = protection_bounds(groups, recreating) if policy.protect_unprocessed else ()
    if not bounds:
        return RetentionPlan(actions=_unprotected(policy, cutoff if age_wanted else None, excess))
    server_protects = protection_path(policy, xtrim_acked=xtrim_acked, recreating=recreating) == "ServerAcked"

    counter = _Counter(stream=stream, groups=groups, known=counts or {}, cap=count_cap)
    bound = bounds[0]
    actions: list[TrimAction] = []
    held_parts: list[EntryCount | None] = []
    holders: dict[str, ProtectionBound] = {}

    if excess and max_length is not None:
        action, held_by_length = counter.protected_length(
            bound,
            max_length=max_length,
            excess=excess,
            xtrim_acked=server_protects,
            approximate=policy.approximate,
        )
        actions.extend([action] if action else [])
        held_parts.append(held_by_length)
        if held_by_length.value > 0 or not held_by_length.exact:
            holders[bound.group] = bound

    if age_wanted and cutoff is not None:
        action, held_by_age = counter.protected_age(bound, cutoff, policy=policy, xtrim_acked=server_protects)
        actions.extend([action] if action else [])
        held_parts.append(held_by_age)
        if held_by_age is None or held_by_age.value > 0:
            holders.update(
                {each.group: each for each in bounds if each.id < cutoff and each.group not in holders}
            )

    held = None
    entries = _combined(held_parts)
    if entries.value > 0:
        held = RetentionHeld(
            entries=entries, holders=tuple(sorted(holders.values(), key=lambda b: (b.id, b.group)))
        )
    return RetentionPlan(
        actions=tuple(actions),
        held=held,
        missing_counts=tuple(dict.fromkeys(counter.missing)),
    )


def protection_path(
    policy: RetentionPolicy, *, xtrim_acked: bool, recreating: Mapping[str, EntryId] | None = None
) -> ProtectionPath:
    """How protected trims run: ``ServerAcked`` (``XTRIM = ... ACKED``) for exact trimming on a server
    that has it and knows every group's position, else ``Planned`` (see the module docstring)."""
    if xtrim_acked and policy.protect_unprocessed and not policy.approximate and not recreating:
        return "ServerAcked"
    return "Planned"


def plan_dead_letter_trim(
    length: int, max_length: int | None, *, approximate: bool = True
) -> TrimAction | None:
    """The dead-letter stream is trimmed to its own ``maxLength``; nothing consumes it as a group."""
    if max_length is None or length <= max_length:
        return None
    return TrimAction(
        target="dead_letter",
        max_length=max_length,
        approximate=approximate,
        reason=f"dead-letter stream has {length} entries > maxLength {max_length}",
    )


@dataclass
class _Counter:
    """The counts one planning pass has, and those it asks for."""

    stream: StreamState
    groups: Sequence[GroupState]
    known: Mapping[CountRequest, EntryCount]
    cap: int
    missing: list[CountRequest] = field(default_factory=list)

    def count(self, request: CountRequest) -> EntryCount | None:
        found = self.known.get(request)
        if found is None:
            self.missing.append(request)
        return found

    def protected_length(
        self, bound: ProtectionBound, *, max_length: int, excess: int, xtrim_acked: bool, approximate: bool
    ) -> tuple[TrimAction | None, EntryCount]:
        """The length trim that stays before ``bound``, and the entries it holds back."""
        reason = f"stream has {self.stream.length} entries > maxLength {max_length}"
        asked_before = len(self.missing)
        exact_from_bound, at_least_from_bound = self.entries_from_bound(bound)
        held_at_least = EntryCount(value=max(0, at_least_from_bound - max_length), exact=False)

        before_bound: EntryCount | None = None
        held = held_at_least
        if exact_from_bound is not None:
            # The stream's length is read before the groups and the counts (separate round trips), so
            # entries added in between make the count from the bound larger than the length: then fewer
            # entries are known to lie before the bound, never more (the trim stays short of it).
            before_bound = EntryCount(value=max(0, self.stream.length - exact_from_bound))
            held = EntryCount(value=max(0, exact_from_bound - max_length))
        elif len(self.missing) == asked_before:
            # The entries from the bound on could not be settled: count those before it instead.
            # Only min(that, excess) matters, so the count stops at the excess (or the cost cap).
            cap = min(excess, self.cap)
            before_bound = self.count(CountRequest(end=bound.id.predecessor(), cap=cap))
            if before_bound is not None and before_bound.value < cap:
                held = EntryCount(value=max(0, excess - before_bound.value))
            elif before_bound is not None and cap == excess:
                held = EntryCount(value=0)

        if xtrim_acked:
            # The server skips entries a group has not acknowledged: the policy goes as it is, exact
            # (an approximate ACKED trim removes nothing on Redis 8.2).
            return TrimAction(max_length=max_length, approximate=False, acked=True, reason=reason), held
        if before_bound is None or before_bound.value == 0:
            return None, held
        limit = before_bound.value
        reason += f"; at most {limit} entries, all before {bound.id} (protected from there on)"
        return TrimAction(max_length=max_length, approximate=True, limit=limit, reason=reason), held

    def protected_age(
        self, bound: ProtectionBound, cutoff: EntryId, *, policy: RetentionPolicy, xtrim_acked: bool
    ) -> tuple[TrimAction | None, EntryCount | None]:
        """``MINID min(cutoff, bound)``, and the entries it holds back (between bound and cutoff)."""
        target = min(cutoff, bound.id)
        action = None
        if self.stream.first_entry_id is not None and target > self.stream.first_entry_id:
            action = TrimAction(
                min_id=target,
                approximate=policy.approximate and not xtrim_acked,
                acked=xtrim_acked,
                reason=_age_reason(policy, cutoff, target),
            )
        if bound.id >= cutoff:
            return action, EntryCount(value=0)
        return action, self.count(CountRequest(start=bound.id, end=cutoff.predecessor(), cap=self.cap))

    def entries_from_bound(self, bound: ProtectionBound) -> tuple[int | None, int]:
        """(the exact number of entries at or after ``bound``, or None; a lower bound of it)."""
        first, last = self.stream.first_entry_id, self.stream.last_entry_id
        if first is None or last is None or bound.id > last:
            return 0, 0
        if bound.id <= first:
            return self.stream.length, self.stream.length
        # Every group's unread entries come after its last-delivered-id, which is at or after the bound.
        at_least = max((g.lag.value or 0 for g in self.groups), default=0)
        holder = next((g for g in self.groups if g.name == bound.group), None)
        exact_lag = holder is not None and holder.lag.value is not None and holder.lag.source != "lower_bound"
        if holder is None or holder.lag.value is None or not exact_lag:
            return None, at_least
        lag = holder.lag.value
        if bound.cause == "unread":
            return lag, max(at_least, lag)
        in_flight = self.count(CountRequest(start=bound.id, end=holder.last_delivered_id, cap=self.cap))
        if in_flight is None or not in_flight.exact:
            seen = 0 if in_flight is None else in_flight.value
            return None, max(at_least, seen + lag)
        return in_flight.value + lag, max(at_least, in_flight.value + lag)


def _combined(parts: Sequence[EntryCount | None]) -> EntryCount:
    """Held entries of the age and length cuts: both are prefixes of the stream cut at the same bound,
    so the larger count. A count not made yet (None) makes the result a lower bound."""
    present = [part for part in parts if part is not None]
    return EntryCount(
        value=max((p.value for p in present), default=0),
        exact=len(present) == len(parts) and all(p.exact for p in present),
    )


def _unprotected(policy: RetentionPolicy, cutoff: EntryId | None, excess: int) -> tuple[TrimAction, ...]:
    actions: list[TrimAction] = []
    if excess and policy.max_length is not None:
        actions.append(
            TrimAction(
                max_length=policy.max_length,
                approximate=policy.approximate,
                reason=f"stream has {excess} entries over maxLength {policy.max_length}",
            )
        )
    if cutoff is not None:
        actions.append(
            TrimAction(
                min_id=cutoff, approximate=policy.approximate, reason=_age_reason(policy, cutoff, cutoff)
            )
        )
    return tuple(actions)


def _age_reason(policy: RetentionPolicy, cutoff: EntryId, target: EntryId) -> str:
    reason = f"entries older than maxAge {policy.max_age:g}s (before {cutoff})"
    if target < cutoff:
        reason += f"; only those before {target} (protected from there on)"
    return reason


@dataclass
class RetentionOutcome:
    """What a retention pass found: what protection held back (retention runs every ``interval``)."""

    held: RetentionHeld | None = None
    protected: bool = True
    path: ProtectionPath | None = None  # None: nothing to protect (protection off)
