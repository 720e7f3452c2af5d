"""The operator on the real API server and real Valkey / Redis: create, drift, conflicts, deletion.

Each test runs ``streampipe operator run`` as a process for its own namespace. No kubelet runs here,
so no worker pod starts: these tests look at what the operator wrote (groups on the server,
Deployments, ``spec.replicas``, status, Events). Runs with workers are in test_operator_drain.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

import redis
from tests.support.controlplane import Kubectl
from tests.support.k8s_fixtures import CRD_NAME
from tests.support.operator_process import (
    Cluster,
    OperatorProcess,
    eventually,
    pipeline_manifest,
    worker_group,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

STREAM = "{orders}:events"


def ready(
    cluster: Cluster, namespace: str, name: str, status: str = "True", reason: str | None = None
) -> bool:
    condition = cluster.condition(namespace, name, "Ready")
    if condition is None or condition.status != status:
        return False
    return reason is None or condition.reason == reason


def groups_on(client: redis.Redis, stream: str = STREAM) -> dict[str, dict[str, Any]]:
    try:
        return {g["name"]: g for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return {}


@pytest.mark.usefixtures("operator")
def test_create_makes_groups_deployments_and_ready(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    first = redis_client.xadd(STREAM, {"n": "0"})
    kubectl.apply(
        pipeline_manifest(
            "orders",
            namespace,
            redis_url,
            groups=[
                worker_group("billing", startId="0"),
                worker_group("shipping", scaling={"minReplicas": 1}),
            ],
        )
    )
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready=True")

    groups = groups_on(redis_client)
    assert set(groups) == {"billing", "shipping"}
    assert groups["billing"]["last-delivered-id"] == "0-0"  # startId 0: the entry before is unread
    assert groups["shipping"]["last-delivered-id"] == first  # startId $: only what comes after

    body = cluster.pipeline(namespace, "orders")
    assert body is not None
    status = api_status(body)
    assert status["observedGeneration"] == body["metadata"]["generation"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["RedisReachable"] == ("True", "Connected")
    assert conditions["GroupsReady"] == ("True", "AllGroupsExist")
    # The test servers run without an append-only file: that is reported, not hidden.
    assert conditions["DurabilityAtRisk"] == ("True", "AppendOnlyOff")
    assert status["server"]["family"] in {"valkey", "redis"}
    billing = next(g for g in status["groups"] if g["name"] == "billing")
    assert billing["lag"] == 1

    for group, replicas in (("billing", 1), ("shipping", 1)):
        deployment = eventually(
            lambda g=group: cluster.deployment(namespace, f"orders-{g}"), what="Deployment"
        )
        meta = deployment["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "streampipe-operator"
        assert meta["labels"]["streampipe.dev/pipeline"] == "orders"
        assert meta["labels"]["streampipe.dev/group"] == group
        owner = meta["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "StreamPipeline",
            "orders",
            body["metadata"]["uid"],
            True,
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["STREAMPIPE_STREAM"] == STREAM
        assert env["STREAMPIPE_GROUP"] == group
        # billing has one entry to process (startId 0) and shipping a floor of one.
        eventually(
            lambda g=group, r=replicas: cluster.replicas(namespace, f"orders-{g}") == r, what="replicas"
        )

    reasons = cluster.reasons(namespace, "orders")
    assert reasons.count("GroupCreated") == 2
    assert reasons.count("DeploymentCreated") == 2
    printed = kubectl("get", "spipe", "-n", namespace, "orders", "-o", "wide").stdout
    assert "True" in printed.splitlines()[1]
    assert STREAM in printed.splitlines()[1]


def api_status(body: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = body.get("status") or {}
    return status


def condition_of(cluster: Cluster, namespace: str, type_: str) -> tuple[str, str] | None:
    found = cluster.condition(namespace, "orders", type_)
    return None if found is None else (found.status, found.reason)


@pytest.mark.usefixtures("operator")
def test_server_settings_changed_at_runtime_show_on_the_next_pass(
    kubectl: Kubectl, cluster: Cluster, namespace: str, server_factory: Any
) -> None:
    """Durability and eviction are read every pass: a CONFIG SET on the running server shows in
    status without a reconnect (the operator's client stays the same)."""
    server = server_factory("valkey9")
    admin = server.client()
    kubectl.apply(pipeline_manifest("orders", namespace, server.url))
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready=True")
    assert condition_of(cluster, namespace, "DurabilityAtRisk") == ("True", "AppendOnlyOff")
    assert condition_of(cluster, namespace, "EvictionRisk") == ("False", "StreamsNotEvicted")
    clients_before = {c["id"] for c in admin.client_list() if c.get("name", "").startswith("streampipe")}

    admin.config_set("appendonly", "yes")
    admin.config_set("appendfsync", "no")
    eventually(
        lambda: condition_of(cluster, namespace, "DurabilityAtRisk") == ("True", "AppendFsyncNo"),
        what="AppendFsyncNo",
    )
    admin.config_set("maxmemory-policy", "allkeys-lru")
    eventually(
        lambda: condition_of(cluster, namespace, "EvictionRisk") == ("True", "KeysEvictable"),
        what="KeysEvictable",
    )
    assert cluster.event(namespace, "orders", "EvictionRisk")
    admin.config_set("appendfsync", "everysec")
    eventually(
        lambda: condition_of(cluster, namespace, "DurabilityAtRisk") == ("False", "AppendOnlyOn"),
        what="AppendOnlyOn",
    )
    body = cluster.pipeline(namespace, "orders")
    assert body is not None
    server_status = api_status(body)["server"]
    assert (server_status["maxmemoryPolicy"], server_status["appendonly"]) == ("allkeys-lru", True)
    assert server_status["appendfsync"] == "everysec"
    clients_after = {c["id"] for c in admin.client_list() if c.get("name", "").startswith("streampipe")}
    assert clients_before & clients_after  # the same connection: seen without reconnecting


@pytest.mark.usefixtures("operator")
def test_worker_pods_pass_pod_security_restricted(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str
) -> None:
    """The rendered pod template is admitted where Pod Security "restricted" is enforced."""
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url))
    deployment = eventually(lambda: cluster.deployment(namespace, "orders-billing"), what="Deployment")
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # No controller-manager here makes the namespace's default ServiceAccount; admission needs one.
    kubectl("create", "serviceaccount", "default", "-n", namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-billing-probe", "namespace": namespace},
        "spec": deployment["spec"]["template"]["spec"],
    }
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert done.returncode == 0, done.stderr
    assert "would violate" not in done.stderr
    # The check is real: the same pod with privilege escalation allowed is refused.
    loose = copy.deepcopy(pod)
    loose["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(loose), check=False)
    assert refused.returncode != 0
    assert "allowPrivilegeEscalation" in refused.stderr


@pytest.mark.usefixtures("operator")
def test_group_destroyed_by_hand_is_recreated_at_its_last_delivered_id(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    kubectl.apply(
        pipeline_manifest("orders", namespace, redis_url, groups=[worker_group("billing", startId="0")])
    )
    eventually(lambda: "billing" in groups_on(redis_client), what="group billing")
    ids = [redis_client.xadd(STREAM, {"n": str(i)}) for i in range(10)]
    read = redis_client.xreadgroup("billing", "c1", {STREAM: ">"}, count=6)
    delivered = [entry_id for entry_id, _ in read[0][1]]
    redis_client.xack(STREAM, "billing", *delivered)
    assert delivered[-1] == ids[5]

    def status_knows_position() -> bool:
        groups = cluster.status(namespace, "orders").groups
        return bool(groups) and groups[0].last_delivered_id == ids[5]

    eventually(status_knows_position, what="status.groups[0].lastDeliveredId")
    redis_client.xgroup_destroy(STREAM, "billing")
    recreated = eventually(lambda: groups_on(redis_client).get("billing"), what="group recreated")
    assert recreated["last-delivered-id"] == ids[5]  # not "$": the 4 unread entries are still to come
    message = cluster.event(namespace, "orders", "GroupRecreated")
    assert ids[5] in message
    rest = redis_client.xreadgroup("billing", "c2", {STREAM: ">"}, count=100)
    assert [entry_id for entry_id, _ in rest[0][1]] == ids[6:]


@pytest.mark.usefixtures("operator")
def test_drift_is_reverted_and_replicas_belong_to_the_scaler(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str
) -> None:
    kubectl.apply(
        pipeline_manifest(
            "orders",
            namespace,
            redis_url,
            groups=[
                worker_group("billing"),
                worker_group("manual", scaling={"minReplicas": 1, "mode": "none"}),
            ],
        )
    )
    deployment = eventually(lambda: cluster.deployment(namespace, "orders-billing"), what="Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready=True")

    kubectl("set", "image", "deployment/orders-billing", "-n", namespace, "worker=evil/miner:latest")
    kubectl("set", "env", "deployment/orders-billing", "-n", namespace, "STREAMPIPE_GROUP=other")

    def restored() -> bool:
        current = cluster.deployment(namespace, "orders-billing")
        assert current is not None
        container = current["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item.get("value") for item in container["env"]}
        return container["image"] == image and env["STREAMPIPE_GROUP"] == "billing"

    eventually(restored, what="the image and env put back")
    assert cluster.event(namespace, "orders", "DriftReverted")

    # A change of the spec is an update, not drift.
    upgraded = worker_group("billing", image="registry.example.com/streampipe/worker:test-2")
    manual = worker_group("manual", scaling={"minReplicas": 1, "mode": "none"})
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=[upgraded, manual]))
    assert "containers[0].image" in cluster.event(namespace, "orders", "DeploymentUpdated")
    current = cluster.deployment(namespace, "orders-billing")
    assert current is not None
    assert current["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":test-2")
    assert cluster.reasons(namespace, "orders").count("DriftReverted") == 1

    # Replicas of a native group are the scaler's: a hand-made scale-up is undone after the window.
    kubectl("scale", "deployment/orders-billing", "-n", namespace, "--replicas=3")
    eventually(lambda: cluster.replicas(namespace, "orders-billing") == 0, what="scaled back to 0")
    # With scaling.mode none they are left alone.
    assert cluster.replicas(namespace, "orders-manual") == 1
    kubectl("scale", "deployment/orders-manual", "-n", namespace, "--replicas=3")
    eventually(lambda: cluster.status(namespace, "orders").groups[1].replicas == 3, what="status sees 3")
    assert cluster.replicas(namespace, "orders-manual") == 3


def test_a_second_pipeline_on_the_same_stream_is_a_conflict(
    kubectl: Kubectl, cluster: Cluster, redis_url: str, redis_client: redis.Redis, operator: OperatorProcess
) -> None:
    namespace = operator.namespaces[0]
    kubectl.apply(pipeline_manifest("first", namespace, redis_url))
    eventually(lambda: ready(cluster, namespace, "first"), what="first Ready")
    kubectl.apply(pipeline_manifest("second", namespace, redis_url, groups=[worker_group("audit")]))
    eventually(lambda: ready(cluster, namespace, "second", "False", "Conflict"), what="second Conflict")
    condition = cluster.condition(namespace, "second", "Ready")
    assert condition is not None
    assert f"StreamPipeline {namespace}/first" in condition.message
    assert ready(cluster, namespace, "first")
    assert cluster.deployment(namespace, "second-audit") is None
    assert "audit" not in groups_on(redis_client)
    assert f"{namespace}/first" in cluster.event(namespace, "second", "Conflict")

    # When the first goes (Retain), the second owns the stream.
    cluster.delete_pipeline(namespace, "first")
    eventually(lambda: cluster.pipeline(namespace, "first") is None, what="first deleted")
    eventually(lambda: ready(cluster, namespace, "second"), what="second Ready")
    assert "audit" in groups_on(redis_client)
    assert operator.alive()


@pytest.mark.usefixtures("operator")
def test_deletion_retain_keeps_the_data(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url))
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready")
    body = cluster.pipeline(namespace, "orders")
    assert body is not None
    assert "streampipe.dev/finalizer" in body["metadata"]["finalizers"]
    redis_client.xadd(STREAM, {"n": "1"})
    redis_client.xadd(f"{STREAM}:dlq", {"n": "dead"})
    cluster.delete_pipeline(namespace, "orders")
    eventually(lambda: cluster.pipeline(namespace, "orders") is None, what="pipeline gone")
    assert redis_client.xlen(STREAM) == 1
    assert redis_client.xlen(f"{STREAM}:dlq") == 1
    assert "billing" in groups_on(redis_client)
    assert STREAM in cluster.event(namespace, "orders", "DataRetained")


@pytest.mark.usefixtures("operator")
def test_deletion_delete_refuses_while_another_pipeline_uses_the_stream(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, deletionPolicy="Delete"))
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready")
    kubectl.apply(pipeline_manifest("copy", namespace, redis_url, deletionPolicy="Delete"))
    eventually(lambda: ready(cluster, namespace, "copy", "False", "Conflict"), what="copy Conflict")
    redis_client.xadd(STREAM, {"n": "1"})
    redis_client.xadd(f"{STREAM}:dlq", {"n": "dead"})

    cluster.delete_pipeline(namespace, "orders")
    eventually(
        lambda: ready(cluster, namespace, "orders", "False", "DeletionBlocked"), what="DeletionBlocked"
    )
    condition = cluster.condition(namespace, "orders", "Ready")
    assert condition is not None
    assert f"{namespace}/copy" in condition.message
    assert cluster.pipeline(namespace, "orders") is not None
    assert redis_client.exists(STREAM, f"{STREAM}:dlq") == 2

    # The duplicate goes first, with Retain (it never owned the data) ...
    kubectl(
        "patch",
        "spipe",
        "copy",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"deletionPolicy":"Retain"}}',
    )
    cluster.delete_pipeline(namespace, "copy")
    eventually(lambda: cluster.pipeline(namespace, "copy") is None, what="copy deleted")
    # ... then the owner's Delete goes through: stream, its groups and the dead letters are gone.
    eventually(lambda: cluster.pipeline(namespace, "orders") is None, within=60, what="orders deleted")
    assert redis_client.exists(STREAM, f"{STREAM}:dlq") == 0
    assert STREAM in cluster.event(namespace, "orders", "DataDeleted")


