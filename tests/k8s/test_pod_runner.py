"""The test pod runner runs a worker Deployment's replicas as local processes and follows scaling.

It stands in for the kubelet (there is none in the test control plane) for streampipe's own worker
Deployments only; these tests check that stand-in, with a hand-written Deployment, before the
operator's tests rely on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from streampipe_operator.kube.deployments import COMPONENT, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from streampipe_worker.producer import Event, Producer
from streampipe_worker.settings import WorkerSettings
from tests.support.controlplane import Kubectl
from tests.support.pod_runner import PodRunner
from tests.support.polling import eventually
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.timeout(120)

STREAM = "{shop}:orders"
GROUP = "billing"


def env(field: str) -> str:
    return WorkerSettings.env_name(field)


def worker_deployment(name: str, namespace: str, server: ServerProcess, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "worker",
                            "image": "example.invalid/shop/billing:1",
                            "env": [
                                {"name": env("redis_url"), "value": f"redis://127.0.0.1:{server.port}/0"},
                                {
                                    "name": env("redis_password"),
                                    "valueFrom": {"secretKeyRef": {"name": "redis-creds", "key": "password"}},
                                },
                                {"name": env("stream"), "value": STREAM},
                                {"name": env("group"), "value": GROUP},
                                {"name": env("handler"), "value": "shop_handlers.billing:router"},
                                {"name": env("batch_size"), "value": "200"},
                                {"name": env("block"), "value": "200ms"},
                                {"name": env("backoff_initial"), "value": "100ms"},
                                {"name": env("claim_idle"), "value": "2s"},
                                {
                                    "name": env("consumer"),
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                        }
                    ],
                },
            },
        },
    }


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, runner: PodRunner | None = None
) -> None:
    """``eventually``, with the runner's errors in the failure message."""
    try:
        eventually(condition, what, timeout, every=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrunner errors: {runner.errors}" if runner else str(exc)) from None


def test_runs_replicas_processes_and_follows_scale(
    kubectl: Kubectl,
    namespace: str,
    server_factory: Callable[..., ServerProcess],
    pod_runner: Callable[..., PodRunner],
) -> None:
    server = server_factory("valkey9", password="s3cret-pw")
    client = server.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    kubectl(
        "create", "secret", "generic", "redis-creds", "-n", namespace, "--from-literal=password=s3cret-pw"
    )
    kubectl.apply(worker_deployment("shop-billing", namespace, server, replicas=2))

    runner = pod_runner()
    wait_for(lambda: runner.ready("shop-billing") == 2, 30, "2 ready replicas", runner)

    def status() -> dict[str, Any]:
        return dict(kubectl.json("get", "deployment", "shop-billing", "-n", namespace).get("status", {}))

    wait_for(lambda: status().get("readyReplicas") == 2, 10, "status.readyReplicas=2", runner)
    consumers = {c["name"] for c in client.xinfo_consumers(STREAM, GROUP)}
    assert len(consumers) <= 2

    producer = Producer(client, STREAM)
    producer.send_many(
        Event(type="order.created", payload={"order_id": i * 50 + 1, "total": 10.0}) for i in range(500)
    )

    def drained() -> bool:
        group = client.xinfo_groups(STREAM)[0]
        return bool(group["pending"] == 0 and group["lag"] == 0)

    wait_for(drained, 30, "the group to drain", runner)
    # Both replicas registered as consumers with their own names (the runtime gives each one).
    assert len({c["name"] for c in client.xinfo_consumers(STREAM, GROUP)}) == 2

    kubectl("scale", "deployment", "shop-billing", "-n", namespace, "--replicas=3")
    wait_for(lambda: runner.ready("shop-billing") == 3, 30, "3 ready replicas", runner)
    wait_for(lambda: status().get("readyReplicas") == 3, 10, "status.readyReplicas=3", runner)

    pids = runner.pids("shop-billing")
    kubectl("scale", "deployment", "shop-billing", "-n", namespace, "--replicas=1")
    wait_for(lambda: runner.running("shop-billing") == 1, 30, "1 running replica", runner)
    survivor = runner.pids("shop-billing")
    assert len(survivor) == 1
    assert survivor[0] in pids, "scaling down stops replicas, it does not replace the survivor"

    kubectl("delete", "deployment", "shop-billing", "-n", namespace)
    wait_for(lambda: runner.running("shop-billing") == 0, 30, "no replicas after delete", runner)
    assert runner.errors == []


def test_template_change_restarts_replicas_with_new_env(
    kubectl: Kubectl,
    namespace: str,
    server_factory: Callable[..., ServerProcess],
    pod_runner: Callable[..., PodRunner],
) -> None:
    server = server_factory("redis7", password="pw2")
    server.client().xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    kubectl("create", "secret", "generic", "redis-creds", "-n", namespace, "--from-literal=password=pw2")
    kubectl.apply(worker_deployment("w", namespace, server, replicas=1))
    runner = pod_runner()
    wait_for(lambda: runner.ready("w") == 1, 30, "1 ready replica", runner)
    before = runner.pids("w")

    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/env/5/value", "value": "50"}]
    kubectl("patch", "deployment", "w", "-n", namespace, "--type=json", "-p", json.dumps(patch))
    wait_for(lambda: runner.ready("w") == 1 and runner.pids("w") != before, 30, "a restarted replica", runner)
    assert runner.errors == []
