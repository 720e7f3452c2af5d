"""Scaling decisions on real backlogs, seen where they land: the worker Deployment's ``spec.replicas``
(changed through ``/scale``), its Events and the pipeline's status. No workers run here: the tests
produce and acknowledge entries themselves, so the backlog is exactly what they make it.

``test_reaction_time_is_recorded`` prints the time from a backlog crossing the threshold to the
Deployment's replicas changing (pollInterval 1s); it records the figure and asserts no bound.
"""

from __future__ import annotations

import statistics
import time

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

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(150)]

STREAM = "{orders}:events"
DEPLOYMENT = "orders-billing"


def produce(client: redis.Redis, count: int, stream: str = STREAM) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 1000)):
            pipe.xadd(stream, {"n": str(n)})
        ids.extend(pipe.execute())
    return ids


def consume_all(client: redis.Redis, group: str = "billing", ack: bool = True) -> int:
    """Read everything new as consumer ``tester`` (and acknowledge it): what workers would do."""
    total = 0
    while True:
        reply = client.xreadgroup(group, "tester", {STREAM: ">"}, count=1000)
        if not reply or not reply[0][1]:
            return total
        ids = [entry_id for entry_id, _ in reply[0][1]]
        if ack:
            client.xack(STREAM, group, *ids)
        total += len(ids)


def replicas_are(cluster: Cluster, namespace: str, expected: int) -> bool:
    return cluster.replicas(namespace, DEPLOYMENT) == expected


@pytest.mark.usefixtures("operator")
def test_backlog_scales_up_at_once_down_after_the_window_and_wakes_past_activation(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    group = worker_group("billing", scaling={"activationBacklog": 10})
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=[group]))
    eventually(lambda: replicas_are(cluster, namespace, 0), what="Deployment at 0 (minReplicas 0, idle)")

    produce(redis_client, 5000)
    eventually(lambda: replicas_are(cluster, namespace, 4), what="scaled up to maxReplicas 4")
    assert "backlog 5000" in cluster.event(namespace, "orders", "ScaledUp")

    # All delivered, all but 5 acknowledged: a backlog of 5 is below activation, but pending entries
    # keep one replica to finish or reclaim them.
    consume_all(redis_client, ack=False)
    pending = [
        entry["message_id"] for entry in redis_client.xpending_range(STREAM, "billing", "-", "+", 5000)
    ]
    redis_client.xack(STREAM, "billing", *pending[:-5])
    eventually(lambda: replicas_are(cluster, namespace, 1), within=40, what="down to 1 while 5 are pending")
    assert "-> 1" in cluster.event(namespace, "orders", "ScaledDown")
    redis_client.xack(STREAM, "billing", *pending[-5:])
    eventually(
        lambda: replicas_are(cluster, namespace, 0), within=40, what="down to 0 once all is acknowledged"
    )

    # At zero, a backlog at or below activationBacklog does not wake the group; above it does.
    produce(redis_client, 10)

    def seen(backlog: int) -> bool:
        groups = cluster.status(namespace, "orders").groups
        return bool(groups) and groups[0].backlog == backlog

    eventually(lambda: seen(10), what="status backlog 10")
    # The pass that wrote this figure decided on it first: had it scaled, replicas would show it.
    assert replicas_are(cluster, namespace, 0)
    redis_client.xadd(STREAM, {"n": "the eleventh"})
    eventually(lambda: replicas_are(cluster, namespace, 1), what="the entry past activation wakes the group")


@pytest.mark.usefixtures("operator")
def test_null_lag_after_xdel_is_estimated_never_zero(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    ids = produce(redis_client, 3000)
    redis_client.xgroup_create(STREAM, "billing", id="0")
    reply = redis_client.xreadgroup("billing", "tester", {STREAM: ">"}, count=10)
    redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in reply[0][1]])
    redis_client.xdel(STREAM, ids[1500])  # inside the unread range: the server's lag becomes nil
    assert redis_client.xinfo_groups(STREAM)[0]["lag"] is None

    kubectl.apply(
        pipeline_manifest("orders", namespace, redis_url, groups=[worker_group("billing", startId="0")])
    )

    def estimated() -> bool:
        groups = cluster.status(namespace, "orders").groups
        return bool(groups) and groups[0].lag is not None

    eventually(estimated, what="a lag in status")
    group = cluster.status(namespace, "orders").groups[0]
    assert (group.lag, group.lag_estimated, group.backlog) == (2989, True, 2989)
    eventually(lambda: replicas_are(cluster, namespace, 3), what="3 replicas for 2989 entries")


@pytest.mark.usefixtures("operator")
def test_reaction_time_is_recorded(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """Seconds from the entry that makes the backlog exceed the threshold (activationBacklog 0, at
    zero replicas) to the Deployment's spec.replicas changing, pollInterval 1s. Recorded, not bounded."""
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url))
    eventually(lambda: replicas_are(cluster, namespace, 0), what="Deployment at 0")
    samples: list[float] = []
    for _ in range(5):
        eventually(lambda: replicas_are(cluster, namespace, 0), within=40, what="back at 0")
        # Land at a random phase of the operator's poll cycle, like real traffic.
        time.sleep(0.37 * len(samples))
        crossed = time.monotonic()
        redis_client.xadd(STREAM, {"n": "1"})
        while not replicas_are(cluster, namespace, 1):
            time.sleep(0.01)
        samples.append(time.monotonic() - crossed)
        consume_all(redis_client)
    print(
        f"\nbacklog over threshold -> replicas changed (pollInterval 1s), {len(samples)} samples: "
        f"median {statistics.median(samples):.3f}s, max {max(samples):.3f}s, "
        f"all {', '.join(f'{s:.3f}' for s in samples)}"
    )
    assert len(samples) == 5


def test_scaling_metrics_are_exported(
    kubectl: Kubectl, cluster: Cluster, redis_url: str, redis_client: redis.Redis, operator: OperatorProcess
) -> None:
    namespace = operator.namespaces[0]
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url))
    eventually(lambda: replicas_are(cluster, namespace, 0), what="Deployment at 0")
    produce(redis_client, 2500)
    eventually(lambda: replicas_are(cluster, namespace, 3), what="3 replicas")
    labels = f'namespace="{namespace}",pipeline="orders"'

    def exported() -> bool:
        text = operator.metrics()
        return (
            f'streampipe_operator_group_backlog{{group="billing",{labels}}} 2500.0' in text
            and f'streampipe_operator_group_desired_replicas{{group="billing",{labels}}} 3.0' in text
        )

    eventually(exported, what="backlog and replicas metrics")
    text = operator.metrics()
    assert f'streampipe_operator_scale_changes_total{{direction="up",group="billing",{labels}}}' in text
    assert f'streampipe_operator_reconciles_total{{{labels},result="ok"}}' in text
    assert f"streampipe_operator_pipeline_ready{{{labels}}} 1.0" in text
    assert "streampipe_operator_reconcile_duration_seconds_bucket" in text