@pytest.mark.usefixtures("crd_installed")
def test_invalid_spec_that_slipped_past_the_schema(
    kubectl: Kubectl, cluster: Cluster, redis_url: str, operator: OperatorProcess
) -> None:
    """An object stored under a laxer CRD (an older version of it) is reported, not acted on."""
    namespace = operator.namespaces[0]
    crd_installed = CRD_NAME
    crd = kubectl.json("get", "crd", crd_installed)
    original = {key: copy.deepcopy(crd[key]) for key in ("apiVersion", "kind", "spec")}
    original["metadata"] = {"name": crd_installed}
    lax = copy.deepcopy(original)
    schema = lax["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    scaling = schema["properties"]["spec"]["properties"]["groups"]["items"]["properties"]["scaling"]
    assert scaling.pop("x-kubernetes-validations")
    apply = ("apply", "--server-side", "--force-conflicts", "-f", "-")
    try:
        kubectl(*apply, input=json.dumps(lax))
        manifest = pipeline_manifest(
            "orders",
            namespace,
            redis_url,
            groups=[worker_group("billing", scaling={"minReplicas": 5, "maxReplicas": 2})],
        )
        eventually(
            lambda: kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False).returncode == 0,
            what="the laxer CRD in effect",
        )
    finally:
        kubectl(*apply, input=json.dumps(original))
    eventually(lambda: ready(cluster, namespace, "orders", "False", "InvalidSpec"), what="InvalidSpec")
    condition = cluster.condition(namespace, "orders", "Ready")
    assert condition is not None
    assert "maxReplicas" in condition.message
    assert cluster.deployment(namespace, "orders-billing") is None
    assert "maxReplicas" in cluster.event(namespace, "orders", "InvalidSpec")
    assert operator.alive()


