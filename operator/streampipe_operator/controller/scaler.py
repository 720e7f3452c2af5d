"""The operator's ``WorkloadBackend``: worker Deployments, scaled through ``/scale``.

One :class:`DeploymentScaler` serves one reconcile pass. It sees the Deployments as kopf's index
showed them before the pass wrote anything, and writes through a :class:`ScaleTarget` (the
pipeline's ``DeploymentWriter``), which knows the writes kopf's index has not caught up with. Which
consumers are alive it cannot tell (pods are not listed), so their idle time alone decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from streampipe_operator import api
from streampipe_operator.kube.client import KubeError
from streampipe_operator.kube.deployments import deployment_name
from streampipe_operator.kube.status import Findings
from streampipe_operator.plan.scaling import ScalingDecision


class ScaleTarget(Protocol):
    """Where the scaler reads and writes replicas (``deployments.DeploymentWriter``)."""

    def replicas_of(self, name: str, deployment: Mapping[str, Any] | None) -> int | None:
        """The Deployment's replicas as far as we know (None when it does not exist)."""

    async def scale(self, name: str, decision: ScalingDecision, current: int) -> None:
        """Set the Deployment's replicas (raises :class:`KubeError`)."""


# Records that a write to a group's Deployment failed (status reports it).
FailureSink = Callable[[Findings, str, KubeError], None]


class DeploymentScaler:
    """``WorkloadBackend`` of one pass over one pipeline's worker Deployments."""

    def __init__(
        self,
        target: ScaleTarget,
        *,
        failed: FailureSink,
        pipeline: str,
        groups: Iterable[api.GroupSpec],
        actual: Mapping[str, Mapping[str, Any]],
        findings: Findings,
    ) -> None:
        self.target = target
        self.failed = failed
        self.findings = findings
        self.names = {group.name: deployment_name(pipeline, group.name) for group in groups}
        self.current = {
            group: target.replicas_of(name, actual.get(name)) for group, name in self.names.items()
        }
        self.scaled: dict[str, int] = {}  # group -> replicas this pass set

    def current_replicas(self, group: str) -> int | None:
        return self.current.get(group)

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        try:
            await self.target.scale(self.names[group], decision, current)
        except KubeError as exc:
            self.failed(self.findings, group, exc)
            return
        self.scaled[group] = decision.desired_replicas

    def live_consumers(self) -> None:
        return None
