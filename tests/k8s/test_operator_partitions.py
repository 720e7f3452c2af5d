"""A partitioned StreamPipeline (``spec.partitions``) through the operator, on the real API server and real
Valkey / Redis: groups on every partition, scaling on the summed backlog, per-partition status, the
Partitions printer column, the workers' environment, and deletion of every partition's keys.
No kubelet runs here (see test_operator_lifecycle.py); partitioned workers run in tests/redis.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

import redis
from streampipe_worker.ownership import PartitionLease, PartitionLeases
from streampipe_worker.partitions import PartitionLayout
from tests.support.controlplane import Kubectl
from tests.support.operator_process import Cluster, eventually, pipeline_manifest, worker_group

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

LAYOUT = PartitionLayout("orders", 4)


def partitioned(name: str, namespace: str, url: str, **spec: object) -> dict[str, object]:
    return pipeline_manifest(
        name,
        namespace,
        url,
        stream=LAYOUT.base,
        partitions={"count": LAYOUT.count, "key": "customer"},
        groups=[worker_group("billing", startId="0", scaling={"backlogPerReplica": 10, "maxReplicas": 8})],
        **spec,
    )


@pytest.mark.usefixtures("operator")
def test_partitioned_pipeline_groups_scaling_status_and_deletion(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    # 7 + 11 + 0 + 9 = 27 entries: 3 replicas at 10 per replica (no one partition would ask for 2).
    for index, count in enumerate([7, 11, 0, 9]):
        for n in range(count):
            redis_client.xadd(LAYOUT.stream(index), {"customer": f"c{n}"})
    kubectl.apply(partitioned("orders", namespace, redis_url, deletionPolicy="Delete"))

    def partitions_reported() -> list[dict[str, object]] | None:
        body = cluster.pipeline(namespace, "orders")
        status = (body or {}).get("status") or {}
        parts: list[dict[str, object]] | None = status.get("partitions")
        return parts if parts and status.get("backlog") == 27 else None

    parts = eventually(partitions_reported, what="per-partition status with the summed backlog")
    assert [
        (p["index"], p["stream"], p["slot"], p["length"], p["lag"], p.get("pending", 0)) for p in parts
    ] == [(i, LAYOUT.stream(i), LAYOUT.slot(i), n, n, 0) for i, n in enumerate([7, 11, 0, 9])]
    for stream in LAYOUT.streams:
        assert [g["name"] for g in redis_client.xinfo_groups(stream)] == ["billing"]
    eventually(lambda: cluster.replicas(namespace, "orders-billing") == 3, what="3 replicas")

    deployment = cluster.deployment(namespace, "orders-billing")
    assert deployment is not None
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["STREAMPIPE_STREAM"], env["STREAMPIPE_PARTITIONS"]) == ("orders", "4")
    assert "STREAMPIPE_DEAD_LETTER_STREAM" not in env  # each partition has its own
    # The default view's columns, all filled here, by their headers.
    header, row = kubectl("get", "spipe", "-n", namespace, "orders").stdout.splitlines()
    printed = dict(zip(header.split(), row.split(), strict=True))
    assert (printed["STREAM"], printed["PARTITIONS"], printed["BACKLOG"]) == ("orders", "4", "27")
    assert cluster.reasons(namespace, "orders").count("GroupCreated") == 1  # one Event for 4 partitions

    for index in range(LAYOUT.count):
        redis_client.xadd(LAYOUT.dead_letter(index), {"n": "dead"})
    cluster.delete_pipeline(namespace, "orders")
    eventually(lambda: cluster.pipeline(namespace, "orders") is None, what="pipeline gone")
    keys = [key for i in range(LAYOUT.count) for key in (LAYOUT.stream(i), LAYOUT.dead_letter(i))]
    assert redis_client.exists(*keys) == 0


@pytest.mark.usefixtures("operator")
def test_per_key_ordering_caps_workers_and_reports_each_partitions_owner(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    # 80 entries at 10 per replica would ask for 8 workers; with PerKey 4 partitions cap them at 4.
    for index in range(LAYOUT.count):
        for n in range(20):
            redis_client.xadd(LAYOUT.stream(index), {"customer": f"c{n}"})
    manifest = partitioned("orders", namespace, redis_url)
    manifest["spec"]["partitions"] |= {"ordering": "PerKey", "leaseDuration": "4s"}  # type: ignore[index]
    kubectl.apply(manifest)
    eventually(lambda: cluster.replicas(namespace, "orders-billing") == 4, what="4 replicas (the count)")
    deployment = cluster.deployment(namespace, "orders-billing")
    assert deployment is not None
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    ordering = ("STREAMPIPE_ORDERING", "STREAMPIPE_PARTITION_KEY", "STREAMPIPE_LEASE_TTL")
    assert [env[name] for name in ordering] == ["PerKey", "customer", "4s"]

    # A worker (here the lease primitive itself, as a worker pod would use it) takes partition 2.
    async def take() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        leases = PartitionLeases(client, LAYOUT, "billing", "orders-billing-abc12", ttl_ms=60_000)
        assert isinstance(await leases.acquire(2), PartitionLease)
        await client.aclose()

    asyncio.run(take())

    def owners() -> list[object] | None:
        status = (cluster.pipeline(namespace, "orders") or {}).get("status") or {}
        found = [p.get("owner") for p in status.get("partitions") or []]
        return found if found == [None, None, "orders-billing-abc12", None] else None

    eventually(owners, what="the owner of partition 2 in status")
