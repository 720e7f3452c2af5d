"""Worker Deployments: one per consumer group, rendered from the StreamPipeline. Pure: no I/O.

``build_deployment`` turns a pipeline and one of its groups into the Deployment manifest the operator
creates; ``deployment_drift`` and ``drift_patch`` compare it with what the API server holds and say
how to put it back. Rules the rendering keeps:

- **One source for the env contract.** Every ``STREAMPIPE_*`` variable name comes from the worker's
  own settings model (``WorkerSettings.env_name``) and every value goes through ``render_env``, which
  refuses what the worker would refuse.
- **Credentials never appear in the manifest.** The password (and user name) are ``secretKeyRef``
  variables pointing into ``spec.redis.auth.secretName``; the TLS CA is a Secret volume.
- **Pod Security "restricted".** Non-root with a fixed UID, no privilege escalation, every capability
  dropped, seccomp ``RuntimeDefault``, a read-only root filesystem with an ``emptyDir`` on ``/tmp``,
  and no service-account token mounted (workers never talk to the API server).
- **Replicas are not part of drift.** ``spec.replicas`` belongs to the scaler (``/scale``) or, with
  ``scaling.mode: none``, to whoever else sizes the Deployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from streampipe_operator import api
from streampipe_operator.engine.spec_mapping import DEFAULT_TERMINATION_GRACE, worker_settings_values
from streampipe_worker.settings import WorkerSettings, render_env

WORKER_APP = "streampipe-worker"
COMPONENT = "worker"
MANAGED_BY = "streampipe-operator"
CONTAINER = "worker"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_PIPELINE = "streampipe.dev/pipeline"
LABEL_GROUP = "streampipe.dev/group"

METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
# The worker image runs as this user; a numeric UID lets the kubelet verify runAsNonRoot.
WORKER_UID = 10001
TMP_VOLUME = "tmp"
CA_VOLUME = "redis-ca"
CA_MOUNT = "/etc/streampipe/redis-ca"
CA_FILE = "ca.crt"


def deployment_name(pipeline: str, group: str) -> str:
    """``<pipeline>-<group>``: at most 32 + 1 + 30 characters, so always a valid DNS label."""
    return f"{pipeline}-{group}"


def selector_labels(pipeline: str, group: str) -> dict[str, str]:
    """The Deployment's selector: immutable, so only what never changes for a group."""
    return {LABEL_PIPELINE: pipeline, LABEL_GROUP: group}


def workload_labels(pipeline: str, group: str) -> dict[str, str]:
    """Labels of the Deployment and its pods."""
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_INSTANCE: deployment_name(pipeline, group),
        LABEL_COMPONENT: COMPONENT,
        LABEL_PART_OF: "streampipe",
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(pipeline, group),
    }


def owner_reference(pipeline: api.StreamPipeline) -> dict[str, Any]:
    """The controller reference to the StreamPipeline: the Deployment goes when the pipeline goes."""
    meta = pipeline.metadata
    if not meta.name or not meta.uid:
        raise ValueError("a StreamPipeline needs metadata.name and metadata.uid to own a Deployment")
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def grace_seconds(group: api.GroupSpec) -> int:
    """The pod's termination grace period (the template's, or Kubernetes' default 30 s)."""
    template = group.template
    if template is not None and template.termination_grace_period_seconds is not None:
        return template.termination_grace_period_seconds
    return DEFAULT_TERMINATION_GRACE


