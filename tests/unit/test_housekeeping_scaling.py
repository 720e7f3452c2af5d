"""housekeeping.scaling_decision: the planner's decision as the operator makes it per group, with the
restart rule (an operator that just started may delay a scale-down, never make one at once) and the
missing-group rule (backlog unknown: replicas hold). Pure; the live behaviour is in tests/k8s."""

from __future__ import annotations

from typing import Any

import pytest

from streampipe_operator import api
from streampipe_operator.controller.reconcile import TICK, error_delay, on_tick
from streampipe_operator.engine.housekeeping import next_due, scaling_decision
from streampipe_operator.plan.observed import GroupState, Lag
from streampipe_operator.plan.scaling import Recommendation
from streampipe_worker.entry_ids import EntryId

T0 = 1_800_000_000.0


def group(**scaling: Any) -> api.GroupSpec:
    defaults = {
        "minReplicas": 0,
        "maxReplicas": 10,
        "backlogPerReplica": 5000,
        "pollInterval": "1s",
        "scaleDownStabilization": "3s",
    }
    return api.GroupSpec.model_validate(
        {"name": "billing", "handler": "a:b", "image": "i", "scaling": {**defaults, **scaling}}
    )


def state(lag: int | None, pending: int = 0) -> GroupState:
    return GroupState(
        name="billing",
        last_delivered_id=EntryId(1, 0),
        lag=Lag(value=lag, source="server" if lag is not None else "unknown"),
        pending=pending,
        oldest_pending_id=EntryId(2, 0) if pending else None,
    )


@pytest.mark.parametrize(
    ("observed", "current", "history", "desired", "outcome"),
    [
        pytest.param((0, 0), 5, None, 5, "StabilizingDown", id="restart-delays-scale-down"),
        pytest.param((0, 0), 5, (), 0, "ScaledDown", id="empty-history-would-scale-down-at-once"),
        pytest.param((50_000, 0), 0, None, 4, "ScaledUp", id="flood-from-zero-step-limited"),
        pytest.param((50_000, 0), 4, None, 8, "ScaledUp", id="flood-doubles"),
        pytest.param((1, 0), 0, None, 1, "ScaledUp", id="single-entry-wakes-the-group"),
        pytest.param((0, 3), 0, None, 1, "ScaledUp", id="pending-needs-a-replica"),
        pytest.param((0, 3), 1, (), 1, "Steady", id="never-zero-while-pending"),
        pytest.param((None, 0), 3, None, 3, "BacklogUnknown", id="unknown-lag-holds"),
        pytest.param((0, 0), None, None, 0, "Steady", id="no-deployment-yet-starts-at-min"),
        pytest.param((12_000, 0), None, None, 3, "ScaledUp", id="no-deployment-yet-flooded"),
    ],
)
def test_decisions(
    observed: tuple[int | None, int],
    current: int | None,
    history: tuple[Recommendation, ...] | None,
    desired: int,
    outcome: str,
) -> None:
    lag, pending = observed
    decision = scaling_decision(group(), state(lag, pending), current=current, history=history, now=T0)
    assert (decision.desired_replicas, decision.outcome) == (desired, outcome)
    assert decision.reason


def test_missing_group_holds_replicas() -> None:
    decision = scaling_decision(group(), None, current=2, history=None, now=T0)
    assert (decision.desired_replicas, decision.outcome) == (2, "BacklogUnknown")


def test_min_replicas_is_a_floor() -> None:
    decision = scaling_decision(group(minReplicas=2), state(0), current=0, history=None, now=T0)
    assert decision.desired_replicas == 2


def test_drain_then_zero_after_the_window() -> None:
    """A flood raises replicas at once (x2 or +4 per poll); they fall to the highest recommendation of
    the last window (3s): 4 while the 20K reading is in it, 0 once it is not."""
    spec = group()
    history = None
    current = 0
    timeline = [(0.0, 50_000), (1.0, 50_000), (2.0, 20_000), (3.0, 0), (4.0, 0), (5.0, 0), (6.5, 0)]
    seen = []
    for offset, lag in timeline:
        decision = scaling_decision(spec, state(lag), current=current, history=history, now=T0 + offset)
        history, current = decision.history, decision.desired_replicas
        seen.append(current)
    assert seen == [4, 8, 8, 8, 8, 4, 0]


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]
)
def test_error_backoff(failures: int, delay: float) -> None:
    assert error_delay(failures, 1.0, 30.0) == delay


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (None, 100.0, 105.0),  # the first run
        (100.0, 100.04, 105.0),  # woken a little late: the rate holds
        (100.0, 104.9, 105.0),
        (100.0, 105.2, 110.2),  # a whole interval late: from now
        (100.0, 99.0, 104.0),  # ran early (a workload was missing): from now
    ],
)
def test_next_due_keeps_a_fixed_rate(due: float | None, now: float, expected: float) -> None:
    assert next_due(due, now, 5.0) == pytest.approx(expected)


@pytest.mark.parametrize("at", [1000.0, 1000.01, 1000.05, 1000.0999, 12_345.678])
def test_passes_wake_on_the_next_tick(at: float) -> None:
    woken = on_tick(at)
    assert at <= woken < at + TICK
    assert round(woken / TICK) == pytest.approx(woken / TICK)


@pytest.mark.parametrize(
    ("cap", "min_replicas", "desired"),
    [
        pytest.param(None, 0, 10, id="no-cap-maxReplicas"),
        pytest.param(4, 0, 4, id="per-key-capped-at-the-partition-count"),
        pytest.param(2, 3, 2, id="the-cap-bounds-minReplicas-too"),
    ],
)
def test_per_key_ordering_caps_replicas_at_the_partition_count(
    cap: int | None, min_replicas: int, desired: int
) -> None:
    # A flood would ask for 10 (maxReplicas); with PerKey a worker past the count owns no partition.
    decision = scaling_decision(
        group(minReplicas=min_replicas), state(500_000), current=10, history=None, now=T0, cap=cap
    )
    assert decision.desired_replicas == desired
