"""The shared table of invalid StreamPipeline manifests.

Each case is a valid minimal manifest with one thing wrong, the field path the error is reported at, and
a message fragment. ``tests/unit/test_api_invalid.py`` checks that ``streampipe validate`` (the models)
refuses each one at that path with that fragment; ``tests/k8s/test_crd_server.py`` checks that the real
API server refuses the same manifest with the same path and fragment (``server_message`` only where the
server's wording differs from ours). Keep every case to exactly one mistake.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

DURATION_PATTERN_FRAGMENT = "should match '^([0-9]{1,6}(ms|s|m|h))+$'"


def minimal_manifest(name: str = "orders") -> Manifest:
    """A valid pipeline with nothing but the required fields."""
    return {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name},
        "spec": {
            "redis": {"url": "redis://redis.shop.svc:6379/0"},
            "stream": "{orders}:events",
            "groups": [
                {
                    "name": "billing",
                    "handler": "shop.billing:handle",
                    "image": "registry.example.com/billing:1.0",
                }
            ],
        },
    }


def _group(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "handler": "shop.handlers:handle", "image": "registry.example.com/w:1", **fields}


@dataclass(frozen=True)
class InvalidSpec:
    """One invalid manifest and how it must be refused."""

    id: str
    mutate: Callable[[Manifest], None]
    path: str
    message: str
    server_message: str | None = None
    notes: str = field(default="", compare=False)

    def manifest(self) -> Manifest:
        document = minimal_manifest()
        self.mutate(document)
        return document

    @property
    def expected_server_message(self) -> str:
        return self.server_message or self.message


def _spec(document: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = document["spec"]
    return spec


def _set(*path: str | int, value: Any) -> Callable[[Manifest], None]:
    """A mutation that sets ``document[path...] = value``, creating mappings on the way."""

    def mutate(document: Manifest) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[path[-1]] = copy.deepcopy(value)

    return mutate


def _delete(*path: str | int) -> Callable[[Manifest], None]:
    def mutate(document: Manifest) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _all(*mutations: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def mutate(document: Manifest) -> None:
        for mutation in mutations:
            mutation(document)

    return mutate


def _two_groups_second_scaling(scaling: dict[str, Any]) -> Callable[[Manifest], None]:
    def mutate(document: Manifest) -> None:
        _spec(document)["groups"].append(_group("audit", scaling=scaling))

    return mutate


def _duplicate_group(document: Manifest) -> None:
    _spec(document)["groups"].append(_group("billing"))


def _many_groups(document: Manifest) -> None:
    _spec(document)["groups"] = [_group(f"g{i}") for i in range(33)]


GROUP = ("spec", "groups", 0)
TEMPLATE = (*GROUP, "template")

INVALID_SPECS: list[InvalidSpec] = [
    InvalidSpec("missing-stream", _delete("spec", "stream"), "spec.stream", "Required value"),
    InvalidSpec(
        "unknown-field",
        _set("spec", "retry", "maxDelivery", value=3),
        "spec.retry.maxDelivery",
        'unknown field "spec.retry.maxDelivery"',
        notes="a typo of maxDeliveries: kubectl's strict field validation and extra=forbid both refuse it",
    ),
    InvalidSpec(
        "wrong-type",
        _set(*GROUP, "batchSize", value="100"),
        "spec.groups[0].batchSize",
        'must be of type integer: "string"',
    ),
    InvalidSpec(
        "bad-name",
        _set("metadata", "name", value="orders-pipeline-for-the-shop-frontend"),
        "metadata.name",
        "Too long: may not be more than 32 bytes",
    ),
    InvalidSpec(
        "redis-mode-enum",
        _set("spec", "redis", "mode", value="replica"),
        "spec.redis.mode",
        'Unsupported value: "replica": supported values: "standalone", "sentinel", "cluster"',
    ),
    InvalidSpec(
        "redis-url-scheme",
        _set("spec", "redis", "url", value="http://redis:6379"),
        "spec.redis.url",
        r"should match '^rediss?://\S+$'",
    ),
    InvalidSpec(
        "redis-url-password",
        _set("spec", "redis", "url", value="redis://:hunter2@redis:6379/0"),
        "spec.redis.url",
        "must not contain a password: put it in a Secret and reference it with auth.secretName",
    ),
    InvalidSpec(
        "sentinel-missing",
        _set("spec", "redis", "mode", value="sentinel"),
        "spec.redis.sentinel",
        "required when mode is sentinel: set sentinel.masterName",
    ),
    InvalidSpec(
        "sentinel-without-mode",
        _set("spec", "redis", "sentinel", value={"masterName": "mymaster"}),
        "spec.redis.sentinel",
        "only allowed when mode is sentinel",
    ),
    InvalidSpec(
        "tls-without-rediss",
        _set("spec", "redis", "tls", value={"caSecretName": "redis-ca"}),
        "spec.redis.tls",
        "needs a rediss:// url: tls settings apply only to TLS connections",
    ),
    InvalidSpec(
        "tls-ca-and-skip-verify",
        _all(
            _set("spec", "redis", "url", value="rediss://redis:6380"),
            _set("spec", "redis", "tls", value={"caSecretName": "redis-ca", "insecureSkipVerify": True}),
        ),
        "spec.redis.tls.insecureSkipVerify",
        "set caSecretName or insecureSkipVerify, not both",
    ),
    InvalidSpec(
        "auth-secret-name",
        _set("spec", "redis", "auth", value={"secretName": "Redis_Creds"}),
        "spec.redis.auth.secretName",
        "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'",
    ),
    InvalidSpec(
        "auth-password-key-dot",
        _set("spec", "redis", "auth", value={"secretName": "redis-creds", "passwordKey": "."}),
        "spec.redis.auth.passwordKey",
        "should match '^\\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$'",
        notes="Found by the spec fuzzing: the API server refuses such a secretKeyRef key in the Deployment.",
    ),
    InvalidSpec(
        "tls-ca-key-double-dot-prefix",
        _set("spec", "redis", "tls", value={"caSecretName": "redis-ca", "caKey": "..data"}),
        "spec.redis.tls.caKey",
        "should match '^\\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$'",
    ),
    InvalidSpec(
        "cluster-without-hash-tag",
        _all(_set("spec", "redis", "mode", value="cluster"), _set("spec", "stream", value="orders:events")),
        "spec.stream",
        "in cluster mode the key needs a {hash tag}",
    ),
    InvalidSpec(
        "cluster-dead-letter-other-slot",
        _all(
            _set("spec", "redis", "mode", value="cluster"),
            _set("spec", "deadLetter", "stream", value="{payments}:dead"),
        ),
        "spec.deadLetter.stream",
        "in cluster mode it needs the same {hash tag} as spec.stream",
    ),
    InvalidSpec(
        "partitions-count-zero",
        _all(_set("spec", "stream", value="orders"), _set("spec", "partitions", value={"count": 0})),
        "spec.partitions.count",
        "should be greater than or equal to 1",
    ),
    InvalidSpec(
        "partitions-count-too-many",
        _all(_set("spec", "stream", value="orders"), _set("spec", "partitions", value={"count": 1025})),
        "spec.partitions.count",
        "should be less than or equal to 1024",
    ),
    InvalidSpec(
        "partitions-ordering-enum",
        _all(
            _set("spec", "stream", value="orders"),
            _set("spec", "partitions", value={"count": 4, "ordering": "Strict"}),
        ),
        "spec.partitions.ordering",
        'Unsupported value: "Strict": supported values: "None", "PerKey"',
    ),
    InvalidSpec(
        "partitions-base-with-braces",
        _set("spec", "partitions", value={"count": 4}),
        "spec.stream",
        "with partitions it is a base name without braces",
    ),
    InvalidSpec(
        "partitions-with-dead-letter-stream",
        _all(
            _set("spec", "stream", value="orders"),
            _set("spec", "partitions", value={"count": 4}),
            _set("spec", "deadLetter", "stream", value="orders-dead"),
        ),
        "spec.deadLetter.stream",
        "does not go with partitions",
    ),
    InvalidSpec(
        "dead-letter-is-stream",
        _set("spec", "deadLetter", "stream", value="{orders}:events"),
        "spec.deadLetter.stream",
        "must differ from spec.stream",
    ),
    InvalidSpec(
        "retention-without-limit",
        _set("spec", "retention", value={"approximate": True}),
        "spec.retention",
        "set maxLength, maxAge or both",
    ),
    InvalidSpec(
        "retention-max-age-syntax",
        _set("spec", "retention", value={"maxAge": "1 day"}),
        "spec.retention.maxAge",
        DURATION_PATTERN_FRAGMENT,
    ),
    InvalidSpec(
        "retention-max-age-zero",
        _set("spec", "retention", value={"maxAge": "0s"}),
        "spec.retention.maxAge",
        "must be between 1s and 87600h",
    ),
    InvalidSpec(
        "retention-max-length-zero",
        _set("spec", "retention", value={"maxLength": 0}),
        "spec.retention.maxLength",
        "should be greater than or equal to 1",
    ),
    InvalidSpec(
        "max-deliveries-zero",
        _set("spec", "retry", "maxDeliveries", value=0),
        "spec.retry.maxDeliveries",
        "should be greater than or equal to 1",
    ),
    InvalidSpec(
        "backoff-max-below-initial",
        _set("spec", "retry", "backoff", value={"initial": "10s", "max": "2s"}),
        "spec.retry.backoff.max",
        "must be >= initial (10s)",
    ),
    InvalidSpec(
        "backoff-multiplier-too-high",
        _set("spec", "retry", "backoff", value={"multiplier": 100}),
        "spec.retry.backoff.multiplier",
        "should be less than or equal to 10",
    ),
    InvalidSpec(
        "claim-idle-without-unit",
        _set("spec", "retry", "claimIdle", value="250"),
        "spec.retry.claimIdle",
        DURATION_PATTERN_FRAGMENT,
    ),
    InvalidSpec(
        "deletion-policy-enum",
        _set("spec", "deletionPolicy", value="Destroy"),
        "spec.deletionPolicy",
        'Unsupported value: "Destroy": supported values: "Retain", "Delete"',
    ),
    InvalidSpec("no-groups", _set("spec", "groups", value=[]), "spec.groups", "should have at least 1 items"),
    InvalidSpec("too-many-groups", _many_groups, "spec.groups", "Too many: 33: must have at most 32 items"),
    InvalidSpec(
        "duplicate-group",
        _duplicate_group,
        "spec.groups[1]",
        'Duplicate value: {"name":"billing"}',
    ),
    InvalidSpec(
        "group-name",
        _set(*GROUP, "name", value="Billing_Team"),
        "spec.groups[0].name",
        "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    ),
    InvalidSpec(
        "handler-syntax",
        _set(*GROUP, "handler", value="shop/billing.py"),
        "spec.groups[0].handler",
        "should match '^[A-Za-z_]",
    ),
    InvalidSpec(
        "start-id",
        _set(*GROUP, "startId", value="latest"),
        "spec.groups[0].startId",
        r"should match '^(\$|[0-9]+(-[0-9]+)?)$'",
    ),
    InvalidSpec(
        "image-pull-policy-enum",
        _set(*GROUP, "imagePullPolicy", value="Sometimes"),
        "spec.groups[0].imagePullPolicy",
        'Unsupported value: "Sometimes"',
    ),
    InvalidSpec(
        "batch-size-zero",
        _set(*GROUP, "batchSize", value=0),
        "spec.groups[0].batchSize",
        "should be greater than or equal to 1",
    ),
    InvalidSpec(
        "replicas-min-above-max",
        _two_groups_second_scaling({"minReplicas": 5, "maxReplicas": 2}),
        "spec.groups[1].scaling.maxReplicas",
        "must be >= minReplicas (5)",
    ),
    InvalidSpec(
        "activation-backlog-without-zero",
        _set(*GROUP, "scaling", value={"minReplicas": 1, "activationBacklog": 50}),
        "spec.groups[0].scaling.activationBacklog",
        "applies only when minReplicas is 0",
    ),
    InvalidSpec(
        "scaling-mode-enum",
        _set(*GROUP, "scaling", value={"mode": "keda"}),
        "spec.groups[0].scaling.mode",
        'Unsupported value: "keda": supported values: "native", "none"',
    ),
    InvalidSpec(
        "poll-interval-zero",
        _set(*GROUP, "scaling", value={"pollInterval": "0s"}),
        "spec.groups[0].scaling.pollInterval",
        "must be between 1s and 10m",
    ),
    InvalidSpec(
        "stabilization-above-hpa-limit",
        _set(*GROUP, "scaling", value={"scaleDownStabilization": "2h"}),
        "spec.groups[0].scaling.scaleDownStabilization",
        "must be at most 1h",
    ),
    InvalidSpec(
        "dedupe-ttl-above-limit",
        _set(*GROUP, "dedupe", value={"ttl": "721h"}),
        "spec.groups[0].dedupe.ttl",
        "must be between 1s and 720h",
    ),
    InvalidSpec(
        "dedupe-ttl-below-limit",
        _set(*GROUP, "dedupe", value={"ttl": "500ms"}),
        "spec.groups[0].dedupe.ttl",
        "must be between 1s and 720h",
    ),
    InvalidSpec(
        "dedupe-ttl-without-unit",
        _set(*GROUP, "dedupe", value={"ttl": "3600"}),
        "spec.groups[0].dedupe.ttl",
        DURATION_PATTERN_FRAGMENT,
    ),
    InvalidSpec(
        "dedupe-without-ttl", _set(*GROUP, "dedupe", value={}), "spec.groups[0].dedupe.ttl", "Required value"
    ),
    InvalidSpec(
        "env-reserved-name",
        _set(*TEMPLATE, value={"env": [{"name": "STREAMPIPE_BATCH_SIZE", "value": "5"}]}),
        "spec.groups[0].template.env[0].name",
        "STREAMPIPE_* variables are rendered by the operator from the spec",
    ),
    InvalidSpec(
        "env-value-and-source",
        _set(
            *TEMPLATE,
            value={
                "env": [
                    {"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                ]
            },
        ),
        "spec.groups[0].template.env[0]",
        "set value or valueFrom, not both",
    ),
    InvalidSpec(
        "env-value-from-empty",
        _set(*TEMPLATE, value={"env": [{"name": "TOKEN", "valueFrom": {}}]}),
        "spec.groups[0].template.env[0].valueFrom",
        "set exactly one of secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef",
        notes="Found by the spec fuzzing: the API server refused the Deployment with `valueFrom: {}`.",
    ),
    InvalidSpec(
        "env-value-from-unknown-field-path",
        _set(
            *TEMPLATE,
            value={"env": [{"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]},
        ),
        "spec.groups[0].template.env[0].valueFrom.fieldRef.fieldPath",
        "metadata.name",
        server_message="Unsupported value",
    ),
    InvalidSpec(
        "env-value-from-cpu-divisor",
        _set(
            *TEMPLATE,
            value={
                "env": [
                    {
                        "name": "CPU",
                        "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}},
                    }
                ]
            },
        ),
        "spec.groups[0].template.env[0].valueFrom.resourceFieldRef.divisor",
        "divisor: 1m or 1 for cpu",
    ),
    InvalidSpec(
        "env-duplicate",
        _set(*TEMPLATE, value={"env": [{"name": "MODE", "value": "a"}, {"name": "MODE", "value": "b"}]}),
        "spec.groups[0].template.env[1]",
        'Duplicate value: {"name":"MODE"}',
    ),
    InvalidSpec(
        "env-from-both-sources",
        _set(*TEMPLATE, value={"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}),
        "spec.groups[0].template.envFrom[0]",
        "set exactly one of configMapRef or secretRef",
    ),
    InvalidSpec(
        "reserved-label",
        _set(*TEMPLATE, value={"labels": {"app.kubernetes.io/instance": "mine"}}),
        "spec.groups[0].template.labels",
        "keys under streampipe.dev/ and app.kubernetes.io/ are set by the operator",
    ),
    InvalidSpec(
        "resource-quantity",
        _set(*TEMPLATE, value={"resources": {"limits": {"cpu": "lots"}}}),
        "spec.groups[0].template.resources.limits.cpu",
        "should match '^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))",
    ),
    InvalidSpec(
        "toleration-exists-with-value",
        _set(*TEMPLATE, value={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.groups[0].template.tolerations[0].value",
        "must be empty when operator is Exists",
    ),
    InvalidSpec(
        "toleration-empty-key-not-exists",
        _set(*TEMPLATE, value={"tolerations": [{"operator": "Equal", "effect": "NoSchedule"}]}),
        "spec.groups[0].template.tolerations[0].operator",
        "must be Exists when key is empty",
        notes="the API server's Pod validation would refuse the worker Deployment (tests/chaos/test_fuzz.py)",
    ),
    InvalidSpec(
        "toleration-key-not-qualified",
        _set(*TEMPLATE, value={"tolerations": [{"key": "dedicated node", "operator": "Exists"}]}),
        "spec.groups[0].template.tolerations[0].key",
        "must be a qualified name: a name of at most 63 characters",
    ),
    InvalidSpec(
        "toleration-value-not-label-value",
        _set(*TEMPLATE, value={"tolerations": [{"key": "dedicated", "value": "pipelines only"}]}),
        "spec.groups[0].template.tolerations[0].value",
        "should match '^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'",
    ),
    InvalidSpec(
        "toleration-seconds-without-no-execute",
        _set(
            *TEMPLATE,
            value={
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Exists",
                        "effect": "NoSchedule",
                        "tolerationSeconds": 60,
                    }
                ]
            },
        ),
        "spec.groups[0].template.tolerations[0].effect",
        "must be NoExecute when tolerationSeconds is set",
    ),
    InvalidSpec(
        "resource-limit-name-not-standard",
        _set(*TEMPLATE, value={"resources": {"limits": {"gpu": 1}}}),
        "spec.groups[0].template.resources.limits",
        "resource names must be cpu, memory, ephemeral-storage, hugepages-<size> or fully qualified",
        notes="the API server's Pod validation would refuse the worker Deployment (tests/chaos/test_fuzz.py)",
    ),
    InvalidSpec(
        "resource-request-name-not-extended",
        _set(*TEMPLATE, value={"resources": {"requests": {"requests.example.com/gpu": 1}}}),
        "spec.groups[0].template.resources.requests",
        "resource names must be cpu, memory, ephemeral-storage, hugepages-<size> or fully qualified",
        notes="an extended resource's quota name requests.<name> must be a qualified name too",
    ),
    InvalidSpec(
        "label-key-not-qualified",
        _set(*TEMPLATE, value={"labels": {"team name": "billing"}}),
        "spec.groups[0].template.labels",
        "label keys must be qualified names",
    ),
    InvalidSpec(
        "label-value-not-label-value",
        _set(*TEMPLATE, value={"labels": {"team": "-billing"}}),
        "spec.groups[0].template.labels.team",
        "should match '^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'",
    ),
    InvalidSpec(
        "node-selector-key-not-qualified",
        _set(*TEMPLATE, value={"nodeSelector": {"Example.com/zone": "a"}}),
        "spec.groups[0].template.nodeSelector",
        "node label keys must be qualified names",
        notes="the prefix of a label key is a lowercase DNS subdomain",
    ),
    InvalidSpec(
        "annotation-key-not-qualified",
        _set(*TEMPLATE, value={"annotations": {"scrape me": "true"}}),
        "spec.groups[0].template.annotations",
        "annotation keys must be qualified names",
    ),
    InvalidSpec(
        "grace-period-negative",
        _set(*TEMPLATE, value={"terminationGracePeriodSeconds": -1}),
        "spec.groups[0].template.terminationGracePeriodSeconds",
        "should be greater than or equal to 0",
    ),
]


@dataclass(frozen=True)
class ValidSpec:
    """A valid manifest near the edge of a rule: what the rule must not refuse."""

    id: str
    mutate: Callable[[Manifest], None]

    def manifest(self) -> Manifest:
        document = minimal_manifest()
        self.mutate(document)
        return document


# The counterparts of the pod-field rules above: each is accepted offline and by the API server
# (tests/unit/test_api_invalid.py, tests/k8s/test_crd_server.py), and its worker Deployment by the API
# server too (tests/k8s/test_crd_server.py).
VALID_SPECS: list[ValidSpec] = [
    ValidSpec(
        "partitions-on-cluster-without-hash-tag",
        _all(
            _set("spec", "redis", "mode", value="cluster"),
            _set("spec", "stream", value="orders"),
            _set("spec", "partitions", value={"count": 1024, "key": "customer_id"}),
        ),
    ),
    ValidSpec("dedupe-ttl-lowest", _set(*GROUP, "dedupe", value={"ttl": "1s"})),
    ValidSpec("dedupe-ttl-highest", _set(*GROUP, "dedupe", value={"ttl": "720h"})),
    ValidSpec("extended-resource", _set(*TEMPLATE, value={"resources": {"limits": {"nvidia.com/gpu": 1}}})),
    ValidSpec(
        "hugepages",
        _set(*TEMPLATE, value={"resources": {"limits": {"hugepages-2Mi": "4Mi", "memory": "128Mi"}}}),
    ),
    ValidSpec(
        "standard-resources",
        _set(
            *TEMPLATE,
            value={"resources": {"requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1Gi"}}},
        ),
    ),
    ValidSpec(
        "toleration-exists-without-key", _set(*TEMPLATE, value={"tolerations": [{"operator": "Exists"}]})
    ),
    ValidSpec(
        "toleration-prefixed-key-no-execute",
        _set(
            *TEMPLATE,
            value={
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                    {"key": "dedicated", "value": ""},
                ]
            },
        ),
    ),
    ValidSpec(
        "prefixed-label-keys",
        _set(
            *TEMPLATE,
            value={
                "labels": {"example.com/team": "billing", "Tier_2.x": ""},
                "nodeSelector": {"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": "eu-1a"},
            },
        ),
    ),
    ValidSpec(
        "annotation-key-upper-case-prefix",
        _set(*TEMPLATE, value={"annotations": {"Example.com/Scrape": "true", "prometheus.io/port": "9102"}}),
    ),
]


@dataclass(frozen=True)
class InvalidChange:
    """An update the transition rules (``oldSelf``) refuse: a valid manifest changed into another valid
    one that may not follow it."""

    id: str
    before: Callable[[Manifest], None]
    after: Callable[[Manifest], None]
    path: str
    message: str

    def manifests(self) -> tuple[Manifest, Manifest]:
        old, new = minimal_manifest(), minimal_manifest()
        self.before(old)
        self.after(new)
        return old, new


def _partitioned(count: int) -> Callable[[Manifest], None]:
    return _all(_set("spec", "stream", value="orders"), _set("spec", "partitions", value={"count": count}))


def _per_key(count: int) -> Callable[[Manifest], None]:
    return _all(
        _set("spec", "stream", value="orders"),
        _set("spec", "partitions", value={"count": count, "key": "customer", "ordering": "PerKey"}),
    )


INVALID_CHANGES: list[InvalidChange] = [
    InvalidChange(
        "partitions-per-key-shrink",
        _per_key(8),
        _per_key(4),
        "spec.partitions.count",
        "may grow, never shrink (was 8)",
    ),
    InvalidChange(
        "partitions-shrink",
        _partitioned(8),
        _partitioned(4),
        "spec.partitions.count",
        "may grow, never shrink (was 8)",
    ),
    InvalidChange(
        "partitions-removed",
        _partitioned(8),
        _set("spec", "stream", value="orders"),
        "spec.partitions",
        "cannot be added to or removed from an existing pipeline",
    ),
    InvalidChange(
        "partitions-added",
        _set("spec", "stream", value="orders"),
        _partitioned(2),
        "spec.partitions",
        "cannot be added to or removed from an existing pipeline",
    ),
]


@dataclass(frozen=True)
class ValidChange:
    """An update the transition rules let through (the other side of :data:`INVALID_CHANGES`)."""

    id: str
    before: Callable[[Manifest], None]
    after: Callable[[Manifest], None]

    def manifests(self) -> tuple[Manifest, Manifest]:
        old, new = minimal_manifest(), minimal_manifest()
        self.before(old)
        self.after(new)
        return old, new


VALID_CHANGES: list[ValidChange] = [
    ValidChange("partitions-grow", _partitioned(4), _partitioned(8)),
    # Growing under PerKey: the workers hold moved keys behind an epoch switch (docs/partitions.md).
    ValidChange("partitions-per-key-grow", _per_key(4), _per_key(8)),
    ValidChange("partitions-unchanged", _per_key(4), _per_key(4)),
]