def worker_env(pipeline: api.StreamPipeline, group: api.GroupSpec) -> list[dict[str, Any]]:
    """The container's ``STREAMPIPE_*`` variables, then the template's own ``env``.

    Values come from ``spec_mapping.worker_settings_values`` (the same mapping ``streampipe up`` uses),
    names and formats from the worker's ``render_env``. What a pod gets from Kubernetes objects is
    referenced, never copied: the consumer name is the pod's name (``fieldRef``), the user name and
    password are ``secretKeyRef`` into ``auth.secretName``, the CA file is mounted from its Secret.
    """
    spec = pipeline.spec
    values = worker_settings_values(spec, group)
    values["metrics_port"] = METRICS_PORT
    values["log_format"] = "json"
    tls = spec.redis.tls
    if tls is not None and tls.ca_secret_name is not None:
        values["tls_ca_file"] = f"{CA_MOUNT}/{CA_FILE}"
    if not values.get("tls_insecure_skip_verify"):
        values.pop("tls_insecure_skip_verify", None)
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in render_env(values).items()]

    env.append(
        {
            "name": WorkerSettings.env_name("consumer"),
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        }
    )
    auth = spec.redis.auth
    if auth is not None:
        if auth.username_key is not None:
            env.append(_secret_env("redis_username", auth.secret_name, auth.username_key))
        env.append(_secret_env("redis_password", auth.secret_name, auth.password_key))

    template = group.template
    for var in (template.env if template is not None else None) or []:
        item: dict[str, Any] = {"name": var.name}
        if var.value is not None:
            item["value"] = var.value
        if var.value_from is not None:
            item["valueFrom"] = var.value_from.model_dump(mode="json", by_alias=True, exclude_none=True)
        env.append(item)
    return env


def _secret_env(field: str, secret: str, key: str) -> dict[str, Any]:
    return {
        "name": WorkerSettings.env_name(field),
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
    }


def _container(pipeline: api.StreamPipeline, group: api.GroupSpec) -> dict[str, Any]:
    template = group.template
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]  # noqa: S108 - an emptyDir
    tls = pipeline.spec.redis.tls
    if tls is not None and tls.ca_secret_name is not None:
        mounts.append({"name": CA_VOLUME, "mountPath": CA_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": group.image,
        "imagePullPolicy": group.image_pull_policy,
        "env": worker_env(pipeline, group),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    if template is not None and template.resources is not None:
        container["resources"] = template.resources.model_dump(mode="json", by_alias=True, exclude_none=True)
    if template is not None and template.env_from:
        container["envFrom"] = [
            source.model_dump(mode="json", by_alias=True, exclude_none=True) for source in template.env_from
        ]
    return container


def _pod_spec(pipeline: api.StreamPipeline, group: api.GroupSpec) -> dict[str, Any]:
    template = group.template
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    tls = pipeline.spec.redis.tls
    if tls is not None and tls.ca_secret_name is not None:
        volumes.append(
            {
                "name": CA_VOLUME,
                "secret": {"secretName": tls.ca_secret_name, "items": [{"key": tls.ca_key, "path": CA_FILE}]},
            }
        )
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_seconds(group),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(pipeline, group)],
        "volumes": volumes,
    }
    if template is None:
        return pod
    if template.service_account_name:
        pod["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod["tolerations"] = [
            toleration.model_dump(mode="json", by_alias=True, exclude_none=True)
            for toleration in template.tolerations
        ]
    if template.affinity:
        pod["affinity"] = template.affinity
    if template.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in template.image_pull_secrets]
    return pod


def build_deployment(pipeline: api.StreamPipeline, group: api.GroupSpec, *, replicas: int) -> dict[str, Any]:
    """The worker Deployment of ``group`` with ``replicas`` pods (used when creating it)."""
    name = pipeline.metadata.name
    if not name:
        raise ValueError("a StreamPipeline without metadata.name has no Deployments")
    labels = workload_labels(name, group.name)
    template = group.template
    pod_labels = {**(template.labels if template is not None and template.labels else {}), **labels}
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if template is not None and template.annotations:
        pod_meta["annotations"] = dict(template.annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, group.name),
            "namespace": pipeline.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(pipeline)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name, group.name)},
            "template": {"metadata": pod_meta, "spec": _pod_spec(pipeline, group)},
        },
    }


# ------------------------------------------------------------------------------------------- drift

# Binary and decimal suffixes of Kubernetes quantities (resource.Quantity).
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{suffix: Decimal(1024**power) for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}


