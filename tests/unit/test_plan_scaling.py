"""Replica decisions from backlog: clamping, activation, bounded scale-up, stabilized scale-down."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streampipe_operator.plan.backlog import Backlog
from streampipe_operator.plan.observed import Lag
from streampipe_operator.plan.scaling import (
    Recommendation,
    ScalingOutcome,
    ScalingPolicy,
    decide_replicas,
    placed_replicas,
    scale_up_limit,
)

NOW = 1_800_000_000.0


def policy(**overrides: float) -> ScalingPolicy:
    base: dict[str, float] = {
        "min_replicas": 0,
        "max_replicas": 20,
        "backlog_per_replica": 1000,
        "activation_backlog": 0,
        "scale_down_stabilization": 60,
        "max_scale_up_step": 4,
    }
    base.update(overrides)
    return ScalingPolicy.model_validate(base)


def lag(value: int | None, source: str = "server") -> Lag:
    return Lag.model_validate({"value": value, "source": "unknown" if value is None else source})


def history(*entries: tuple[float, int]) -> tuple[Recommendation, ...]:
    return tuple(Recommendation(at=NOW - ago, replicas=n) for ago, n in entries)


@dataclass(frozen=True)
class Case:
    current: int
    lag: Lag
    pending: int = 0
    past: tuple[Recommendation, ...] = ()
    policy: ScalingPolicy = field(default_factory=policy)


CASES = [
    pytest.param(Case(0, lag(0)), 0, "Steady", "steady at 0", id="idle-at-zero"),
    pytest.param(
        Case(0, lag(1)), 1, "ScaledUp", "0 -> 1: backlog 1 (lag 1) > activation 0", id="one-entry-wakes"
    ),
    pytest.param(
        Case(1, lag(3912)),
        4,
        "ScaledUp",
        "scaled billing 1 -> 4: backlog 3912 (lag 3912) > 1000 per replica",
        id="brief-example",
    ),
    pytest.param(Case(0, lag(50_000)), 4, "ScaledUp", "step limited to 4", id="from-zero-step-4"),
    pytest.param(Case(1, lag(50_000)), 5, "ScaledUp", "capped at maxReplicas 20", id="from-one-plus-4"),
    pytest.param(Case(8, lag(50_000)), 16, "ScaledUp", "at most x2 or +4", id="doubling"),
    pytest.param(Case(16, lag(50_000)), 20, "ScaledUp", "capped at maxReplicas 20", id="reaches-max"),
    pytest.param(Case(20, lag(50_000)), 20, "Steady", "steady at 20", id="at-max"),
    pytest.param(
        Case(4, lag(0), past=history((30, 4))),
        4,
        "StabilizingDown",
        "4 was recommended within the last 60s",
        id="down-held-in-window",
    ),
    pytest.param(
        Case(4, lag(0), past=history((61, 4))),
        0,
        "ScaledDown",
        "nothing above it was recommended",
        id="down-after-window",
    ),
    pytest.param(
        Case(8, lag(2500), past=history((90, 8), (30, 5))),
        5,
        "ScaledDown",
        "nothing above 5",
        id="down-to-highest-in-window",
    ),
    pytest.param(
        Case(3, lag(0), pending=2, past=history((61, 3))),
        1,
        "ScaledDown",
        "needs 1",
        id="pending-keeps-one",
    ),
    pytest.param(
        Case(0, lag(0), pending=1), 1, "ScaledUp", "pending entries (1) need a replica", id="pending-wakes"
    ),
    pytest.param(Case(3, lag(None)), 3, "BacklogUnknown", "backlog unknown", id="nil-lag-holds"),
    pytest.param(
        Case(0, lag(None), pending=5),
        1,
        "ScaledUp",
        "pending entries (5) need a replica",
        id="nil-lag-pending",
    ),
    pytest.param(
        Case(3, lag(None), past=history((61, 3))),
        3,
        "BacklogUnknown",
        "holding billing at 3",
        id="nil-lag-never-scales-down",
    ),
    pytest.param(Case(1, lag(2500, "counted")), 3, "ScaledUp", "lag 2500 (counted)", id="counted-lag"),
    pytest.param(Case(2, lag(10_000, "lower_bound")), 6, "ScaledUp", "backlog >=10000", id="lower-bound-lag"),
    pytest.param(
        Case(0, lag(50), policy=policy(activation_backlog=100)),
        0,
        "Steady",
        "steady at 0",
        id="below-activation-stays-at-zero",
    ),
    pytest.param(
        Case(0, lag(150), policy=policy(activation_backlog=100)),
        1,
        "ScaledUp",
        "> activation 100",
        id="above-activation-wakes",
    ),
    pytest.param(
        Case(2, lag(50), policy=policy(activation_backlog=100)),
        0,
        "ScaledDown",
        "needs 0",
        id="below-activation-sheds-all",
    ),
    pytest.param(
        Case(0, lag(0), policy=policy(min_replicas=2)), 2, "ScaledUp", "minReplicas is 2", id="min-floor"
    ),
    pytest.param(
        Case(0, lag(0), policy=policy(min_replicas=10)),
        10,
        "ScaledUp",
        "minReplicas is 10",
        id="min-floor-ignores-step",
    ),
    pytest.param(
        Case(6, lag(50_000), past=history((10, 6)), policy=policy(max_replicas=3)),
        3,
        "ScaledDown",
        "maxReplicas is 3",
        id="lowered-max-applies-at-once",
    ),
    pytest.param(
        Case(4, lag(0), past=history((1, 4)), policy=policy(scale_down_stabilization=0)),
        0,
        "ScaledDown",
        "in the last 0s",
        id="no-window",
    ),
    pytest.param(
        Case(2, lag(5000), past=history((20, 6))),
        5,
        "ScaledUp",
        "2 -> 5",
        id="up-uses-latest-not-window-max",
    ),
]


@pytest.mark.parametrize(("case", "desired", "outcome", "reason"), CASES)
def test_decide_replicas(case: Case, desired: int, outcome: ScalingOutcome, reason: str) -> None:
    decision = decide_replicas(
        "billing",
        case.policy,
        Backlog(lag=case.lag, pending=case.pending),
        current_replicas=case.current,
        history=case.past,
        now=NOW,
    )
    assert (decision.desired_replicas, decision.outcome) == (desired, outcome), decision.reason
    assert reason in decision.reason
    assert decision.changed == (desired != case.current)
    assert decision.history[-1] == Recommendation(at=NOW, replicas=decision.recommended_replicas)


def test_policy_refuses_min_above_max() -> None:
    with pytest.raises(ValidationError, match="min_replicas 5 > max_replicas 2"):
        policy(min_replicas=5, max_replicas=2)


@pytest.mark.parametrize(
    ("current", "step", "limit"),
    [
        pytest.param(0, 4, 4, id="zero"),
        pytest.param(1, 4, 5, id="plus-step"),
        pytest.param(4, 4, 8, id="equal"),
        pytest.param(10, 4, 20, id="double"),
    ],
)
def test_scale_up_limit(current: int, step: int, limit: int) -> None:
    assert scale_up_limit(current, step) == limit


def test_flood_drain_and_quiet_over_time() -> None:
    """A poll every 5 s: a flood raises replicas step by step, the drain waits out the window, then 0."""
    rules = policy(scale_down_stabilization=30)
    replicas = 0
    kept: tuple[Recommendation, ...] = ()
    seen: list[int] = []
    backlogs = [0, 50_000, 50_000, 50_000, 50_000, 5_000, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    for tick, value in enumerate(backlogs):
        decision = decide_replicas(
            "billing",
            rules,
            Backlog(lag=lag(value), pending=0),
            current_replicas=replicas,
            history=kept,
            now=NOW + 5 * tick,
        )
        replicas, kept = decision.desired_replicas, decision.history
        seen.append(replicas)
    # Up 0 -> 4 -> 8 -> 16 -> 20 at once; down only when the higher recommendations are 30 s old:
    # to 5 when the last "20" (t=20) leaves the window, to 0 when the "5" (t=25) does; 1 entry wakes it.
    assert seen == [0, 4, 8, 16, 20, 20, 20, 20, 20, 20, 20, 5, 0, 0, 1]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 30),  # seconds since the previous poll
            st.one_of(st.none(), st.integers(0, 60_000)),  # lag (None = unknown)
            st.integers(0, 50),  # pending
        ),
        min_size=1,
        max_size=25,
    ),
    min_replicas=st.integers(0, 3),
    max_replicas=st.integers(3, 30),
    window=st.sampled_from([0, 15, 60]),
    start=st.integers(0, 40),
)
def test_invariants_over_random_histories(
    steps: list[tuple[int, int | None, int]], min_replicas: int, max_replicas: int, window: int, start: int
) -> None:
    rules = policy(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        backlog_per_replica=500,
        scale_down_stabilization=window,
    )
    replicas, kept, now = start, (), NOW
    every: list[Recommendation] = []
    for gap, value, pending in steps:
        now += gap
        decision = decide_replicas(
            "g",
            rules,
            Backlog(lag=lag(value), pending=pending),
            current_replicas=replicas,
            history=kept,
            now=now,
        )
        every.append(Recommendation(at=now, replicas=decision.recommended_replicas))
        desired = decision.desired_replicas
        floor = max(min_replicas, 1 if pending else 0)
        assert floor <= desired <= max_replicas
        if desired > replicas:
            assert desired <= max(floor, scale_up_limit(replicas, rules.max_scale_up_step))
        if desired < replicas:
            in_window = [r.replicas for r in every if r.at >= now - window]
            assert desired >= min(max(in_window), max_replicas)
            assert value is not None or replicas > max_replicas, "an unknown backlog only holds"
        # The kept history is strictly decreasing, so it stays short however often we poll.
        counts = [r.replicas for r in decision.history]
        assert all(a > b for a, b in itertools.pairwise(counts))
        replicas, kept = desired, decision.history


@pytest.mark.parametrize(
    ("mode", "min_replicas", "current", "decided", "placed"),
    [
        ("native", 1, 3, 5, 5),  # a decision wins over the current count
        ("native", 1, 3, None, 3),  # no decision (backlog not observed): keep what runs
        ("native", 2, None, None, 2),  # a new workload without a decision starts at minReplicas
        ("native", 0, None, 4, 4),  # a new workload starts at the decided count
        ("none", 1, 3, 5, 3),  # mode none: someone else owns the count, even with a decision
        ("none", 2, None, None, 2),  # mode none, new workload: minReplicas
    ],
)
def test_placed_replicas(
    mode: Literal["native", "none"], min_replicas: int, current: int | None, decided: int | None, placed: int
) -> None:
    assert placed_replicas(mode, min_replicas, current, decided) == placed