@pytest.mark.usefixtures("operator")
def test_group_removed_from_the_spec_is_kept_under_retain_and_destroyed_under_delete(
    kubectl: Kubectl, cluster: Cluster, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    both = [worker_group("billing"), worker_group("shipping")]
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=both))
    eventually(lambda: cluster.deployment(namespace, "orders-shipping"), what="Deployment orders-shipping")
    eventually(lambda: ready(cluster, namespace, "orders"), what="Ready")

    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=[worker_group("billing")]))
    # Its workers go (the Deployment is the operator's), its data stays (the group may hold entries).
    eventually(lambda: cluster.deployment(namespace, "orders-shipping") is None, what="Deployment deleted")
    assert "orders-shipping" in cluster.event(namespace, "orders", "DeploymentDeleted")
    assert "deletionPolicy is Retain" in cluster.event(namespace, "orders", "GroupOrphaned")
    assert "shipping" in groups_on(redis_client)

    def reported() -> bool:
        condition = cluster.condition(namespace, "orders", "GroupsReady")
        return condition is not None and "shipping is on the stream but not in the spec" in condition.message

    eventually(reported, what="GroupsReady names the orphaned group")

    kubectl.apply(
        pipeline_manifest(
            "orders", namespace, redis_url, groups=[worker_group("billing")], deletionPolicy="Delete"
        )
    )
    eventually(lambda: "shipping" not in groups_on(redis_client), what="group destroyed")
    assert "shipping" in cluster.event(namespace, "orders", "GroupDestroyed")
    assert set(groups_on(redis_client)) == {"billing"}
