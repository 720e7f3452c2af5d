"""How many worker replicas a group should have, from its backlog.

The rules (docs/operator.md, "Scaling"), in the order they apply:

1. ``recommended = ceil(backlog / backlog_per_replica)``, or 0 while the backlog is at or below
   ``activation_backlog`` (the 0 <-> 1 switch, as in KEDA), then clamped to
   ``[max(min_replicas, 1 if anything is pending), max_replicas]``: a group with pending entries keeps
   a replica, because someone has to finish or reclaim them.
2. **Up at once, by a bounded step.** When ``recommended > current`` the new count is at most
   ``max(2 * current, current + max_scale_up_step)``: it may double, or grow by the step when that is
   more (so 0 -> 4 and 1 -> 5 with the default step 4; 10 -> 20). This is Kubernetes' HPA default
   scale-up policy (100 % or 4 pods per period, whichever is more); one decision per poll interval, so
   a flood reaches ``max_replicas`` in a few polls without one stale reading starting 50 pods.
   ``min_replicas`` is a floor and applies at once, whatever the step.
3. **Down only after the stabilization window.** Every decision records its recommendation; the count
   may fall only to the highest recommendation made within the last ``scale_down_stabilization``
   seconds (the HPA's scale-down stabilization), so a short lull does not shed replicas that the next
   burst needs. ``max_replicas`` is a ceiling and applies at once.
4. **Unknown backlog holds.** If the lag could not be read nor estimated, nothing is decided from it:
   the current count is kept (within the floor and ceiling).

The recommendation history is data the caller keeps (in memory or in status) and passes back in; the
decision returns the new history. Only recommendations that can still win are kept: an older entry
not higher than a newer one never becomes the window's maximum again, so the history is a short,
strictly decreasing list however often the caller polls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Self

from pydantic import Field, model_validator

from streampipe_operator.plan.backlog import Backlog
from streampipe_operator.plan.frozen import Frozen


class ScalingPolicy(Frozen):
    """The scaling settings of one group (the handler maps ``spec.groups[].scaling`` onto this)."""

    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(ge=1)
    backlog_per_replica: int = Field(ge=1, description="Backlog one replica is expected to handle")
    activation_backlog: int = Field(default=0, ge=0, description="Backlog at or below it: no replica needed")
    scale_down_stabilization: float = Field(default=60.0, ge=0, description="Seconds")
    max_scale_up_step: int = Field(default=4, ge=1, description="Growth per decision besides doubling")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class Recommendation(Frozen):
    """What the backlog asked for at one moment (Unix seconds)."""

    at: float
    replicas: int = Field(ge=0)


ScalingOutcome = Literal["ScaledUp", "ScaledDown", "Steady", "StabilizingDown", "BacklogUnknown"]


class ScalingDecision(Frozen):
    """The replica count to set for one group, and why (``reason`` is written for an Event)."""

    group: str
    current_replicas: int
    desired_replicas: int
    recommended_replicas: int = Field(description="What this backlog alone asks for, clamped to the bounds")
    backlog: Backlog
    outcome: ScalingOutcome
    reason: str
    history: tuple[Recommendation, ...] = Field(description="Pass this back in on the next decision")

    @property
    def changed(self) -> bool:
        return self.desired_replicas != self.current_replicas


def scale_up_limit(current: int, step: int) -> int:
    """The most replicas one decision may go to from ``current``: double, or ``+step`` if that is more."""
    return max(2 * current, current + step)


def decide_replicas(
    group: str,
    policy: ScalingPolicy,
    backlog: Backlog,
    *,
    current_replicas: int,
    history: Sequence[Recommendation],
    now: float,
) -> ScalingDecision:
    """Decide the replica count of ``group`` at time ``now`` (Unix seconds). Pure."""
    floor = max(policy.min_replicas, 1 if backlog.pending > 0 else 0)
    total = backlog.total

    if total is None:
        recommended = min(max(current_replicas, floor), policy.max_replicas)
    elif total <= policy.activation_backlog:
        recommended = floor
    else:
        recommended = min(max(math.ceil(total / policy.backlog_per_replica), floor), policy.max_replicas)

    window_start = now - policy.scale_down_stabilization
    kept = [r for r in history if r.at >= window_start]
    while kept and kept[-1].replicas <= recommended:
        kept.pop()
    new_history = (*kept, Recommendation(at=now, replicas=recommended))
    # A policy change may have lowered max_replicas below what older recommendations said.
    highest_in_window = min(max(r.replicas for r in new_history), policy.max_replicas)

    def decision(desired: int, outcome: ScalingOutcome, reason: str) -> ScalingDecision:
        return ScalingDecision(
            group=group,
            current_replicas=current_replicas,
            desired_replicas=desired,
            recommended_replicas=recommended,
            backlog=backlog,
            outcome=outcome,
            reason=reason,
            history=new_history,
        )

    if recommended > current_replicas:
        limit = scale_up_limit(current_replicas, policy.max_scale_up_step)
        desired = max(floor, min(recommended, limit))
        why = _why_up(policy, backlog, recommended=recommended, floor=floor, limit=limit, desired=desired)
        return decision(desired, "ScaledUp", f"scaled {group} {current_replicas} -> {desired}: {why}")

    if highest_in_window < current_replicas:
        window = _seconds(policy.scale_down_stabilization)
        if highest_in_window > recommended:
            why = f"nothing above {highest_in_window} was recommended in the last {window}"
        elif current_replicas > policy.max_replicas:
            why = f"maxReplicas is {policy.max_replicas}"
        else:
            why = f"nothing above it was recommended in the last {window}"
        return decision(
            highest_in_window,
            "ScaledDown",
            f"scaled {group} {current_replicas} -> {highest_in_window}: backlog {backlog} needs "
            f"{recommended}; {why}",
        )

    if total is None:
        return decision(
            current_replicas,
            "BacklogUnknown",
            f"holding {group} at {current_replicas}: backlog unknown (the lag could not be read or counted)",
        )
    if recommended < current_replicas:
        return decision(
            current_replicas,
            "StabilizingDown",
            f"holding {group} at {current_replicas}: backlog {backlog} needs {recommended}, but "
            f"{highest_in_window} was recommended within the last "
            f"{_seconds(policy.scale_down_stabilization)} (scale-down stabilization)",
        )
    return decision(current_replicas, "Steady", f"{group} steady at {current_replicas}: backlog {backlog}")


def _why_up(
    policy: ScalingPolicy, backlog: Backlog, *, recommended: int, floor: int, limit: int, desired: int
) -> str:
    total = backlog.total
    if total is not None and recommended > floor:
        if total > policy.backlog_per_replica:
            parts = [f"backlog {backlog} > {policy.backlog_per_replica} per replica"]
        else:
            parts = [f"backlog {backlog} > activation {policy.activation_backlog}"]
    elif floor == policy.min_replicas and floor > 0:
        parts = [f"minReplicas is {policy.min_replicas}"]
    else:
        parts = [f"pending entries ({backlog.pending}) need a replica to finish or reclaim them"]
    if recommended == policy.max_replicas and total is not None and recommended > floor:
        needed = math.ceil(total / policy.backlog_per_replica)
        if needed > policy.max_replicas:
            parts.append(f"capped at maxReplicas {policy.max_replicas}")
    if desired < recommended and desired == limit:
        parts.append(
            f"step limited to {limit} (at most x2 or +{policy.max_scale_up_step} per decision; "
            f"the backlog asks for {recommended})"
        )
    return "; ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def placed_replicas(
    mode: Literal["native", "none"], min_replicas: int, current: int | None, decided: int | None
) -> int:
    """The replicas a group's workload should have after a pass: what the scaler decided (``decided``),
    else what it has now (``current``; None while the workload does not exist), else ``min_replicas``.
    With ``scaling.mode: none`` nothing is decided and an existing workload keeps its count (someone
    else, e.g. an HPA, owns it); a new one starts at ``min_replicas``."""
    if mode != "none" and decided is not None:
        return decided
    if current is not None:
        return current
    return min_replicas
