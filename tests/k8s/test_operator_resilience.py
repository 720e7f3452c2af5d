"""The operator when things go wrong or wear out: Redis stopped and back, refused credentials, the
operator killed mid-reconcile, consumers left behind, retention against unprocessed entries, and the
least RBAC it runs with (the list docs/operator.md gives the Helm chart)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

import redis
from tests.support.controlplane import Kubectl
from tests.support.operator_fixtures import OperatorFactory
from tests.support.operator_process import Cluster, forbidden_records, pipeline_manifest, worker_group
from tests.support.polling import eventually
from tests.support.servers import SERVER_IDS, ServerProcess

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(150)]

STREAM = "{orders}:events"
KINDS = SERVER_IDS


def condition(
    cluster: Cluster, namespace: str, type_: str = "Ready", name: str = "orders"
) -> tuple[str, str] | None:
    found = cluster.condition(namespace, name, type_)
    return None if found is None else (found.status, found.reason)


def resource_version(body: dict[str, Any] | None) -> str:
    assert body is not None
    return str(body["metadata"]["resourceVersion"])


@pytest.mark.parametrize("kind", KINDS)
def test_redis_stopped_is_reported_and_recovers_without_deployment_churn(
    *,
    kind: str,
    server_factory: Any,
    kubectl: Kubectl,
    cluster: Cluster,
    namespace: str,
    operator_factory: OperatorFactory,
) -> None:
    server: ServerProcess = server_factory(kind, "--appendonly", "yes")
    operator = operator_factory(namespace)
    group = worker_group("billing", scaling={"minReplicas": 1})
    kubectl.apply(pipeline_manifest("orders", namespace, server.url, groups=[group]))
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready")
    assert condition(cluster, namespace, "DurabilityAtRisk") == ("False", "AppendOnlyOn")
    eventually(lambda: cluster.replicas(namespace, "orders-billing") == 1, what="1 replica")
    before = resource_version(cluster.deployment(namespace, "orders-billing"))

    server.stop()
    eventually(
        lambda: condition(cluster, namespace) == ("False", "RedisUnreachable"), what="RedisUnreachable"
    )
    assert condition(cluster, namespace, "RedisReachable") == ("False", "Unreachable")
    assert condition(cluster, namespace, "Scaling") == ("False", "Held")
    reachable = cluster.condition(namespace, "orders", "RedisReachable")
    assert reachable is not None
    assert f"127.0.0.1:{server.port}" in reachable.message
    assert cluster.event(namespace, "orders", "RedisUnreachable")
    assert operator.alive()

    server.restart()
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), within=90, what="Ready again")
    # Nothing touched the workers meanwhile: no scale to zero, no rollout.
    assert resource_version(cluster.deployment(namespace, "orders-billing")) == before
    assert cluster.event(namespace, "orders", "Reconciled")  # back to Ready: one Event
    assert cluster.reasons(namespace, "orders").count("Reconciled") == 1


@pytest.mark.parametrize("kind", KINDS)
def test_refused_and_missing_credentials(
    *,
    kind: str,
    server_factory: Any,
    kubectl: Kubectl,
    cluster: Cluster,
    namespace: str,
    operator_factory: OperatorFactory,
) -> None:
    server: ServerProcess = server_factory(kind, password="s3cret")
    operator_factory(namespace)
    url = f"redis://127.0.0.1:{server.port}/0"
    manifest = pipeline_manifest("orders", namespace, url)
    manifest["spec"]["redis"]["auth"] = {"secretName": "redis-creds"}
    kubectl.apply(manifest)
    eventually(
        lambda: condition(cluster, namespace) == ("False", "CredentialsMissing"), what="CredentialsMissing"
    )
    message = cluster.condition(namespace, "orders", "Ready")
    assert message is not None
    assert f"Secret {namespace}/redis-creds not found" in message.message

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-creds", "namespace": namespace},
        "data": {"password": base64.b64encode(b"wrong").decode()},
    }
    kubectl.apply(secret)
    eventually(
        lambda: condition(cluster, namespace) == ("False", "RedisAuthFailed"), within=60, what="AuthFailed"
    )
    assert condition(cluster, namespace, "RedisReachable") == ("False", "AuthFailed")
    secret["data"] = {"password": base64.b64encode(b"s3cret").decode()}
    kubectl.apply(secret)
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), within=60, what="Ready")
    deployment = cluster.deployment(namespace, "orders-billing")
    assert deployment is not None
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "STREAMPIPE_REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "redis-creds", "key": "password"}},
    } in env
    assert "s3cret" not in str(deployment)


def test_operator_killed_mid_reconcile_converges_and_a_second_pass_writes_nothing(
    *,
    kubectl: Kubectl,
    cluster: Cluster,
    namespace: str,
    redis_url: str,
    operator_factory: OperatorFactory,
    redis_client: redis.Redis,
) -> None:
    operator = operator_factory(namespace)
    groups = [
        worker_group(name, scaling={"minReplicas": 1}) for name in ("billing", "shipping", "audit", "search")
    ]
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=groups))
    # Kill it the moment it has started writing: some groups and Deployments exist, others do not.
    eventually(lambda: cluster.deployments(namespace), every=0.005, what="a first Deployment")
    operator.kill()
    operator.start()

    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready after restart")
    names = sorted(d["metadata"]["name"] for d in cluster.deployments(namespace))
    assert names == ["orders-audit", "orders-billing", "orders-search", "orders-shipping"]
    assert {g["name"] for g in redis_client.xinfo_groups(STREAM)} == {
        "billing",
        "shipping",
        "audit",
        "search",
    }
    for name in names:
        eventually(lambda n=name: cluster.replicas(namespace, n) == 1, what=f"{name} at 1")

    # Converged: passes keep running every second and change nothing (no write storm).
    def versions() -> list[str]:
        return [resource_version(cluster.pipeline(namespace, "orders"))] + [
            resource_version(d)
            for d in sorted(cluster.deployments(namespace), key=lambda d: d["metadata"]["name"])
        ]

    eventually(lambda: cluster.status(namespace, "orders").workers == "0/4", what="status settled")
    settled = versions()
    events = len(cluster.events(namespace))
    reconciles = _reconciles(operator.metrics(), namespace)
    eventually(lambda: _reconciles(operator.metrics(), namespace) >= reconciles + 4, what="four more passes")
    assert versions() == settled
    assert len(cluster.events(namespace)) == events


def _reconciles(metrics: str, namespace: str) -> float:
    prefix = f'streampipe_operator_reconciles_total{{namespace="{namespace}",pipeline="orders",result="ok"}} '
    line = next((line for line in metrics.splitlines() if line.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else 0.0


@pytest.mark.usefixtures("operator")
def test_consumers_gone_and_owing_nothing_are_removed_never_one_with_pending(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, retry={"claimIdle": "1s"}))
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready")
    for n in range(2):
        redis_client.xadd(STREAM, {"n": str(n)})
    done = redis_client.xreadgroup("billing", "orders-billing-gone", {STREAM: ">"}, count=1)
    redis_client.xack(STREAM, "billing", done[0][1][0][0])
    redis_client.xreadgroup("billing", "orders-billing-crashed", {STREAM: ">"}, count=1)

    def consumers() -> dict[str, int]:
        return {c["name"]: c["pending"] for c in redis_client.xinfo_consumers(STREAM, "billing")}

    eventually(lambda: "orders-billing-gone" not in consumers(), within=60, what="the idle consumer removed")
    assert consumers() == {"orders-billing-crashed": 1}
    assert "orders-billing-gone" in cluster.event(namespace, "orders", "ConsumerRemoved")
    assert cluster.reasons(namespace, "orders").count("ConsumerRemoved") == 1


@pytest.mark.usefixtures("operator")
def test_retention_never_trims_an_unprocessed_entry_and_says_so(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    manifest = pipeline_manifest(
        "orders",
        namespace,
        redis_url,
        groups=[worker_group("billing", startId="0")],
        retention={"maxLength": 100, "interval": "1s", "protectUnprocessed": True},
        deadLetter={"maxLength": 100},
    )
    kubectl.apply(manifest)
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready")
    pipe = redis_client.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd(STREAM, {"n": str(n)})
    for n in range(500):
        pipe.xadd(f"{STREAM}:dlq", {"n": str(n)})
    ids = pipe.execute()[:1000]
    redis_client.xreadgroup("billing", "orders-billing-a", {STREAM: ">"}, count=300)  # 300 pending

    eventually(
        lambda: condition(cluster, namespace, "RetentionHeld") == ("True", "UnprocessedEntries"), what="held"
    )
    held = cluster.condition(namespace, "orders", "RetentionHeld")
    assert held is not None
    assert "900 entries" in held.message
    assert "group billing has unacknowledged entries" in held.message
    assert "900 entries" in cluster.event(namespace, "orders", "RetentionHeld")
    # The dead-letter stream is trimmed to its own maxLength (approximately: whole nodes).
    eventually(lambda: redis_client.xlen(f"{STREAM}:dlq") < 200, what="dead letters trimmed")
    assert redis_client.xlen(f"{STREAM}:dlq") >= 100
    assert redis_client.xlen(STREAM) == 1000

    # 200 acknowledged: trimming may now go up to (never past) the oldest pending entry.
    redis_client.xack(STREAM, "billing", *ids[:200])
    eventually(lambda: redis_client.xlen(STREAM) <= 800, what="trimmed to the oldest pending entry")
    assert redis_client.xrange(STREAM, ids[200], ids[200]), "the oldest pending entry was trimmed"
    pending = redis_client.xpending_range(STREAM, "billing", "-", "+", 1000)
    assert len(pending) == 100
    assert all(redis_client.xrange(STREAM, p["message_id"], p["message_id"]) for p in pending)

    # Everything processed: the policy applies in full and nothing is held back.
    redis_client.xack(STREAM, "billing", *ids[200:300])
    while reply := redis_client.xreadgroup("billing", "orders-billing-a", {STREAM: ">"}, count=500):
        redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in reply[0][1]])
    eventually(lambda: redis_client.xlen(STREAM) < 200, what="trimmed to about maxLength")
    eventually(
        lambda: condition(cluster, namespace, "RetentionHeld") == ("False", "NotHeld"), what="not held"
    )
    stream_status = eventually(lambda: cluster.status(namespace, "orders").stream, what="stream status")
    eventually(
        lambda: (cluster.status(namespace, "orders").stream or stream_status).trimmed_total >= 800,
        what="trimmedTotal",
    )


# The operator's rights, exactly as docs/operator.md lists them for a namespace-scoped install.
OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["streampipe.dev"], "resources": ["streampipelines"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["streampipe.dev"], "resources": ["streampipelines/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]


def test_runs_with_only_the_documented_rbac(
    *,
    kubectl: Kubectl,
    cluster: Cluster,
    namespace: str,
    service_account: Any,
    operator_factory: OperatorFactory,
    server_factory: Any,
) -> None:
    """Every call the operator makes (watch, finalizer, status, Secret, create, drift patch, /scale,
    Events, delete) works with these rules and nothing else."""
    server: ServerProcess = server_factory("valkey9", password="s3cret")
    # A Role in the pipeline's namespace, no cluster-wide rights at all.
    kubeconfig: Path = service_account(namespace, "streampipe-operator", rules=OPERATOR_RULES)
    operator = operator_factory(namespace, kubeconfig=kubeconfig)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis-creds", "namespace": namespace},
            "stringData": {"password": "s3cret"},
        }
    )
    manifest = pipeline_manifest(
        "orders", namespace, f"redis://127.0.0.1:{server.port}/0", deletionPolicy="Delete"
    )
    manifest["spec"]["redis"]["auth"] = {"secretName": "redis-creds"}
    kubectl.apply(manifest)
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready")
    with server.client() as client:
        for n in range(1500):
            client.xadd(STREAM, {"n": str(n)})
        eventually(lambda: cluster.replicas(namespace, "orders-billing") == 2, what="scaled through /scale")
        kubectl("set", "image", "deployment/orders-billing", "-n", namespace, "worker=other:1")
        assert cluster.event(namespace, "orders", "DriftReverted")
        cluster.delete_pipeline(namespace, "orders")
        eventually(lambda: cluster.pipeline(namespace, "orders") is None, what="finalizer removed")
        assert client.exists(STREAM) == 0
    records = operator.log_records()
    assert records  # the log is there and was read
    assert forbidden_records(records) == []


@pytest.mark.usefixtures("operator")
def test_retention_by_age_trims_processed_entries_older_than_max_age(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    kubectl.apply(
        pipeline_manifest(
            "orders",
            namespace,
            redis_url,
            groups=[worker_group("billing", startId="0")],
            retention={"maxAge": "2s", "interval": "1s"},
        )
    )
    eventually(lambda: condition(cluster, namespace) == ("True", "Reconciled"), what="Ready")
    old = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(300)]
    while reply := redis_client.xreadgroup("billing", "orders-billing-a", {STREAM: ">"}, count=500):
        redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in reply[0][1]])
    unread = redis_client.xadd(STREAM, {"n": "not read yet"})
    # Everything before the unread entry ages out and goes; the unread one stays however old it gets.
    eventually(lambda: redis_client.xlen(STREAM) == 1, within=60, what="aged entries trimmed")
    assert not redis_client.xrange(STREAM, old[-1], old[-1])
    # Once the unread entry is older than maxAge too, protection holds it (and says so).
    eventually(
        lambda: condition(cluster, namespace, "RetentionHeld") == ("True", "UnprocessedEntries"), what="held"
    )
    assert [entry_id for entry_id, _ in redis_client.xrange(STREAM)] == [unread]
    status = eventually(lambda: cluster.status(namespace, "orders").stream, what="stream status")
    eventually(
        lambda: (cluster.status(namespace, "orders").stream or status).trimmed_total == 300,
        what="trimmedTotal 300",
    )
