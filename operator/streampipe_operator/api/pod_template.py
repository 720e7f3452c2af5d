"""The part of a worker pod a group may set: resources, env, scheduling, labels (``template``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    StringConstraints,
    model_validator,
)

from streampipe_operator.api.cel import cel_rule
from streampipe_operator.api.fields import (
    DNS_LABEL,
    ENV_NAME,
    LABEL_VALUE,
    MAX_ANNOTATIONS,
    MAX_ENV,
    MAX_ENV_FROM,
    MAX_LABELS,
    MAX_PULL_SECRETS,
    MAX_RESOURCE_NAMES,
    MAX_TOLERATIONS,
    QUALIFIED_NAME_MESSAGE,
    RESERVED_ENV_PREFIX,
    RESERVED_LABEL_PREFIXES,
    DnsSubdomain,
    QuantityValue,
    SecretKey,
    SpecModel,
    _cel_container_resource_name,
    _cel_qualified_name,
    is_container_resource_name,
    is_qualified_name,
    refuse_duplicates,
)

RESOURCE_NAME_MESSAGE = (
    "resource names must be cpu, memory, ephemeral-storage, hugepages-<size> or fully qualified "
    "(a domain, '/' and a name, e.g. nvidia.com/gpu)"
)


class ResourceRequirements(SpecModel):
    """Compute resources of the worker container (as in a Pod's `resources`)."""

    limits: Annotated[dict[str, QuantityValue], Field(max_length=MAX_RESOURCE_NAMES)] | None = Field(
        default=None, description="Maximum amounts, by resource name (`cpu: 500m`, `memory: 256Mi`)."
    )
    requests: Annotated[dict[str, QuantityValue], Field(max_length=MAX_RESOURCE_NAMES)] | None = Field(
        default=None, description="Amounts the scheduler reserves, by resource name."
    )

    @cel_rule(
        f"!has(self.limits) || self.limits.all(k, {_cel_container_resource_name('k')})",
        message=RESOURCE_NAME_MESSAGE,
        field_path=".limits",
    )
    def _limit_names(self) -> bool:
        return all(is_container_resource_name(name) for name in self.limits or {})

    @cel_rule(
        f"!has(self.requests) || self.requests.all(k, {_cel_container_resource_name('k')})",
        message=RESOURCE_NAME_MESSAGE,
        field_path=".requests",
    )
    def _request_names(self) -> bool:
        return all(is_container_resource_name(name) for name in self.requests or {})


class KeySelector(SpecModel):
    """One key of a Secret or ConfigMap in the pipeline's namespace (as in a Pod's `secretKeyRef`)."""

    name: DnsSubdomain = Field(description="Name of the Secret or ConfigMap.")
    key: SecretKey = Field(description="The key to read.")
    optional: bool | None = Field(default=None, description="Start the pod even when it does not exist.")


# What a Pod's env may read from its own object (Kubernetes' downward API for env, without the
# `metadata.labels['...']` and `metadata.annotations['...']` forms).
FieldPath = Literal[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
]
ResourceField = Literal[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
]
Divisor = Literal["1m", "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei"]
CPU_DIVISORS = ("1m", "1")
BYTE_DIVISORS = tuple(divisor for divisor in get_args(Divisor) if divisor != "1m")


class ObjectFieldSelector(SpecModel):
    """A field of the worker's own pod (as in a Pod's `fieldRef`)."""

    api_version: Literal["v1"] | None = Field(default=None, description="Version of the field path: v1.")
    field_path: FieldPath = Field(description="The pod field to read.")


class ResourceFieldSelector(SpecModel):
    """A resource request or limit of the worker container (as in a Pod's `resourceFieldRef`)."""

    container_name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] | None = Field(
        default=None, description="Container; the worker's own when empty."
    )
    resource: ResourceField = Field(description="The request or limit to read.")
    divisor: Divisor | None = Field(
        default=None, description="Unit the value is expressed in: 1m or 1 for cpu, a byte unit otherwise."
    )

    @cel_rule(
        "!has(self.divisor) || (self.resource.endsWith('.cpu') ? self.divisor in ['1m', '1'] : "
        "self.divisor != '1m')",
        message="divisor: 1m or 1 for cpu; 1, 1k, 1M ... 1E or 1Ki ... 1Ei for memory and ephemeral-storage",
        field_path=".divisor",
    )
    def _divisor_fits(self) -> bool:
        if self.divisor is None:
            return True
        return self.divisor in (CPU_DIVISORS if self.resource.endswith(".cpu") else BYTE_DIVISORS)


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from (as in a Pod's `valueFrom`): exactly one."""

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: ObjectFieldSelector | None = Field(default=None, description="A field of the worker's pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="A resource request or limit of the worker container."
    )

    @cel_rule(
        "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
        "has(self.resourceFieldRef)].filter(x, x).size() == 1",
        message="set exactly one of secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef",
    )
    def _exactly_one(self) -> bool:
        sources = (self.secret_key_ref, self.config_map_key_ref, self.field_ref, self.resource_field_ref)
        return sum(source is not None for source in sources) == 1


class EnvVar(SpecModel):
    """An extra environment variable of the worker container (as in a Pod's `env`)."""

    name: Annotated[str, StringConstraints(pattern=ENV_NAME, max_length=256)] = Field(
        description="Variable name. STREAMPIPE_* names are reserved: the operator renders them from the spec."
    )
    value: Annotated[str, StringConstraints(max_length=32768)] | None = Field(
        default=None, description="Literal value."
    )
    value_from: EnvVarSource | None = Field(
        default=None,
        description="Source of the value, as in a Pod: one of `secretKeyRef`, `configMapKeyRef`, `fieldRef`, "
        "`resourceFieldRef`.",
    )

    @cel_rule(
        f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
        message="STREAMPIPE_* variables are rendered by the operator from the spec: set the spec field "
        "instead",
        field_path=".name",
    )
    def _not_reserved(self) -> bool:
        return not self.name.startswith(RESERVED_ENV_PREFIX)

    @cel_rule(
        "!(has(self.value) && has(self.valueFrom))",
        message="set value or valueFrom, not both",
    )
    def _value_or_source(self) -> bool:
        return self.value is None or self.value_from is None


class EnvSourceRef(SpecModel):
    """A ConfigMap or Secret in the pipeline's namespace."""

    name: DnsSubdomain = Field(description="Name of the ConfigMap or Secret.")
    optional: bool | None = Field(default=None, description="Start the pod even when it does not exist.")


class EnvFromSource(SpecModel):
    """Every key of a ConfigMap or Secret as environment variables (as in a Pod's `envFrom`)."""

    config_map_ref: EnvSourceRef | None = Field(default=None, description="The ConfigMap to read.")
    secret_ref: EnvSourceRef | None = Field(default=None, description="The Secret to read.")
    prefix: Annotated[str, StringConstraints(pattern=ENV_NAME, max_length=256)] | None = Field(
        default=None, description="Prefix put before every key."
    )

    @cel_rule(
        "has(self.configMapRef) != has(self.secretRef)",
        message="set exactly one of configMapRef or secretRef",
    )
    def _exactly_one_source(self) -> bool:
        return (self.config_map_ref is None) != (self.secret_ref is None)


class Toleration(SpecModel):
    """Lets worker pods run on nodes with a matching taint (as in a Pod's `tolerations`)."""

    key: Annotated[str, StringConstraints(max_length=317)] | None = Field(
        default=None,
        description="Taint key (a qualified name such as `example.com/dedicated`); empty with operator "
        "Exists matches every taint.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="`Equal` (the default) compares value; `Exists` matches any value."
    )
    value: Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)] | None = Field(
        default=None, description="Taint value to match with operator Equal (a label value)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: Annotated[int, Field(ge=0, le=10**9)] | None = Field(
        default=None,
        description="With NoExecute: how long the pod stays on the node after the taint appears.",
    )

    @cel_rule(
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        message="must be empty when operator is Exists",
        field_path=".value",
    )
    def _exists_has_no_value(self) -> bool:
        return self.operator != "Exists" or not self.value

    @cel_rule(
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        message="must be Exists when key is empty: an empty key with operator Exists tolerates every taint",
        field_path=".operator",
    )
    def _no_key_needs_exists(self) -> bool:
        return bool(self.key) or self.operator == "Exists"

    @cel_rule(
        f"!has(self.key) || self.key == '' || {_cel_qualified_name('self.key')}",
        message=f"must be a qualified name: {QUALIFIED_NAME_MESSAGE}",
        field_path=".key",
    )
    def _key_qualified(self) -> bool:
        return not self.key or is_qualified_name(self.key)

    @cel_rule(
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        message="must be NoExecute when tolerationSeconds is set: only a NoExecute taint evicts pods",
        field_path=".effect",
    )
    def _seconds_need_no_execute(self) -> bool:
        return self.toleration_seconds is None or self.effect == "NoExecute"


