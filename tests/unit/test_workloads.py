"""Worker Deployment rendering (deployments.build_deployment) and drift detection, without a server.

The same manifests are created on a real API server in tests/k8s/test_operator_*.py; here the rules
that matter are pinned one by one: the env contract has one source, credentials are references,
Pod Security "restricted" holds, the template overrides land, and drift is what a person changed.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from streampipe_operator import api
from streampipe_operator.kube import deployments
from streampipe_worker.settings import WorkerSettings, load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UID = "0b7a3c5e-1111-4222-8333-944455556666"


def pipeline_from(document: dict[str, Any]) -> api.StreamPipeline:
    document = copy.deepcopy(document)
    document["metadata"].setdefault("uid", UID)
    return api.StreamPipeline.from_body(document)


def example(name: str) -> api.StreamPipeline:
    for document in yaml.safe_load_all((EXAMPLES / name).read_text()):
        if document and document.get("kind") == api.KIND:
            return pipeline_from(document)
    raise AssertionError(f"no StreamPipeline in {name}")


def minimal(**spec: Any) -> api.StreamPipeline:
    document: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "orders", "namespace": "shop", "uid": UID},
        "spec": {
            "redis": {"url": "redis://redis.shop.svc:6379/0"},
            "stream": "{orders}:events",
            "groups": [{"name": "billing", "handler": "shop.billing:handle", "image": "reg/billing:1"}],
            **spec,
        },
    }
    return pipeline_from(document)


def render(pipeline: api.StreamPipeline, group: int = 0, replicas: int = 2) -> dict[str, Any]:
    return deployments.build_deployment(pipeline, pipeline.spec.groups[group], replicas=replicas)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(deployment)["env"]}


def test_name_labels_selector_and_owner() -> None:
    deployment = render(minimal())
    meta = deployment["metadata"]
    assert meta["name"] == "orders-billing"
    assert meta["namespace"] == "shop"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "streampipe-worker",
        "app.kubernetes.io/instance": "orders-billing",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "streampipe",
        "app.kubernetes.io/managed-by": "streampipe-operator",
        "streampipe.dev/pipeline": "orders",
        "streampipe.dev/group": "billing",
    }
    assert deployment["spec"]["selector"] == {
        "matchLabels": {"streampipe.dev/pipeline": "orders", "streampipe.dev/group": "billing"}
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= deployment["spec"]["selector"]["matchLabels"].items()
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "streampipe.dev/v1alpha1",
            "kind": "StreamPipeline",
            "name": "orders",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert deployment["spec"]["replicas"] == 2


def test_longest_names_make_a_valid_dns_label() -> None:
    pipeline = minimal()
    long_group = pipeline.spec.groups[0].model_copy(update={"name": "g" * api.MAX_GROUP_NAME})
    long_pipeline = pipeline.model_copy(
        update={"metadata": pipeline.metadata.model_copy(update={"name": "p" * api.MAX_PIPELINE_NAME})}
    )
    name = deployments.build_deployment(long_pipeline, long_group, replicas=1)["metadata"]["name"]
    assert len(name) <= 63
    assert re.match(api.DNS_LABEL, name)


def test_env_names_come_from_the_worker_settings_and_read_back() -> None:
    """Every STREAMPIPE_* variable is a WorkerSettings field, and the worker accepts the values."""
    pipeline = example("full.yaml")
    env = env_of(render(pipeline))
    ours = {name: item for name, item in env.items() if name.startswith("STREAMPIPE_")}
    known = {WorkerSettings.env_name(field) for field in WorkerSettings.model_fields}
    assert set(ours) <= known
    literal = {name: item["value"] for name, item in ours.items() if "value" in item}
    # What a pod gets from Kubernetes objects, as the kubelet would fill it in.
    settings = load_settings(
        {**literal, "STREAMPIPE_CONSUMER": "orders-billing-7d9f-abcde", "STREAMPIPE_REDIS_PASSWORD": "pw"},
        tls_ca_file=None,
    )
    group = pipeline.spec.groups[0]
    assert settings.stream == "{orders}:events"
    assert settings.group == "billing"
    assert settings.handler == group.handler
    assert settings.batch_size == group.batch_size
    assert settings.concurrency == group.concurrency
    assert settings.redis_mode == "sentinel"
    assert settings.sentinel_master == "mymaster"
    assert settings.max_deliveries == pipeline.spec.retry.max_deliveries
    assert settings.backoff_initial == pipeline.spec.retry.backoff.initial.delta
    assert settings.claim_idle == pipeline.spec.retry.claim_idle.delta
    assert settings.dead_letter == "{orders}:dead"
    assert settings.dedupe_ttl == timedelta(hours=24)
    assert settings.metrics_port == deployments.METRICS_PORT
    assert settings.log_format == "json"
    assert env["STREAMPIPE_CONSUMER"] == {
        "name": "STREAMPIPE_CONSUMER",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_dedupe_ttl_reaches_the_worker_env_only_when_set() -> None:
    assert "STREAMPIPE_DEDUPE_TTL" not in env_of(render(minimal()))
    group = {"name": "billing", "handler": "shop.billing:handle", "image": "reg/billing:1"}
    pipeline = minimal(groups=[{**group, "dedupe": {"ttl": "36h"}}, {**group, "name": "audit"}])
    assert env_of(render(pipeline))["STREAMPIPE_DEDUPE_TTL"] == {
        "name": "STREAMPIPE_DEDUPE_TTL",
        "value": "36h",
    }
    assert "STREAMPIPE_DEDUPE_TTL" not in env_of(render(pipeline, group=1))
    literal = {name: item["value"] for name, item in env_of(render(pipeline)).items() if "value" in item}
    assert load_settings(literal).dedupe_ttl == timedelta(hours=36)


def test_the_operator_owns_groups_so_pods_never_create_them() -> None:
    for name in ("minimal.yaml", "full.yaml"):
        assert WorkerSettings.env_name("create_group") not in env_of(render(example(name)))


def test_worker_shutdown_grace_ends_before_the_pod_is_killed() -> None:
    grace_default = env_of(render(minimal()))["STREAMPIPE_SHUTDOWN_GRACE"]["value"]
    assert grace_default == "25s"
    pipeline = minimal(
        groups=[
            {
                "name": "billing",
                "handler": "shop.billing:handle",
                "image": "reg/billing:1",
                "template": {"terminationGracePeriodSeconds": 6},
            }
        ]
    )
    deployment = render(pipeline)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 6
    assert env_of(deployment)["STREAMPIPE_SHUTDOWN_GRACE"]["value"] == "3s"


def test_credentials_are_secret_references_never_values() -> None:
    pipeline = example("tls-acl.yaml")
    deployment = render(pipeline)
    env = env_of(deployment)
    assert env["STREAMPIPE_REDIS_PASSWORD"] == {
        "name": "STREAMPIPE_REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "redis-acl-user", "key": "password"}},
    }
    assert env["STREAMPIPE_REDIS_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-acl-user", "key": "username"}
    }
    assert "change-me" not in yaml.safe_dump(deployment)
    assert "password" not in env["STREAMPIPE_REDIS_URL"]["value"]


def test_tls_ca_comes_from_a_secret_volume() -> None:
    deployment = render(example("tls-acl.yaml"))
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == deployments.CA_VOLUME)
    assert volume["secret"] == {"secretName": "redis-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == deployments.CA_VOLUME)
    assert mount == {"name": "redis-ca", "mountPath": "/etc/streampipe/redis-ca", "readOnly": True}
    assert env_of(deployment)["STREAMPIPE_TLS_CA_FILE"]["value"] == "/etc/streampipe/redis-ca/ca.crt"
    assert "STREAMPIPE_TLS_INSECURE_SKIP_VERIFY" not in env_of(deployment)


def test_no_tls_no_ca_volume() -> None:
    deployment = render(minimal())
    names = [volume["name"] for volume in deployment["spec"]["template"]["spec"]["volumes"]]
    assert names == ["tmp"]
    assert "STREAMPIPE_TLS_CA_FILE" not in env_of(deployment)


def test_pod_security_restricted() -> None:
    deployment = render(minimal())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == deployments.WORKER_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(deployment)["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container(deployment)["volumeMounts"]


def test_probes_and_metrics_port() -> None:
    worker = container(render(minimal()))
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert env_of(render(minimal()))["STREAMPIPE_METRICS_PORT"]["value"] == "9090"


def test_template_overrides_land_in_the_pod() -> None:
    pipeline = example("full.yaml")
    group = pipeline.spec.groups[0]
    template = group.template
    assert template is not None
    deployment = render(pipeline)
    pod_template = deployment["spec"]["template"]
    pod = pod_template["spec"]
    worker = container(deployment)
    assert worker["image"] == group.image
    assert worker["imagePullPolicy"] == group.image_pull_policy
    assert worker["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }
    env = env_of(deployment)
    assert env["BILLING_API_URL"] == {
        "name": "BILLING_API_URL",
        "value": "https://billing.internal.example.com",
    }
    assert env["BILLING_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "billing-api", "key": "token", "optional": False}
    }
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}
    assert env["MEMORY_LIMIT_MI"]["valueFrom"] == {
        "resourceFieldRef": {"containerName": "worker", "resource": "limits.memory", "divisor": "1Mi"}
    }
    # The operator's variables come first; the template's follow in their order.
    names = [item["name"] for item in worker["env"]]
    assert names.index("BILLING_API_URL") > max(i for i, n in enumerate(names) if n.startswith("STREAMPIPE_"))
    assert worker["envFrom"][0] == {
        "configMapRef": {"name": "billing-settings", "optional": False},
        "prefix": "BILLING_",
    }
    assert pod["nodeSelector"] == template.node_selector
    assert pod["tolerations"][0]["tolerationSeconds"] == 300
    assert pod["affinity"] == template.affinity
    if template.service_account_name:
        assert pod["serviceAccountName"] == template.service_account_name
    if template.image_pull_secrets:
        assert pod["imagePullSecrets"] == [{"name": ref.name} for ref in template.image_pull_secrets]
    for key, value in (template.labels or {}).items():
        assert pod_template["metadata"]["labels"][key] == value
    assert pod_template["metadata"].get("annotations") == template.annotations


# --- drift ----------------------------------------------------------------------------------------


def as_stored(deployment: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns for a created Deployment: defaults filled, quantities canonical,
    empty values dropped, status and bookkeeping added."""
    stored = copy.deepcopy(deployment)
    stored["metadata"].update(
        resourceVersion="41", uid="d-1", generation=1, creationTimestamp="2026-01-01T00:00:00Z"
    )
    stored["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    spec = stored["spec"]
    spec.update(progressDeadlineSeconds=600, revisionHistoryLimit=10)
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    pod = spec["template"]["spec"]
    pod.update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="default-scheduler")
    for volume in pod["volumes"]:
        if "secret" in volume:
            volume["secret"]["defaultMode"] = 420
    for container_ in pod["containers"]:
        container_.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
        for probe in ("livenessProbe", "readinessProbe"):
            container_[probe]["httpGet"]["scheme"] = "HTTP"
            container_[probe]["successThreshold"] = 1
        for item in container_["env"]:
            field_ref = item.get("valueFrom", {}).get("fieldRef")
            if field_ref is not None:
                field_ref["apiVersion"] = "v1"
            if item.get("value") == "":
                del item["value"]
        limits = container_.get("resources", {}).get("limits", {})
        if limits.get("cpu") == "1000m":
            limits["cpu"] = "1"
    stored["status"] = {"replicas": 2, "readyReplicas": 2, "observedGeneration": 1}
    return stored


