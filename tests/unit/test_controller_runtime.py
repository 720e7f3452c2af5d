"""A pipeline's reconcile loop (``PipelineRuntime``) driven with a fake of the operator's Kubernetes
protocol (``KubeClient``) and a Redis that does not answer: the Deployments the spec asks for exist
with ``minReplicas``, drift is put back, removed groups lose their Deployment, and status and Events
say why. The same loop against a real API server and Redis is in tests/k8s/test_operator_*.py."""

from __future__ import annotations

import copy
import socket
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streampipe_operator.controller.metrics import OperatorMetrics
from streampipe_operator.controller.reconcile import OperatorContext, PipelineRuntime
from streampipe_operator.kube.client import KubeClient, KubeError
from streampipe_operator.kube.policy import WorkloadPolicy
from streampipe_operator.kube.status import EventType

NAMESPACE = "shop"
UID = "0b5e7c1e-5a4f-4c1e-9d57-3f1c2a9e0001"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


class FakeKube:
    """Deployments in a dict, status patches and Events in lists; resourceVersion counts writes."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.status: list[dict[str, Any]] = []
        self.events: list[tuple[EventType, str, str]] = []
        self.version = 0

    def _stored(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.deployments[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    def index(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """What kopf's Deployment index would show: every stored Deployment."""
        return {(NAMESPACE, "quickstart"): [copy.deepcopy(d) for d in self.deployments.values()]}

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes:
        raise KubeError(f"Secret {namespace}/{name} not found", status=404)

    async def create_deployment(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if body["metadata"]["name"] in self.deployments:
            raise KubeError("already exists", status=409, reason="AlreadyExists")
        return self._stored(body)

    async def patch_deployment(
        self, namespace: str, name: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        document = copy.deepcopy(self.deployments[name])
        for operation in operations:
            assert operation["op"] in ("add", "replace"), operation
            *parents, last = [_unescape(token) for token in operation["path"].split("/")[1:]]
            node = document
            for token in parents:
                node = node[int(token)] if isinstance(node, list) else node.setdefault(token, {})
            node[last] = copy.deepcopy(operation["value"])
        return self._stored(document)

    async def delete_deployment(self, namespace: str, name: str) -> None:
        self.deployments.pop(name, None)

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        document = copy.deepcopy(self.deployments[name])
        document["spec"]["replicas"] = replicas
        stored = self._stored(document)
        return {"metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]}}

    async def patch_pipeline_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status.append(copy.deepcopy(dict(status)))

    async def post_event(
        self, involved: Mapping[str, Any], type_: EventType, reason: str, message: str
    ) -> None:
        assert (involved["kind"], involved["uid"]) == ("StreamPipeline", UID)
        self.events.append((type_, reason, message))


def _body(port: int, groups: Sequence[str] = ("fulfilment", "analytics")) -> dict[str, Any]:
    return {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "quickstart", "namespace": NAMESPACE, "uid": UID, "generation": 1},
        "spec": {
            "redis": {"url": f"redis://127.0.0.1:{port}/0"},
            "stream": "{shop}:orders",
            "groups": [
                {
                    "name": name,
                    "handler": f"quickstart_shop.{name}:router",
                    "image": "registry.example.com/shop/quickstart-worker:0.1.0",
                    "scaling": {"minReplicas": 2, "maxReplicas": 4},
                }
                for name in groups
            ],
        },
    }


def _runtime(kube: KubeClient, metrics: OperatorMetrics, body: Mapping[str, Any]) -> PipelineRuntime:
    return OperatorContext(kube, metrics).runtime_for(SimpleNamespace(), body)


def _condition(status: Mapping[str, Any], type_: str) -> tuple[str, str]:
    condition = next(c for c in status["conditions"] if c["type"] == type_)
    return condition["status"], condition["reason"]


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics(registry=CollectorRegistry())


async def test_unreachable_redis_creates_deployments_at_min_replicas_and_says_why(
    metrics: OperatorMetrics,
) -> None:
    kube, body = FakeKube(), _body(_closed_port())
    runtime = _runtime(kube, metrics, body)
    delay = await runtime.reconcile(body, {}, {})
    try:
        assert {name: d["spec"]["replicas"] for name, d in kube.deployments.items()} == {
            "quickstart-fulfilment": 2,
            "quickstart-analytics": 2,
        }
        assert [reason for _, reason, _ in kube.events].count("DeploymentCreated") == 2
        assert ("Warning", "RedisUnreachable") in [(type_, reason) for type_, reason, _ in kube.events]
        status = kube.status[-1]
        assert _condition(status, "Ready") == ("False", "RedisUnreachable")
        assert _condition(status, "RedisReachable")[0] == "False"
        assert status["observedGeneration"] == 1
        assert delay > 0
        errors = metrics.registry.get_sample_value(
            "streampipe_operator_errors_total",
            {"namespace": NAMESPACE, "pipeline": "quickstart", "kind": "redis_unreachable"},
        )
        assert errors == 1
    finally:
        await runtime.connection.close()


async def test_drift_is_put_back_and_a_removed_group_loses_its_deployment(metrics: OperatorMetrics) -> None:
    port = _closed_port()
    kube = FakeKube()
    first = _runtime(kube, metrics, _body(port))
    await first.reconcile(_body(port), {}, {})
    await first.connection.close()
    stored = kube.deployments["quickstart-fulfilment"]
    stored["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:latest"
    kube.deployments["quickstart-fulfilment"] = kube._stored(stored)  # changed behind our back

    # A runtime with no memory of its writes (the operator restarted) trusts what the index shows;
    # the spec is the one it acted on (status says so), so a difference is drift.
    body = {**_body(port), "status": kube.status[-1]}
    restarted = _runtime(kube, metrics, body)
    try:
        await restarted.reconcile(body, {}, kube.index())
        container = kube.deployments["quickstart-fulfilment"]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example.com/shop/quickstart-worker:0.1.0"
        assert kube.deployments["quickstart-fulfilment"]["spec"]["replicas"] == 2  # replicas are not drift
        assert ("Warning", "DriftReverted") in [(type_, reason) for type_, reason, _ in kube.events]

        removed = _body(port, groups=["fulfilment"])
        removed["metadata"]["generation"] = 2
        await restarted.reconcile(removed, {}, kube.index())
    finally:
        await restarted.connection.close()
    assert set(kube.deployments) == {"quickstart-fulfilment"}
    assert ("Normal", "DeploymentDeleted") in [(type_, reason) for type_, reason, _ in kube.events]


async def test_a_pass_during_deletion_leaves_status_to_the_teardown(metrics: OperatorMetrics) -> None:
    """The finalizer may have written Ready=False/DeletionBlocked; a pass that was under way when the
    pipeline got its deletionTimestamp must not write its own Ready over it (seen as a flaky test)."""
    kube, body = FakeKube(), _body(_closed_port())
    runtime = _runtime(kube, metrics, body)
    try:
        await runtime.reconcile(body, {}, {})
        written = len(kube.status)
        assert written == 1
        body["metadata"]["deletionTimestamp"] = "2026-12-04T05:00:00Z"
        body["metadata"]["generation"] = 2  # a change that would otherwise be written at once
        await runtime.reconcile(body, {}, {})
        assert len(kube.status) == written
    finally:
        await runtime.connection.close()


async def test_a_pipeline_outside_the_workload_policy_is_refused_and_gets_nothing(
    metrics: OperatorMetrics,
) -> None:
    kube, body = FakeKube(), _body(_closed_port())
    body["spec"]["groups"][1]["template"] = {"serviceAccountName": "cluster-admin-ish"}
    policy = WorkloadPolicy(
        allowed_images=("registry.example.com/shop/*",), allowed_service_accounts=("default", "workers")
    )
    runtime = OperatorContext(kube, metrics, policy).runtime_for(SimpleNamespace(), body)
    try:
        await runtime.reconcile(body, {}, {})
        assert kube.deployments == {}  # nothing created for a refused pipeline
        status = kube.status[-1]
        assert _condition(status, "Ready") == ("False", "NotAllowed")
        assert _condition(status, "RedisReachable") == ("Unknown", "NotChecked")
        assert ("Warning", "NotAllowed") in [(type_, reason) for type_, reason, _ in kube.events]
        errors = metrics.registry.get_sample_value(
            "streampipe_operator_errors_total",
            {"namespace": NAMESPACE, "pipeline": "quickstart", "kind": "not_allowed"},
        )
        assert errors == 1

        body["spec"]["groups"][1]["template"] = {"serviceAccountName": "workers"}
        body["metadata"]["generation"] = 2
        await runtime.reconcile(body, {}, {})
        assert set(kube.deployments) == {"quickstart-fulfilment", "quickstart-analytics"}
        assert _condition(kube.status[-1], "Ready") == ("False", "RedisUnreachable")  # allowed now
    finally:
        await runtime.connection.close()