class LocalObjectReference(SpecModel):
    """A reference to an object in the pipeline's namespace."""

    name: DnsSubdomain = Field(description="Name of the object.")


LabelMap = Annotated[
    dict[str, Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]],
    Field(max_length=MAX_LABELS),
]


class PodTemplateSpec(SpecModel):
    """Overrides for the worker pods of one group. Everything else (security context, probes, the
    STREAMPIPE_* environment) is rendered by the operator."""

    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the worker container."
    )
    env: Annotated[list[EnvVar], Field(max_length=MAX_ENV)] | None = Field(
        default=None,
        description="Extra environment variables of the worker container (your handler's settings).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: Annotated[list[EnvFromSource], Field(max_length=MAX_ENV_FROM)] | None = Field(
        default=None, description="ConfigMaps and Secrets whose keys become environment variables."
    )
    node_selector: LabelMap | None = Field(default=None, description="Node labels the worker pods require.")
    tolerations: Annotated[list[Toleration], Field(max_length=MAX_TOLERATIONS)] | None = Field(
        default=None, description="Taints the worker pods tolerate."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity rules, exactly as in a Pod's `affinity` (nodeAffinity, podAffinity, "
        "podAntiAffinity). Kept as written; the API server checks it when the operator creates the "
        "Deployment.",
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None,
        description="ServiceAccount of the worker pods (e.g. for a cloud workload identity).",
    )
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=MAX_PULL_SECRETS)] | None = (
        Field(default=None, description="Secrets for pulling the worker image from a private registry.")
    )
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=86400)] | None = Field(
        default=None,
        description="Seconds a worker gets after SIGTERM to finish in-flight entries and hand back the "
        "rest (Kubernetes' default is 30).",
    )
    labels: LabelMap | None = Field(
        default=None,
        description="Extra labels of the worker pods. Keys under streampipe.dev/ and app.kubernetes.io/ "
        "are the operator's.",
    )
    annotations: (
        Annotated[
            dict[str, Annotated[str, StringConstraints(max_length=32768)]], Field(max_length=MAX_ANNOTATIONS)
        ]
        | None
    ) = Field(default=None, description="Extra annotations of the worker pods (e.g. for a metrics scraper).")

    @cel_rule(
        "!has(self.labels) || self.labels.all(k, "
        + " && ".join(f"!k.startsWith('{prefix}')" for prefix in RESERVED_LABEL_PREFIXES)
        + ")",
        message="keys under streampipe.dev/ and app.kubernetes.io/ are set by the operator",
        field_path=".labels",
    )
    def _labels_not_reserved(self) -> bool:
        return not any(key.startswith(RESERVED_LABEL_PREFIXES) for key in self.labels or {})

    @cel_rule(
        f"!has(self.labels) || self.labels.all(k, {_cel_qualified_name('k')})",
        message=f"label keys must be qualified names: {QUALIFIED_NAME_MESSAGE}",
        field_path=".labels",
    )
    def _label_keys_qualified(self) -> bool:
        return all(is_qualified_name(key) for key in self.labels or {})

    @cel_rule(
        f"!has(self.nodeSelector) || self.nodeSelector.all(k, {_cel_qualified_name('k')})",
        message=f"node label keys must be qualified names: {QUALIFIED_NAME_MESSAGE}",
        field_path=".nodeSelector",
    )
    def _node_selector_keys_qualified(self) -> bool:
        return all(is_qualified_name(key) for key in self.node_selector or {})

    @cel_rule(
        # The API server checks annotation keys in lower case: `Example.com/x` is a valid key.
        f"!has(self.annotations) || self.annotations.all(k, {_cel_qualified_name('k.lowerAscii()')})",
        message=f"annotation keys must be qualified names: {QUALIFIED_NAME_MESSAGE}",
        field_path=".annotations",
    )
    def _annotation_keys_qualified(self) -> bool:
        # ASCII only, as CEL lowerAscii(): a non-ASCII key is no qualified name in either case.
        return all(key.isascii() and is_qualified_name(key.lower()) for key in self.annotations or {})

    @model_validator(mode="after")
    def _env_names_unique(self) -> PodTemplateSpec:
        # The CRD declares env a list-map keyed by name, so the API server refuses duplicates itself.
        refuse_duplicates([var.name for var in self.env or []], "env", "variable")
        return self
