"""Retention plans: unprotected policy, protection bounds, MAXLEN made safe, held-back reports."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streampipe_operator.plan.observed import GroupState, Lag, StreamState
from streampipe_operator.plan.retention import (
    CountRequest,
    EntryCount,
    ProtectionBound,
    RetentionPlan,
    RetentionPolicy,
    TrimAction,
    plan_dead_letter_trim,
    plan_retention,
    protection_bounds,
)
from streampipe_worker.entry_ids import ZERO, EntryId

# The stream in the tables: 100 entries with IDs 100-0 .. 199-0 (one per millisecond).
STREAM = StreamState(
    length=100,
    first_entry_id=EntryId(100),
    last_entry_id=EntryId(199),
    last_generated_id=EntryId(199),
    entries_added=100,
)
NOW = 0.2  # Unix seconds: 200 ms, so maxAge 0.05 s cuts at 150-0 (entries 100..149 are "old").
BOTH = RetentionPolicy(max_length=60, max_age=0.05)

EXACT = BOTH.model_copy(update={"approximate": False})


def group(
    name: str,
    last: int,
    lag: int | None,
    *,
    pending: int = 0,
    oldest: int | None = None,
    source: str = "server",
) -> GroupState:
    return GroupState(
        name=name,
        last_delivered_id=EntryId(last),
        lag=Lag.model_validate({"value": lag, "source": "unknown" if lag is None else source}),
        pending=pending,
        oldest_pending_id=EntryId(oldest) if oldest is not None else None,
    )


def maxlen(n: int, limit: int | None = None, *, acked: bool = False, approximate: bool = True) -> tuple:
    return ("MAXLEN", str(n), approximate, limit, acked)


def minid(ms: int, seq: int = 0, *, acked: bool = False, approximate: bool = True) -> tuple:
    return ("MINID", str(EntryId(ms, seq)), approximate, None, acked)


def shape(action: TrimAction) -> tuple:
    return (action.strategy, action.threshold, action.approximate, action.limit, action.acked)


def age_count(start: EntryId, cap: int = 10_000) -> CountRequest:
    return CountRequest(start=start, end=EntryId(150).predecessor(), cap=cap)


@dataclass(frozen=True)
class Case:
    groups: tuple[GroupState, ...] = ()
    policy: RetentionPolicy = BOTH
    counts: dict[CountRequest, EntryCount] = field(default_factory=dict)
    acked: bool = False
    recreating: dict[str, EntryId] = field(default_factory=dict)
    cap: int = 10_000


IN_FLIGHT = CountRequest(start=EntryId(120), end=EntryId(180), cap=10_000)
CASES = [
    pytest.param(
        Case(policy=RetentionPolicy(max_length=60, max_age=0.05, protect_unprocessed=False)),
        [maxlen(60), minid(150)],
        None,
        [],
        id="unprotected-policy-as-is",
    ),
    pytest.param(Case(policy=RetentionPolicy(max_length=200)), [], None, [], id="within-policy"),
    pytest.param(Case(), [maxlen(60), minid(150)], None, [], id="no-groups-nothing-to-protect"),
    pytest.param(
        Case(groups=(group("billing", 199, 0),)),
        [maxlen(60, limit=100), minid(150)],
        None,
        [],
        id="caught-up-group-limit-covers-all",
    ),
    pytest.param(
        Case(groups=(group("billing", 129, 70),)),
        [maxlen(60, limit=30), minid(129, 1)],
        EntryCount(value=10, exact=False),
        [age_count(EntryId(129, 1))],
        id="unread-bound-first-pass",
    ),
    pytest.param(
        Case(groups=(group("billing", 129, 70),), counts={age_count(EntryId(129, 1)): EntryCount(value=20)}),
        [maxlen(60, limit=30), minid(129, 1)],
        EntryCount(value=20),
        [],
        id="unread-bound-counted",
    ),
    pytest.param(
        Case(groups=(group("billing", 180, 19, pending=5, oldest=120),)),
        [minid(120)],
        EntryCount(value=0, exact=False),
        [IN_FLIGHT, age_count(EntryId(120))],
        id="pending-bound-asks-for-in-flight-count",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 180, 19, pending=5, oldest=120),),
            counts={IN_FLIGHT: EntryCount(value=61), age_count(EntryId(120)): EntryCount(value=30)},
        ),
        [maxlen(60, limit=20), minid(120)],
        EntryCount(value=30),
        [],
        id="pending-bound-counted",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 180, 19, pending=5, oldest=120),),
            counts={
                CountRequest(start=EntryId(120), end=EntryId(180), cap=10): EntryCount(value=10, exact=False),
                CountRequest(end=EntryId(120).predecessor(), cap=10): EntryCount(value=10, exact=False),
                age_count(EntryId(120), cap=10): EntryCount(value=10, exact=False),
            },
            cap=10,
        ),
        [maxlen(60, limit=10), minid(120)],
        EntryCount(value=10, exact=False),
        [],
        id="capped-counts-trim-what-is-proven",
    ),
    pytest.param(
        Case(groups=(group("audit", 0, 100, source="derived"),)),
        [],
        EntryCount(value=40, exact=False),
        [age_count(EntryId(0, 1))],
        id="group-from-start-protects-everything",
    ),
    pytest.param(
        Case(groups=(group("billing", 129, 70),), acked=True, policy=EXACT),
        [maxlen(60, acked=True, approximate=False), minid(129, 1, acked=True, approximate=False)],
        EntryCount(value=10, exact=False),
        [age_count(EntryId(129, 1))],
        id="xtrim-acked-lets-the-server-protect-exact-trims",
    ),
    pytest.param(
        Case(groups=(group("billing", 129, 70),), acked=True),
        [maxlen(60, limit=30), minid(129, 1)],
        EntryCount(value=10, exact=False),
        [age_count(EntryId(129, 1))],
        id="approximate-trims-stay-planned-with-xtrim-acked",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 199, 0),),
            recreating={"audit": EntryId(109)},
            acked=True,
            policy=EXACT,
            counts={
                CountRequest(end=EntryId(109), cap=40): EntryCount(value=10),
                age_count(EntryId(109, 1)): EntryCount(value=40),
            },
        ),
        [maxlen(60, limit=10), minid(109, 1, approximate=False)],
        EntryCount(value=40),
        [],
        id="a-group-being-recreated-is-unknown-to-the-server-so-the-plan-protects",
    ),
    pytest.param(
        Case(groups=(group("billing", 199, 0),), recreating={"audit": EntryId(109)}),
        [minid(109, 1)],
        None,
        [CountRequest(end=EntryId(109), cap=40), age_count(EntryId(109, 1))],
        id="group-being-recreated-protects-its-position",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 199, 0),),
            recreating={"audit": EntryId(109)},
            counts={
                CountRequest(end=EntryId(109), cap=40): EntryCount(value=10),
                age_count(EntryId(109, 1)): EntryCount(value=40),
            },
        ),
        [maxlen(60, limit=10), minid(109, 1)],
        EntryCount(value=40),
        [],
        id="group-being-recreated-counted",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 129, None),),
            counts={CountRequest(end=EntryId(129), cap=40): EntryCount(value=30)},
            policy=RetentionPolicy(max_length=60),
        ),
        [maxlen(60, limit=30)],
        EntryCount(value=10),
        [],
        id="unknown-lag-counted-from-the-head",
    ),
    pytest.param(
        Case(
            groups=(group("billing", 129, 70),),
            policy=RetentionPolicy(max_length=60, max_age=0.05, approximate=False),
        ),
        [maxlen(60, limit=30), minid(129, 1, approximate=False)],
        EntryCount(value=10, exact=False),
        [age_count(EntryId(129, 1))],
        id="protected-length-is-always-approximate",
    ),
    pytest.param(
        Case(groups=(group("fast", 199, 0), group("slow", 139, 60), group("idle", 189, 10))),
        [maxlen(60, limit=40), minid(139, 1)],
        EntryCount(value=0, exact=False),
        [age_count(EntryId(139, 1))],
        id="slowest-group-binds",
    ),
]


@pytest.mark.parametrize(("case", "actions", "held", "missing"), CASES)
def test_plan_retention(
    case: Case, actions: list[tuple], held: EntryCount | None, missing: list[CountRequest]
) -> None:
    plan = plan_retention(
        case.policy,
        STREAM,
        case.groups,
        now=NOW,
        xtrim_acked=case.acked,
        counts=case.counts,
        recreating=case.recreating,
        count_cap=case.cap,
    )
    assert [shape(a) for a in plan.actions] == actions
    assert (plan.held.entries if plan.held else None) == (held if held and held.value > 0 else None)
    assert list(plan.missing_counts) == missing


def test_held_message_names_groups_and_count() -> None:
    plan = plan_retention(
        BOTH,
        STREAM,
        [group("billing", 180, 19, pending=5, oldest=120), group("audit", 140, 59)],
        now=NOW,
        counts={
            IN_FLIGHT: EntryCount(value=61),
            age_count(EntryId(120)): EntryCount(value=30),
        },
    )
    assert plan.held is not None
    assert plan.held.message == (
        "retention is holding back 30 entries that the policy would remove: group billing has "
        "unacknowledged entries from 120-0; group audit has not read past 140-0"
    )
    assert [a.reason for a in plan.actions] == [
        "stream has 100 entries > maxLength 60; at most 20 entries, all before 120-0 "
        "(protected from there on)",
        "entries older than maxAge 0.05s (before 150-0); only those before 120-0 (protected from there on)",
    ]


def test_groups_read_after_the_stream_grew_hold_the_length_trim() -> None:
    """Groups read after the stream grew (XINFO STREAM is read before XINFO GROUPS and the counts, so
    the entries from the bound on can outnumber the length) hold the length trim: the plan knows of
    nothing before the bound and trims nothing by length, never a negative count."""
    late = group("billing", 210, 15, pending=5, oldest=120)
    in_flight = CountRequest(start=EntryId(120), end=EntryId(210), cap=10_000)
    plan = plan_retention(
        RetentionPolicy(max_length=60), STREAM, [late], now=NOW, counts={in_flight: EntryCount(value=91)}
    )
    assert plan.actions == ()
    assert plan.held is not None
    assert plan.held.entries == EntryCount(value=46)


def test_empty_stream_needs_nothing() -> None:
    empty = StreamState(length=0, last_generated_id=EntryId(5), entries_added=5)
    assert plan_retention(BOTH, empty, [group("g", 1, 0)], now=NOW) == RetentionPlan()


def test_protection_bounds_smallest_first() -> None:
    bounds = protection_bounds(
        [group("a", 150, 49), group("b", 190, 9, pending=2, oldest=120), group("c", 100, 99, pending=1)],
        {"d": EntryId(130)},
    )
    assert bounds == (
        ProtectionBound(group="c", id=ZERO, cause="pending"),  # PEL with unknown smallest ID: protect all
        ProtectionBound(group="b", id=EntryId(120), cause="pending"),
        ProtectionBound(group="d", id=EntryId(130, 1), cause="unread"),
        ProtectionBound(group="a", id=EntryId(150, 1), cause="unread"),
    )


@pytest.mark.parametrize(
    ("length", "max_length", "expected"),
    [
        pytest.param(10, None, None, id="no-limit"),
        pytest.param(10, 10, None, id="at-limit"),
        pytest.param(11, 10, ("MAXLEN", "10", True, None, False), id="over"),
    ],
)
def test_dead_letter_trim(length: int, max_length: int | None, expected: tuple | None) -> None:
    action = plan_dead_letter_trim(length, max_length)
    assert (shape(action) if action else None) == expected
    if action:
        assert action.target == "dead_letter"


def test_trim_action_needs_one_strategy_and_approximate_limit() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        TrimAction(reason="x")
    with pytest.raises(ValidationError, match="exactly one"):
        TrimAction(max_length=1, min_id=ZERO, reason="x")
    with pytest.raises(ValidationError, match="LIMIT needs approximate"):
        TrimAction(max_length=1, limit=5, approximate=False, reason="x")


# --- Property: against a model of the server, with entries added between planning and trimming -----


@dataclass
class ModelStream:
    ids: list[int]  # entry IDs as milliseconds (seq 0), ascending
    added: int

    def count(self, request: CountRequest) -> EntryCount:
        lo = 0 if request.start is None else bisect.bisect_left(self.ids, request.start.ms)
        hi = len(self.ids) if request.end is None else bisect.bisect_right(self.ids, request.end.ms)
        found = max(0, hi - lo)
        return EntryCount(value=min(found, request.cap), exact=found < request.cap)

    def state(self) -> StreamState:
        return StreamState(
            length=len(self.ids),
            first_entry_id=EntryId(self.ids[0]) if self.ids else None,
            last_entry_id=EntryId(self.ids[-1]) if self.ids else None,
            last_generated_id=EntryId(self.ids[-1] if self.ids else 0),
            entries_added=self.added,
        )

    def apply(self, action: TrimAction) -> None:
        # Exact trimming within LIMIT: the server's approximate trim removes a prefix of this.
        if action.max_length is not None:
            drop = max(0, len(self.ids) - action.max_length)
            if action.limit is not None:
                drop = min(drop, action.limit)
            del self.ids[:drop]
        else:
            assert action.min_id is not None
            del self.ids[: bisect.bisect_left(self.ids, action.min_id.ms)]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 60),
    group_specs=st.lists(
        st.tuples(st.integers(-1, 60), st.lists(st.integers(0, 60), max_size=5)), min_size=1, max_size=3
    ),
    max_length=st.one_of(st.none(), st.integers(0, 60)),
    max_age_ms=st.one_of(st.none(), st.integers(1, 80)),
    added_meanwhile=st.integers(0, 100),
    cap=st.sampled_from([3, 10_000]),
)
def test_protected_trims_never_drop_unprocessed_entries(  # noqa: PLR0917 - Hypothesis passes them by name
    size: int,
    group_specs: list[tuple[int, list[int]]],
    max_length: int | None,
    max_age_ms: int | None,
    added_meanwhile: int,
    cap: int,
) -> None:
    model = ModelStream(ids=list(range(1000, 1000 + size)), added=size)
    groups = []
    protected: set[int] = set()
    for n, (position, pending_positions) in enumerate(group_specs):
        last = 999 if position < 0 else 1000 + min(position, size - 1)
        pending = sorted({1000 + p for p in pending_positions if 1000 + p <= last})
        unread = [i for i in model.ids if i > last]
        protected |= set(pending) | set(unread)
        groups.append(
            GroupState(
                name=f"g{n}",
                last_delivered_id=EntryId(last),
                lag=Lag(value=len(unread), source="server"),
                pending=len(pending),
                oldest_pending_id=EntryId(pending[0]) if pending else None,
            )
        )
    policy = RetentionPolicy(max_length=max_length, max_age=max_age_ms / 1000 if max_age_ms else None)
    now = (1000 + size) / 1000

    counts: dict[CountRequest, EntryCount] = {}
    plan = plan_retention(policy, model.state(), groups, now=now, counts=counts, count_cap=cap)
    for _ in range(3):
        if not plan.missing_counts:
            break
        counts.update({request: model.count(request) for request in plan.missing_counts})
        plan = plan_retention(policy, model.state(), groups, now=now, counts=counts, count_cap=cap)
    assert not plan.missing_counts, "two rounds of counting settle every plan"

    # Producers keep adding while the operator trims; their entries are unread by every group.
    new = list(range(2000, 2000 + added_meanwhile))
    model.ids.extend(new)
    protected |= set(new)
    for action in plan.actions:
        model.apply(action)
    assert protected <= set(model.ids)
    if not protected and cap > size:
        unprotected = ModelStream(ids=list(range(1000, 1000 + size)) + new, added=size)
        for action in plan_retention(
            RetentionPolicy(max_length=max_length, max_age=policy.max_age, protect_unprocessed=False),
            ModelStream(ids=list(range(1000, 1000 + size)), added=size).state(),
            [],
            now=now,
        ).actions:
            unprotected.apply(action)
        assert model.ids == unprotected.ids
