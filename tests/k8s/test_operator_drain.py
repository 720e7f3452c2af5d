"""The whole loop with workers: a flood raises the group's replicas, the workers (real
``streampipe-worker`` processes started by the test pod runner from the Deployment the operator
rendered, env and Secrets resolved as a kubelet would) drain it, replicas fall after the
stabilization window to zero, and a single new entry wakes the group again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from tests.support.controlplane import Kubectl
from tests.support.operator_process import (
    Cluster,
    OperatorProcess,
    eventually,
    pipeline_manifest,
    worker_group,
)
from tests.support.pod_runner import PodRunner

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]

STREAM = "{orders}:events"
DEPLOYMENT = "orders-billing"
HANDLERS = Path(__file__).resolve().parents[1] / "support" / "handlers"


def drained(client: redis.Redis) -> bool:
    group = client.xinfo_groups(STREAM)[0]
    return bool(group["lag"] == 0 and group["pending"] == 0)


def test_flood_scales_up_workers_drain_it_and_scale_to_zero_then_one_entry_wakes_them(
    *,
    operator: OperatorProcess,
    kubectl: Kubectl,
    cluster: Cluster,
    namespace: str,
    redis_url: str,
    redis_client: redis.Redis,
    pod_runner: Callable[..., PodRunner],
) -> None:
    group = worker_group(
        "billing",
        handler="drain_handler:handle",
        batchSize=500,
        scaling={"minReplicas": 0, "maxReplicas": 8, "backlogPerReplica": 5000},
    )
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=[group]))
    runner = pod_runner(python_path=[HANDLERS])
    eventually(lambda: cluster.replicas(namespace, DEPLOYMENT) == 0, what="Deployment at 0, idle")

    pipe = redis_client.pipeline(transaction=False)
    for n in range(50_000):
        pipe.xadd(STREAM, {"n": str(n)})
    pipe.execute()
    flooded = time.monotonic()
    eventually(lambda: cluster.replicas(namespace, DEPLOYMENT), what="replicas rise")
    rose = time.monotonic() - flooded
    peak = eventually(
        lambda: (cluster.replicas(namespace, DEPLOYMENT) or 0) >= 4 and runner.running(DEPLOYMENT),
        what="workers",
    )
    eventually(
        lambda: drained(redis_client), within=150, what=f"the workers to drain 50K entries ({runner.errors})"
    )
    assert redis_client.xlen(f"{STREAM}:dlq") == 0
    consumers = redis_client.xinfo_consumers(STREAM, "billing")
    assert len(consumers) >= 2, "the backlog was shared by several workers"
    assert all(consumer["pending"] == 0 for consumer in consumers)

    eventually(
        lambda: cluster.replicas(namespace, DEPLOYMENT) == 0,
        within=60,
        what="scaled to zero after the window",
    )
    eventually(lambda: runner.running(DEPLOYMENT) == 0, within=60, what="workers stopped")
    eventually(
        lambda: any(r == "ScaledDown" and "-> 0:" in m for _, r, m in cluster.events(namespace, "orders")),
        what="the ScaledDown Event to zero",
    )
    print(f"\n50K flood: replicas rose {rose:.2f}s after the last XADD, {peak} workers ran at once")

    redis_client.xadd(STREAM, {"n": "one more"})

    def woken() -> bool:
        replicas = cluster.replicas(namespace, DEPLOYMENT)
        if replicas == 1:
            return True
        # What the operator saw, should it not wake the group (a failure then says why).
        status = (cluster.pipeline(namespace, "orders") or {}).get("status") or {}
        groups, conditions = status.get("groups"), status.get("conditions")
        figures = [
            line
            for line in operator.metrics().splitlines()
            if line.startswith(("streampipe_operator_reconciles_total", "streampipe_operator_group_backlog"))
        ]
        raise AssertionError(
            f"replicas {replicas}; status groups {groups}, conditions {conditions}; "
            f"XINFO GROUPS {redis_client.xinfo_groups(STREAM)}; operator metrics {figures}"
        )

    eventually(woken, what="one entry wakes the group")
    eventually(lambda: drained(redis_client), within=60, what="the entry processed")
    eventually(lambda: cluster.replicas(namespace, DEPLOYMENT) == 0, within=60, what="back to zero")
    status = cluster.status(namespace, "orders")
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.status == "True"
    assert runner.errors == []