def quantity_value(quantity: object) -> Decimal | None:
    """``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824; None when it is not a quantity.

    The API server stores quantities in canonical form (``1000m`` comes back as ``1``), so rendered
    and stored resources are compared by value.
    """
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * Decimal(10) ** int(suffix[1:])
        return Decimal(number) * _SUFFIX[suffix]
    except (InvalidOperation, ValueError):
        return None


def _empty(value: object) -> bool:
    # The API server omits empty maps, lists, strings, zeros and false for omitempty fields, so a
    # rendered empty value matches an absent one.
    return value is None or value in ({}, [], "") or value is False or value == 0


def _differences(actual: object, desired: object, path: str, found: list[str]) -> None:
    if _empty(desired):
        # An empty map is a subset of any map; any other empty value must stay empty.
        if not (desired is None or isinstance(desired, Mapping) or _empty(actual)):
            found.append(path)
        return
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            found.append(path)
            return
        in_resources = path.endswith(("resources.limits", "resources.requests"))
        for key, value in desired.items():
            where = f"{path}.{key}" if path else str(key)
            if in_resources:
                if quantity_value(value) != quantity_value(actual.get(key)):
                    found.append(where)
                continue
            _differences(actual.get(key), value, where, found)
        return
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            found.append(path)
            return
        for index, (have, want) in enumerate(zip(actual, desired, strict=True)):
            _differences(have, want, f"{path}[{index}]", found)
        return
    if actual != desired:
        found.append(path)


def deployment_drift(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    """Paths where the stored Deployment no longer says what the operator rendered ([] when none).

    What the API server adds (defaults, status, annotations of controllers, labels of others) is not
    drift; a changed or removed value, or a list of another length, is. ``spec.replicas`` is ignored.
    """
    found: list[str] = []
    actual_meta = actual.get("metadata") or {}
    desired_meta = desired.get("metadata") or {}
    _differences(actual_meta.get("labels"), desired_meta.get("labels"), "metadata.labels", found)
    ours = [ref for ref in desired_meta.get("ownerReferences") or [] if ref.get("controller")]
    theirs = actual_meta.get("ownerReferences") or []
    for ref in ours:
        if not any(other.get("uid") == ref["uid"] and other.get("controller") for other in theirs):
            found.append("metadata.ownerReferences")
    actual_spec = actual.get("spec") or {}
    desired_spec = desired.get("spec") or {}
    _differences(actual_spec.get("selector"), desired_spec.get("selector"), "spec.selector", found)
    _differences(actual_spec.get("template"), desired_spec.get("template"), "spec.template", found)
    return found


def _pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def drift_patch(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch (RFC 6902) that restores what ``deployment_drift`` found.

    The pod template is replaced whole (the API server fills its defaults in again), labels are set
    one by one (others' labels stay), the controller reference is put back. Replicas and the selector
    (immutable) are not touched.
    """
    ops: list[dict[str, Any]] = []
    actual_meta = actual.get("metadata") or {}
    desired_meta = desired.get("metadata") or {}
    labels = desired_meta.get("labels") or {}
    if actual_meta.get("labels") is None:
        ops.append({"op": "add", "path": "/metadata/labels", "value": dict(labels)})
    else:
        current = actual_meta["labels"]
        ops.extend(
            {"op": "add", "path": _pointer("metadata", "labels", key), "value": value}
            for key, value in labels.items()
            if current.get(key) != value
        )
    ours = desired_meta.get("ownerReferences") or []
    our_uids = {ref["uid"] for ref in ours}
    theirs: Sequence[Mapping[str, Any]] = actual_meta.get("ownerReferences") or []
    kept = [dict(ref) for ref in theirs if ref.get("uid") not in our_uids and not ref.get("controller")]
    wanted = kept + [dict(ref) for ref in ours]
    if [dict(ref) for ref in theirs] != wanted:
        ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": wanted})
    desired_template = (desired.get("spec") or {}).get("template")
    actual_template = (actual.get("spec") or {}).get("template")
    found: list[str] = []
    _differences(actual_template, desired_template, "spec.template", found)
    if found:
        ops.append({"op": "replace", "path": "/spec/template", "value": desired_template})
    return ops
