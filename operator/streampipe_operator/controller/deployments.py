"""The writes to a pipeline's worker Deployments, and the writes kopf's index does not show yet."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streampipe_operator.api import Reason
from streampipe_operator.controller.events import post_event
from streampipe_operator.controller.metrics import OperatorMetrics
from streampipe_operator.controller.ownership import PipelineRef
from streampipe_operator.kube.client import KubeClient, KubeError
from streampipe_operator.kube.deployments import deployment_drift, drift_patch
from streampipe_operator.kube.status import EventType, GroupWorkload
from streampipe_operator.plan.scaling import ScalingDecision

log = logging.getLogger("streampipe.operator")

# How long a write of ours may take to show in kopf's index before the index is trusted again.
WRITE_SETTLE_SECONDS = 5.0


@dataclass
class _Write:
    """A write of ours to a Deployment that kopf's index may not show yet."""

    resource_version: str
    at: float
    replicas: int | None = None


class DeploymentWriter:
    """Writes to one pipeline's worker Deployments (create, revert drift, ``/scale``), each with its
    Event, and the writes kopf's index may not show yet (so a pass does not act on a stale view)."""

    def __init__(self, kube: KubeClient, ref: PipelineRef, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.ref = ref
        self.label = ref.label
        self.namespace = ref.namespace
        self.name = ref.name
        self.metrics = metrics
        self.writes: dict[str, _Write] = {}
        self.created: dict[str, float] = {}
        self.last_scale_time: dict[str, datetime] = {}

    def replicas_of(self, name: str, deployment: Mapping[str, Any] | None) -> int | None:
        """ScaleTarget: the Deployment's replicas, or ours while kopf's index lags behind our write."""
        if deployment is None:
            return None
        replicas = int((deployment.get("spec") or {}).get("replicas", 1))
        write = self.writes.get(name)
        if write is not None and write.replicas is not None:
            fresh = deployment["metadata"].get("resourceVersion") == write.resource_version
            if not fresh and time.monotonic() - write.at < WRITE_SETTLE_SECONDS:
                return write.replicas  # the index has not caught up with our /scale yet
        return replicas

    async def create(
        self, name: str, desired: Mapping[str, Any], group: str, workload: GroupWorkload
    ) -> None:
        if time.monotonic() - self.created.get(name, -math.inf) < WRITE_SETTLE_SECONDS:
            return  # created a moment ago; kopf's index has not seen it yet
        try:
            created = await self.kube.create_deployment(desired)
        except KubeError as exc:
            if exc.conflict:
                return  # it exists (the index lags); the next pass sees it
            raise
        self.created[name] = time.monotonic()
        replicas = int(desired["spec"]["replicas"])
        self.writes[name] = _Write(created["metadata"]["resourceVersion"], time.monotonic(), replicas)
        workload.replicas = replicas
        self.last_scale_time[group] = datetime.now(UTC)
        workload.last_scale_time = self.last_scale_time[group]
        await self._event(
            "Normal",
            Reason.DEPLOYMENT_CREATED,
            f"created worker Deployment {name} for group {group} with {replicas} replicas",
        )

    async def revert_drift(
        self, name: str, deployment: Mapping[str, Any], desired: Mapping[str, Any], *, spec_changed: bool
    ) -> bool:
        """Make the Deployment say what the spec says: after a spec change that is an update, otherwise
        someone changed the Deployment and it is drift. False when it could not compare yet (the index
        may still show the Deployment from before our last write)."""
        write = self.writes.get(name)
        version = deployment["metadata"].get("resourceVersion")
        if (
            write is not None
            and version != write.resource_version
            and time.monotonic() - write.at < WRITE_SETTLE_SECONDS
        ):
            return False
        drifted = deployment_drift(deployment, desired)
        if not drifted:
            return True
        operations = drift_patch(deployment, desired)
        if not operations:
            return True
        patched = await self.kube.patch_deployment(self.namespace, name, operations)
        self.writes[name] = _Write(
            patched["metadata"]["resourceVersion"], time.monotonic(), write.replicas if write else None
        )
        shown = ", ".join(drifted[:5]) + (f" and {len(drifted) - 5} more" if len(drifted) > 5 else "")
        if spec_changed:
            log.info("%s: updated Deployment %s to the new spec (%s)", self.label, name, shown)
            await self._event(
                "Normal", Reason.DEPLOYMENT_UPDATED, f"updated Deployment {name} to the new spec ({shown})"
            )
            return True
        log.info("%s: reverted drift in Deployment %s (%s)", self.label, name, shown)
        await self._event(
            "Warning",
            Reason.DRIFT_REVERTED,
            f"Deployment {name} was changed ({shown}); put back as the spec says",
        )
        return True

    async def scale(self, name: str, decision: ScalingDecision, current: int) -> None:
        """ScaleTarget: set the Deployment's replicas through ``/scale``; an Event says why."""
        scale = await self.kube.scale_deployment(self.namespace, name, decision.desired_replicas)
        self.writes[name] = _Write(
            scale["metadata"]["resourceVersion"], time.monotonic(), decision.desired_replicas
        )
        self.last_scale_time[decision.group] = datetime.now(UTC)
        direction = "up" if decision.desired_replicas > current else "down"
        self.metrics.scale_changes.labels(self.namespace, self.name, decision.group, direction).inc()
        log.info("%s: %s", self.label, decision.reason)
        await self._event(
            "Normal", Reason.SCALED_UP if direction == "up" else Reason.SCALED_DOWN, decision.reason
        )

    async def _event(self, type_: EventType, reason: str, message: str) -> None:
        await post_event(self.kube, self.ref, type_, reason, message)