def test_what_the_server_adds_is_not_drift() -> None:
    desired = render(example("full.yaml"))
    assert deployments.deployment_drift(as_stored(desired), desired) == []
    assert deployments.drift_patch(as_stored(desired), desired) == []


def test_canonical_quantities_are_not_drift() -> None:
    pipeline = minimal(
        groups=[
            {
                "name": "billing",
                "handler": "shop.billing:handle",
                "image": "reg/billing:1",
                "template": {"resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}}},
            }
        ]
    )
    desired = render(pipeline)
    stored = as_stored(desired)
    container(stored)["resources"]["limits"]["memory"] = "1Gi"
    assert deployments.deployment_drift(stored, desired) == []
    container(stored)["resources"]["limits"]["memory"] = "2Gi"
    assert deployments.deployment_drift(stored, desired) == [
        "spec.template.spec.containers[0].resources.limits.memory"
    ]


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("500m", "0.5"), ("1", "1"), ("1Gi", str(1024**3)), ("1e3", "1000"), ("2k", "2000"), ("x", None)],
)
def test_quantity_values(quantity: str, value: str | None) -> None:
    parsed = deployments.quantity_value(quantity)
    assert (str(parsed.normalize()) if parsed is not None else None) == (
        None if value is None else str(deployments.Decimal(value).normalize())
    )


