"""Consumer cleanup removes gone consumers and never one that holds pending entries."""

from __future__ import annotations

import pytest

from streampipe_operator.plan.consumers import ConsumerCleanup, StrandedConsumer, plan_consumer_cleanup
from streampipe_operator.plan.observed import ConsumerState, GroupState, Lag
from streampipe_worker.entry_ids import EntryId


def group(name: str, *consumers: tuple[str, int, float]) -> GroupState:
    return GroupState(
        name=name,
        last_delivered_id=EntryId(1, 0),
        lag=Lag(value=0, source="server"),
        pending=sum(p for _, p, _ in consumers),
        consumers=tuple(ConsumerState(name=n, pending=p, idle=i) for n, p, i in consumers),
    )


CASES = [
    pytest.param([group("g", ("a", 0, 5.0))], 60.0, None, [], [], id="recently-active-kept"),
    pytest.param([group("g", ("a", 0, 61.0))], 60.0, None, [("g", "a")], [], id="idle-empty-removed"),
    pytest.param([group("g", ("a", 0, 60.0))], 60.0, None, [], [], id="exactly-at-bound-kept"),
    pytest.param(
        [group("g", ("a", 3, 3600.0))], 60.0, None, [], [("g", "a", 3)], id="idle-with-pending-never-removed"
    ),
    pytest.param(
        [group("g", ("pod-1", 0, 999.0), ("pod-2", 0, 999.0))],
        60.0,
        {"pod-1"},
        [("g", "pod-2")],
        [],
        id="live-consumer-kept-however-idle",
    ),
    pytest.param(
        [group("g", ("gone", 2, 999.0), ("live", 0, 1.0))],
        60.0,
        {"live"},
        [],
        [("g", "gone", 2)],
        id="gone-with-pending-is-stranded",
    ),
    pytest.param(
        [group("billing", ("x", 0, 100.0)), group("audit", ("x", 1, 100.0), ("y", 0, 100.0))],
        60.0,
        None,
        [("billing", "x"), ("audit", "y")],
        [("audit", "x", 1)],
        id="per-group",
    ),
    pytest.param([], 60.0, None, [], [], id="no-groups"),
]


@pytest.mark.parametrize(("groups", "idle_after", "live", "deleted", "stranded"), CASES)
def test_plan_consumer_cleanup(
    groups: list[GroupState],
    idle_after: float,
    live: set[str] | None,
    deleted: list[tuple[str, str]],
    stranded: list[tuple[str, str, int]],
) -> None:
    plan = plan_consumer_cleanup(groups, idle_after=idle_after, live_consumers=live)
    assert [(d.group, d.consumer) for d in plan.delete] == deleted
    assert [(s.group, s.consumer, s.pending) for s in plan.stranded] == stranded
    pending_of = {(g.name, c.name): c.pending for g in groups for c in g.consumers}
    assert all(pending_of[d.group, d.consumer] == 0 for d in plan.delete)


def test_reason_names_the_consumer_and_why() -> None:
    plan = plan_consumer_cleanup([group("billing", ("pod-7", 0, 125.0))], idle_after=60, live_consumers=set())
    assert plan.delete[0].reason == (
        "removed consumer pod-7 from group billing: idle 125s > 60s, nothing pending, "
        "no running worker has that name"
    )
    assert plan_consumer_cleanup([], idle_after=1) == ConsumerCleanup()
    assert StrandedConsumer(group="g", consumer="c", pending=1, idle=2).pending == 1