def test_replicas_are_not_drift() -> None:
    desired = render(minimal(), replicas=2)
    stored = as_stored(desired)
    stored["spec"]["replicas"] = 7
    assert deployments.deployment_drift(stored, desired) == []


def test_edited_image_is_drift_and_the_patch_replaces_the_template() -> None:
    desired = render(minimal())
    stored = as_stored(desired)
    container(stored)["image"] = "evil/miner:latest"
    assert deployments.deployment_drift(stored, desired) == ["spec.template.spec.containers[0].image"]
    patch = deployments.drift_patch(stored, desired)
    assert patch == [{"op": "replace", "path": "/spec/template", "value": desired["spec"]["template"]}]


def test_added_env_var_and_removed_security_setting_are_drift() -> None:
    desired = render(minimal())
    stored = as_stored(desired)
    container(stored)["env"].append({"name": "EXTRA", "value": "1"})
    del container(stored)["securityContext"]["readOnlyRootFilesystem"]
    stored["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    assert deployments.deployment_drift(stored, desired) == [
        "spec.template.spec.automountServiceAccountToken",
        "spec.template.spec.containers[0].env",
        "spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem",
    ]


def test_labels_and_owner_are_put_back_without_touching_others() -> None:
    desired = render(minimal())
    stored = as_stored(desired)
    stored["metadata"]["labels"]["team"] = "billing"
    stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kubectl"
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "other"}
    stored["metadata"]["ownerReferences"] = [foreign]
    assert deployments.deployment_drift(stored, desired) == [
        "metadata.labels.app.kubernetes.io/managed-by",
        "metadata.ownerReferences",
    ]
    patch = deployments.drift_patch(stored, desired)
    assert {
        "op": "add",
        "path": "/metadata/labels/app.kubernetes.io~1managed-by",
        "value": "streampipe-operator",
    } in patch
    owners = next(op for op in patch if op["path"] == "/metadata/ownerReferences")
    assert owners["value"] == [foreign, desired["metadata"]["ownerReferences"][0]]
    assert not any(op["path"].startswith("/spec") for op in patch)
