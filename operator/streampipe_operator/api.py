"""The StreamPipeline API (``streampipe.dev/v1alpha1``): pydantic models, the single source of truth.

The CRD (``crd.py``), ``streampipe validate``, the operator's parsing of a resource body and the docs
all come from these classes. Spec models are strict (``"5"`` is not an integer, as for the API server),
refuse unknown fields and are frozen; their cross-field rules are CEL expressions with Python twins
(:mod:`streampipe_operator.cel`), so the API server and the offline validator refuse the same specs with
the same words. Python attributes are snake_case; the JSON names are camelCase aliases, and either name
is accepted on input.

Status models are lenient (they are written by the operator, read back from the server) and mutable;
:func:`set_condition` is the one way to change a condition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from streampipe_operator.cel import RuleModel, add_rules_to_schema, cel_rule
from streampipe_operator.durations import Duration, DurationRange

GROUP = "streampipe.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StreamPipeline"
LIST_KIND = "StreamPipelineList"
PLURAL = "streampipelines"
SINGULAR = "streampipeline"
SHORT_NAMES = ("spipe",)
CATEGORIES = ("streampipe",)

# Bounds on every list, map and string the CEL rules touch: the API server estimates each rule's worst
# case cost from them and refuses the CRD when a rule could cost too much.
MAX_GROUPS = 32
MAX_KEY_LENGTH = 256  # stream keys; Redis allows more, nobody needs more
MAX_PIPELINE_NAME = 32
MAX_GROUP_NAME = 30
MAX_ENV = 64
MAX_ENV_FROM = 16
MAX_TOLERATIONS = 32
MAX_PULL_SECRETS = 16
MAX_LABELS = 32
MAX_ANNOTATIONS = 64
MAX_RESOURCE_NAMES = 16
DEFAULT_DEAD_LETTER_SUFFIX = ":dlq"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret or ConfigMap data key, as Kubernetes checks it (IsConfigMapKey): these characters, and not
# `.`, `..` or anything starting with `..` (RE2 has no lookahead: an optional dot, then a non-dot).
DATA_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
NO_WHITESPACE = r"^\S+$"
REDIS_URL = r"^rediss?://\S+$"
# A password in the URL's userinfo (`redis://user:secret@host`, `redis://:secret@host`).
URL_WITH_CREDENTIALS = "^rediss?://[^@/]*:[^@/]*@"
STREAM_ID = r"^(\$|[0-9]+(-[0-9]+)?)$"
IDENTIFIER_PATH = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
HANDLER = rf"^{IDENTIFIER_PATH}:{IDENTIFIER_PATH}$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = rf"^(\+|-)?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A Kubernetes qualified name (label and annotation keys, taint keys, extended resource names): a name of
# 1-63 characters, optionally after a DNS subdomain and `/`. The subdomain's own limit (253) is checked
# apart: `indexOf('/') <= 253`. `[.]` instead of `\.`: the same regex in Python, RE2 and a CEL literal.
QUALIFIED_NAME = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
MAX_PREFIX = 253
QUALIFIED_NAME_MESSAGE = (
    "a name of at most 63 characters (alphanumerics, '-', '_' or '.', starting and ending with an "
    "alphanumeric), optionally prefixed by a lowercase DNS subdomain of at most 253 characters and '/', "
    "e.g. example.com/team"
)
# Container resource names the API server takes without a domain (hugepages-<size> is a prefix).
STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES_PREFIX = "hugepages-"
# Redis hashes only the part between the first `{` and the next `}` when that part is not empty.
# `[{]` instead of `\{`: the same regex in Python, RE2 and inside a CEL string literal, no escaping.
HASH_TAG = "^[^{]*[{][^}]+[}]"
RESERVED_LABEL_PREFIXES = ("streampipe.dev/", "app.kubernetes.io/")
RESERVED_ENV_PREFIX = "STREAMPIPE_"

DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]
SecretKey = Annotated[str, StringConstraints(pattern=DATA_KEY, max_length=253)]
StreamKey = Annotated[str, StringConstraints(pattern=NO_WHITESPACE, max_length=MAX_KEY_LENGTH)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]


def is_qualified_name(name: str) -> bool:
    """Kubernetes' IsQualifiedName: ``team``, ``example.com/team`` (label, annotation and taint keys)."""
    # fullmatch: `$` in re.match would also take a trailing newline, which RE2 does not.
    return re.fullmatch(QUALIFIED_NAME, name) is not None and name.find("/") <= MAX_PREFIX


# CEL twin of is_qualified_name() for the string expression ``name``.
def _cel_qualified_name(name: str) -> str:
    return f"({name}.matches('{QUALIFIED_NAME}') && {name}.indexOf('/') <= {MAX_PREFIX})"


def is_container_resource_name(name: str) -> bool:
    """A resource name the API server takes in a container's requests or limits.

    Kubernetes' validateContainerResourceName: a qualified name that is either standard (cpu, memory,
    ephemeral-storage, hugepages-<size>) or has a domain; a domain other than kubernetes.io's must make an
    extended resource name, whose quota name ``requests.<name>`` is a qualified name too.
    """
    if not is_qualified_name(name):
        return False
    if "/" not in name:
        return name in STANDARD_CONTAINER_RESOURCES or name.startswith(HUGEPAGES_PREFIX)
    if "kubernetes.io/" in name:
        return True
    return not name.startswith("requests.") and name.find("/") <= MAX_PREFIX - len("requests.")


# CEL twin of is_container_resource_name() for the string expression ``name``.
def _cel_container_resource_name(name: str) -> str:
    standard = ", ".join(f"'{resource}'" for resource in STANDARD_CONTAINER_RESOURCES)
    return (
        f"{_cel_qualified_name(name)} && ({name}.contains('/') ? ({name}.contains('kubernetes.io/') || "
        f"(!{name}.startsWith('requests.') && {name}.indexOf('/') <= {MAX_PREFIX - len('requests.')})) : "
        f"({name} in [{standard}] || {name}.startsWith('{HUGEPAGES_PREFIX}')))"
    )


def hash_tag(key: str) -> str | None:
    """The part of a key Redis Cluster hashes (``{orders}:events`` -> ``orders``), or None."""
    match = re.match(HASH_TAG, key)
    return match.group()[key.index("{") + 1 : -1] if match else None


# CEL twin of hash_tag(): the text between the first `{` and the `}` after it (callers check HASH_TAG).
def _cel_hash_tag(key: str) -> str:
    return f"{key}.substring({key}.indexOf('{{') + 1, {key}.indexOf('}}', {key}.indexOf('{{')))"


class Quantity:
    """A Kubernetes resource quantity (``500m``, ``1Gi``, ``2``): an int or a string, as the API has it."""

    @staticmethod
    def _validate(value: object) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.match(QUANTITY, value):
            return value
        raise PydanticCustomError(
            "quantity", "should match '{pattern}': a quantity such as 500m, 2 or 1Gi", {"pattern": QUANTITY}
        )

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls._validate)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The one anyOf a structural schema allows: int-or-string, spelled the way Kubernetes spells it.
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "x-kubernetes-int-or-string": True,
        }


QuantityValue = Annotated[int | str, Quantity]


def _utc_seconds(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


# metav1.Time: RFC 3339 in UTC with whole seconds, the only form Kubernetes writes.
Timestamp = Annotated[
    datetime,
    AfterValidator(_utc_seconds),
    PlainSerializer(lambda value: value.strftime("%Y-%m-%dT%H:%M:%SZ"), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

_SPEC_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    strict=True,
    extra="forbid",
    frozen=True,
    json_schema_extra=add_rules_to_schema,
)


class SpecModel(RuleModel):
    """Base of the spec models: strict, closed, frozen, camelCase on the wire."""

    model_config = _SPEC_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _prune_nulls(cls, data: Any) -> Any:
        # The API server drops `field: null` for non-nullable fields before defaulting; so do we, so that
        # `mode: null` means "default" in both places instead of an error here only.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


def default_of(model: type[BaseModel]) -> dict[str, Any]:
    """``json_schema_extra`` for a sub-object field whose default is the model with all its defaults.

    The CRD then spells the whole default object out (``backoff: {initial: 1s, max: 5m, ...}``) rather
    than ``{}``: the API server checks a default against the CEL rules as written, before filling in
    nested defaults, and rules such as ``duration(self.max) >= duration(self.initial)`` need the keys.
    """
    return {"default": model().model_dump(mode="json", by_alias=True, exclude_none=True)}


# --------------------------------------------------------------------------------------------- redis


class SentinelSpec(SpecModel):
    """Redis Sentinel: the master to ask the sentinels for. The sentinels themselves are the url's hosts."""

    master_name: Annotated[str, StringConstraints(pattern=NO_WHITESPACE, max_length=253)] = Field(
        description="Name of the monitored master, as in `sentinel monitor <masterName> ...`.",
    )


class AuthSpec(SpecModel):
    """Credentials from a Secret in the pipeline's namespace; never written into the resource itself."""

    secret_name: DnsSubdomain = Field(description="Name of the Secret holding the credentials.")
    username_key: SecretKey | None = Field(
        default=None,
        description="Key in the Secret holding the ACL user name. Omit to authenticate as the default user "
        "with a password only.",
    )
    password_key: SecretKey = Field(default="password", description="Key in the Secret holding the password.")


class TLSSpec(SpecModel):
    """TLS settings for a `rediss://` url."""

    ca_secret_name: DnsSubdomain | None = Field(
        default=None,
        description="Secret holding the CA certificate that signed the server's certificate. Omit to trust "
        "the system CAs of the worker image.",
    )
    ca_key: SecretKey = Field(
        default="ca.crt", description="Key in caSecretName holding the PEM CA certificate."
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="Do not verify the server's certificate. Encrypts without authenticating the server: "
        "for tests only.",
    )

    @cel_rule(
        "!(self.insecureSkipVerify && has(self.caSecretName))",
        message="set caSecretName or insecureSkipVerify, not both: skipping verification ignores the CA",
        field_path=".insecureSkipVerify",
    )
    def _ca_or_skip(self) -> bool:
        return not (self.insecure_skip_verify and self.ca_secret_name is not None)


class RedisSpec(SpecModel):
    """Where the stream lives and how to connect to it."""

    url: Annotated[str, StringConstraints(pattern=REDIS_URL, max_length=2048)] = Field(
        description="Server URL: `redis://host:6379/0`, or `rediss://...` for TLS. In sentinel mode the "
        "hosts are the sentinels (`redis://s1:26379,s2:26379/0`); in cluster mode any seed nodes. May "
        "carry a user name but never a password: use auth.",
    )
    mode: Literal["standalone", "sentinel", "cluster"] = Field(
        default="standalone",
        description="Topology: `standalone` (one server or a replicated primary behind a Service), "
        "`sentinel` (ask the sentinels in url for the current master) or `cluster` (Redis Cluster; "
        "stream keys need a {hash tag}).",
    )
    sentinel: SentinelSpec | None = Field(
        default=None, description="Sentinel settings: required when mode is sentinel, refused otherwise."
    )
    auth: AuthSpec | None = Field(
        default=None, description="Credentials (password, optionally an ACL user) from a Secret."
    )
    tls: TLSSpec | None = Field(default=None, description="TLS verification settings; needs a rediss:// url.")

    @cel_rule(
        f"!self.url.matches('{URL_WITH_CREDENTIALS}')",
        message="must not contain a password: put it in a Secret and reference it with auth.secretName",
        field_path=".url",
    )
    def _no_password_in_url(self) -> bool:
        return not re.match(URL_WITH_CREDENTIALS, self.url)

    @cel_rule(
        "self.mode != 'sentinel' || has(self.sentinel)",
        message="required when mode is sentinel: set sentinel.masterName",
        field_path=".sentinel",
    )
    def _sentinel_required(self) -> bool:
        return self.mode != "sentinel" or self.sentinel is not None

    @cel_rule(
        "self.mode == 'sentinel' || !has(self.sentinel)",
        message="only allowed when mode is sentinel",
        field_path=".sentinel",
    )
    def _sentinel_only_with_mode(self) -> bool:
        return self.mode == "sentinel" or self.sentinel is None

    @cel_rule(
        "!has(self.tls) || self.url.startsWith('rediss://')",
        message="needs a rediss:// url: tls settings apply only to TLS connections",
        field_path=".tls",
    )
    def _tls_needs_rediss(self) -> bool:
        return self.tls is None or self.url.startswith("rediss://")


# ------------------------------------------------------------------------------ retention and retry


class RetentionSpec(SpecModel):
    """How the operator trims the stream (XTRIM MAXLEN / MINID)."""

    max_length: Annotated[int, Field(ge=1, le=10**12)] | None = Field(
        default=None, description="Keep at most this many entries (XTRIM MAXLEN)."
    )
    max_age: Annotated[Duration, DurationRange("1s", "87600h")] | None = Field(
        default=None, description="Keep entries younger than this (XTRIM MINID now-maxAge), e.g. `24h`."
    )
    approximate: bool = Field(
        default=True,
        description="Trim with `~`: Redis removes whole macro nodes only, which is much cheaper and may keep "
        "a few more entries than the limit.",
    )
    protect_unprocessed: bool = Field(
        default=True,
        description="Never trim past the oldest entry a group has not yet read or acknowledged; the "
        "RetentionHeld condition reports when this holds trimming back.",
    )
    interval: Annotated[Duration, DurationRange("1s", "24h")] = Field(
        default=Duration("30s"), description="How often the operator trims."
    )

    @cel_rule(
        "has(self.maxLength) || has(self.maxAge)",
        message="set maxLength, maxAge or both: retention without a limit never trims",
    )
    def _has_limit(self) -> bool:
        return self.max_length is not None or self.max_age is not None


class BackoffSpec(SpecModel):
    """Delay before a failed entry is retried: initial * multiplier^(deliveries-1), at most max."""

    initial: Annotated[Duration, DurationRange("1ms", "24h")] = Field(
        default=Duration("1s"), description="Delay before the first retry."
    )
    multiplier: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        default=2.0, description="Factor applied to the delay after each failed delivery."
    )
    max: Annotated[Duration, DurationRange("1ms", "24h")] = Field(
        default=Duration("5m"), description="Upper bound of the delay."
    )

    @cel_rule(
        "duration(self.max) >= duration(self.initial)",
        message_expression="'must be >= initial (%s)'.format([self.initial])",
        field_path=".max",
    )
    def _max_not_below_initial(self) -> bool | str:
        return self.max.delta >= self.initial.delta or f"must be >= initial ({self.initial})"


class RetrySpec(SpecModel):
    """Retries of failed entries. The attempt count is the entry's delivery count in the group's PEL."""

    max_deliveries: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=3,
        description="Deliveries (first attempt included) before an entry moves to the dead-letter stream.",
    )
    backoff: BackoffSpec = Field(
        default_factory=BackoffSpec,
        description="Delay between attempts.",
        json_schema_extra=default_of(BackoffSpec),
    )
    claim_idle: Annotated[Duration, DurationRange("1s", "24h")] = Field(
        default=Duration("60s"),
        description="Entries of a consumer that stopped (crashed pod) are claimed by another consumer "
        "after being idle this long (XAUTOCLAIM min-idle-time).",
    )


class DeadLetterSpec(SpecModel):
    """The dead-letter stream: entries that failed maxDeliveries times, or that no handler can parse."""

    stream: StreamKey | None = Field(
        default=None,
        description="Key of the dead-letter stream. Default: `<spec.stream>:dlq`, which shares the "
        "stream's {hash tag}.",
    )
    max_length: Annotated[int, Field(ge=1, le=10**12)] = Field(
        default=100_000,
        description="The operator trims the dead-letter stream to about this many entries; the oldest "
        "dead letters go first.",
    )


# ------------------------------------------------------------------------------------------- groups


class ScalingSpec(SpecModel):
    """How the operator sizes the group's worker Deployment from its backlog (lag + pending)."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=1,
        description="Fewest worker pods. 0 lets an idle group scale to zero; it wakes when the backlog "
        "exceeds activationBacklog, and never drops to zero while entries are pending.",
    )
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = Field(default=10, description="Most worker pods.")
    backlog_per_replica: Annotated[int, Field(ge=1, le=10**9)] = Field(
        default=1000,
        description="Target backlog per pod: desired replicas = ceil(backlog / backlogPerReplica), clamped "
        "to [minReplicas, maxReplicas].",
    )
    activation_backlog: Annotated[int, Field(ge=0, le=10**9)] = Field(
        default=0,
        description="With minReplicas 0: the backlog above which a group at zero gets its first pod.",
    )
    poll_interval: Annotated[Duration, DurationRange("1s", "10m")] = Field(
        default=Duration("5s"), description="How often the operator measures the backlog."
    )
    scale_down_stabilization: Annotated[Duration, DurationRange("0s", "1h")] = Field(
        default=Duration("5m"),
        description="Scale down only to the highest desired value seen in this window (as the "
        "HorizontalPodAutoscaler does); scaling up is immediate. At most 1h, the HPA's own limit.",
    )
    mode: Literal["native", "none"] = Field(
        default="native",
        description="`native`: the operator sets the Deployment's replicas. `none`: it never touches them "
        "after creating the Deployment with minReplicas (another autoscaler, or a person, owns them).",
    )

    @cel_rule(
        "self.minReplicas <= self.maxReplicas",
        # format(), not `+ string(...)`: the cost estimator cannot bound int-to-string concatenation.
        message_expression="'must be >= minReplicas (%d)'.format([self.minReplicas])",
        field_path=".maxReplicas",
    )
    def _min_not_above_max(self) -> bool | str:
        return self.min_replicas <= self.max_replicas or f"must be >= minReplicas ({self.min_replicas})"

    @cel_rule(
        "self.activationBacklog == 0 || self.minReplicas == 0",
        message="applies only when minReplicas is 0: it is the backlog that wakes a group scaled to zero",
        field_path=".activationBacklog",
    )
    def _activation_needs_zero(self) -> bool:
        return self.activation_backlog == 0 or self.min_replicas == 0


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
        _refuse_duplicates([var.name for var in self.env or []], "env", "variable")
        return self


def _refuse_duplicates(names: Sequence[str], field: str, what: str) -> None:
    """Raise at ``field[i]`` for each repeated name; worded like the API server's list-map check."""
    first: dict[str, int] = {}
    errors: list[InitErrorDetails] = []
    for index, name in enumerate(names):
        if name in first:
            key = json.dumps({"name": name}, separators=(",", ":"))
            message = f"Duplicate value: {key}: {what} names must be unique (first at index {first[name]})"
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("duplicate", message), loc=(field, index), input=name
                )
            )
        else:
            first[name] = index
    if errors:
        raise ValidationError.from_exception_data(field, errors)


class GroupSpec(SpecModel):
    """A consumer group: its handler, its worker image and how its workers scale."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=MAX_GROUP_NAME)] = Field(
        description="Group name on the stream, and the suffix of the worker Deployment `<pipeline>-<name>` "
        "(a DNS label of at most 30 characters).",
    )
    start_id: Annotated[str, StringConstraints(pattern=STREAM_ID, max_length=41)] = Field(
        default="$",
        description="Where a new group starts reading: `$` (only new entries), `0` (the whole stream) or "
        "an entry ID. Used when the group is created; changing it later moves nothing.",
    )
    handler: Annotated[str, StringConstraints(pattern=HANDLER, max_length=256)] = Field(
        description="The function or Router the workers call, as `module:attribute` importable in the image "
        "(e.g. `shop_handlers.billing:router`).",
    )
    image: Annotated[str, StringConstraints(pattern=NO_WHITESPACE, max_length=512)] = Field(
        description="Worker image: streampipe's worker image with your handler package installed."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    batch_size: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=100, description="Entries read per XREADGROUP call (COUNT)."
    )
    concurrency: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1,
        description="Handler calls in flight per pod. Above 1 (for async, I/O-bound handlers) entries of "
        "a batch may finish out of order.",
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec,
        description="Autoscaling on backlog.",
        json_schema_extra=default_of(ScalingSpec),
    )
    template: PodTemplateSpec | None = Field(default=None, description="Overrides for the worker pods.")


# --------------------------------------------------------------------------------------------- spec


class StreamPipelineSpec(SpecModel):
    """The desired state: one stream, its consumer groups, and the policies the operator enforces."""

    redis: RedisSpec = Field(description="The Redis or Valkey server holding the stream.")
    stream: StreamKey = Field(
        description="Key of the stream. In cluster mode it needs a {hash tag} (`{orders}:events`) so that "
        "the stream and its dead-letter stream live in one slot.",
    )
    retention: RetentionSpec | None = Field(
        default=None,
        description="Trimming. Without it the stream grows until producers trim it (XADD MAXLEN).",
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        description="Retries with backoff, and when an entry gives up and moves to the dead-letter stream.",
        json_schema_extra=default_of(RetrySpec),
    )
    dead_letter: DeadLetterSpec = Field(
        default_factory=DeadLetterSpec,
        description="The dead-letter stream.",
        json_schema_extra=default_of(DeadLetterSpec),
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What deleting the StreamPipeline does to the data: `Retain` leaves the stream, its "
        "groups and the dead-letter stream; `Delete` destroys them.",
    )
    groups: Annotated[list[GroupSpec], Field(min_length=1, max_length=MAX_GROUPS)] = Field(
        description="Consumer groups; each gets its own worker Deployment. Names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @cel_rule(
        "!has(self.deadLetter) || !has(self.deadLetter.stream) || self.deadLetter.stream != self.stream",
        message="must differ from spec.stream: dead letters would be consumed again",
        field_path=".deadLetter.stream",
    )
    def _dead_letter_differs(self) -> bool:
        return self.dead_letter.stream != self.stream

    @cel_rule(
        f"self.redis.mode != 'cluster' || self.stream.matches('{HASH_TAG}')",
        message="in cluster mode the key needs a {hash tag}, e.g. {orders}:events, so the stream and its "
        "dead-letter stream share one slot",
        field_path=".stream",
    )
    def _cluster_stream_tagged(self) -> bool:
        return self.redis.mode != "cluster" or hash_tag(self.stream) is not None

    @cel_rule(
        f"self.redis.mode != 'cluster' || !self.stream.matches('{HASH_TAG}') || !has(self.deadLetter) "
        f"|| !has(self.deadLetter.stream) || (self.deadLetter.stream.matches('{HASH_TAG}') && "
        f"{_cel_hash_tag('self.deadLetter.stream')} == {_cel_hash_tag('self.stream')})",
        message="in cluster mode it needs the same {hash tag} as spec.stream",
        field_path=".deadLetter.stream",
    )
    def _cluster_dead_letter_same_slot(self) -> bool:
        tag = hash_tag(self.stream)
        if self.redis.mode != "cluster" or tag is None or self.dead_letter.stream is None:
            return True
        return hash_tag(self.dead_letter.stream) == tag

    @model_validator(mode="after")
    def _group_names_unique(self) -> StreamPipelineSpec:
        # The CRD declares groups a list-map keyed by name, so the API server refuses duplicates itself.
        _refuse_duplicates([group.name for group in self.groups], "groups", "group")
        return self

    @property
    def dead_letter_stream(self) -> str:
        """The dead-letter stream key: deadLetter.stream, or ``<stream>:dlq``."""
        return self.dead_letter.stream or f"{self.stream}{DEFAULT_DEAD_LETTER_SUFFIX}"

    def group(self, name: str) -> GroupSpec:
        """The group called ``name``; KeyError names the groups there are."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(
            f"no group {name!r} in this pipeline (groups: {', '.join(g.name for g in self.groups)})"
        )


# ------------------------------------------------------------------------------------------- status


class ConditionType(StrEnum):
    """The condition types the operator reports (see docs/api.md for reasons)."""

    READY = "Ready"
    REDIS_REACHABLE = "RedisReachable"
    GROUPS_READY = "GroupsReady"
    SCALING = "Scaling"
    RETENTION_HELD = "RetentionHeld"
    DURABILITY_AT_RISK = "DurabilityAtRisk"


ConditionStatus = Literal["True", "False", "Unknown"]

_STATUS_CONFIG = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class StatusModel(BaseModel):
    """Base of the status models: written by the operator, so lenient on input and mutable."""

    model_config = _STATUS_CONFIG


class Condition(StatusModel):
    """One aspect of the pipeline's state, in the shape of Kubernetes' metav1.Condition."""

    type: Annotated[str, StringConstraints(max_length=316)] = Field(
        description="Condition type: Ready, RedisReachable, GroupsReady, Scaling, RetentionHeld, "
        "DurabilityAtRisk."
    )
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    ] = Field(description="CamelCase reason for the last transition, for machines.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="What happened and what to do about it, for people."
    )
    last_transition_time: Timestamp = Field(description="When status last changed (not reason or message).")
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the spec this condition was computed from."
    )


class ServerStatus(StatusModel):
    """The Redis-protocol server the pipeline runs on, as it reports itself."""

    family: Literal["redis", "valkey"] = Field(description="`redis` or `valkey`.")
    version: Annotated[str, StringConstraints(max_length=64)] = Field(description="The server's own version.")


class StreamStatus(StatusModel):
    """Figures of the stream (XINFO STREAM, MEMORY USAGE) and of the operator's trimming."""

    length: Annotated[int, Field(ge=0)] = Field(default=0, description="Entries in the stream (XLEN).")
    first_entry_id: ShortText | None = Field(default=None, description="ID of the oldest entry.")
    last_generated_id: ShortText | None = Field(
        default=None, description="ID of the newest entry ever added."
    )
    entries_added: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Entries ever added to the stream (Redis >= 7.0)."
    )
    memory_bytes: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Memory used by the stream key (MEMORY USAGE)."
    )
    trimmed_total: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Entries the operator's trimming has removed since the pipeline was created."
    )
    last_trim_at: Timestamp | None = Field(default=None, description="When the operator last trimmed.")


class GroupStatus(StatusModel):
    """Figures of one consumer group and its workers."""

    name: Annotated[str, StringConstraints(max_length=MAX_GROUP_NAME)] = Field(description="The group.")
    lag: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Entries not yet delivered to the group; absent when unknown."
    )
    lag_estimated: bool = Field(
        default=False,
        description="The server could not report lag (after XDEL or trimming) and it was estimated.",
    )
    pending: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Delivered, not yet acknowledged (PEL)."
    )
    backlog: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="lag + pending: the figure the group is scaled on."
    )
    consumers: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Consumers registered in the group."
    )
    oldest_pending_age: ShortText | None = Field(
        default=None,
        description="Age of the oldest pending entry (since it was added, from its ID), e.g. `2s`.",
    )
    last_delivered_id: ShortText | None = Field(
        default=None,
        description="Last ID delivered to the group; a group deleted by hand is recreated here.",
    )
    entries_read: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="The group's read counter seen with lastDeliveredId; makes lag exact after recreation.",
    )
    oldest_pending_id: ShortText | None = Field(
        default=None,
        description="Smallest pending ID; a group deleted by hand is recreated just before it, so its "
        "unacknowledged entries are delivered again.",
    )
    replicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Worker pods that exist.")
    ready_replicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Worker pods that are ready.")
    desired_replicas: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Worker pods the scaling policy asks for."
    )
    last_scale_time: Timestamp | None = Field(default=None, description="When replicas were last changed.")


class DeadLetterStatus(StatusModel):
    """Figures of the dead-letter stream."""

    stream: ShortText | None = Field(default=None, description="Key of the dead-letter stream.")
    length: Annotated[int, Field(ge=0)] = Field(default=0, description="Entries in the dead-letter stream.")


class StreamPipelineStatus(StatusModel):
    """The observed state, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the spec the operator last acted on."
    )
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(
        default_factory=list,
        description="Current conditions; Ready summarises the others.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    server: ServerStatus | None = Field(default=None, description="The server, as detected.")
    stream: StreamStatus | None = Field(default=None, description="Stream figures.")
    groups: Annotated[list[GroupStatus], Field(max_length=MAX_GROUPS)] = Field(
        default_factory=list,
        description="Per-group figures.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    dead_letter: DeadLetterStatus | None = Field(default=None, description="Dead-letter stream figures.")
    backlog: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Sum of the groups' backlogs (the Backlog column)."
    )
    workers: ShortText | None = Field(
        default=None, description="Ready worker pods / desired worker pods over all groups, e.g. `3/4`."
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if any."""
        return find_condition(self.conditions, type_)

    def summarized(self) -> StreamPipelineStatus:
        """A copy with backlog and workers recomputed from the groups (for the printer columns)."""
        backlogs = [group.backlog for group in self.groups if group.backlog is not None]
        ready = sum(group.ready_replicas for group in self.groups)
        desired = sum(group.desired_replicas for group in self.groups)
        return self.model_copy(
            update={
                "backlog": sum(backlogs) if backlogs else None,
                "workers": f"{ready}/{desired}" if self.groups else None,
            }
        )


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(item) for item in node]
    return node


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of this type in ``conditions``, if any."""
    return next((condition for condition in conditions if condition.type == type_), None)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of ``type_`` set; the input is not modified.

    ``lastTransitionTime`` changes only when ``status`` flips (or the condition is new): a reason or
    message update keeps the time, as Kubernetes' conventions ask. Order is kept; a new type is appended.
    """
    previous = find_condition(conditions, type_)
    transition = now if previous is None or previous.status != status else previous.last_transition_time
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if condition.type == type_ else condition for condition in conditions]


# ------------------------------------------------------------------------------------ the resource


class ObjectMeta(StatusModel):
    """The metadata fields streampipe reads; the rest is kept as it came."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=MAX_PIPELINE_NAME)] | None = Field(
        default=None,
        description="Name of the pipeline: a DNS label of at most 32 characters, because it prefixes the "
        "worker Deployments `<name>-<group>`.",
    )
    namespace: str | None = Field(default=None, description="Namespace of the pipeline.")
    uid: str | None = Field(default=None, description="Unique ID set by the API server.")
    generation: int | None = Field(default=None, description="Spec generation set by the API server.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")


class StreamPipeline(BaseModel):
    """A Redis Streams / Valkey event pipeline: one stream, its consumer groups, retention, retries and a
    dead-letter stream. The operator creates the groups, trims the stream and runs one autoscaled worker
    Deployment per group."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["streampipe.dev/v1alpha1"] = Field(
        default="streampipe.dev/v1alpha1", description="API version."
    )
    kind: Literal["StreamPipeline"] = Field(default="StreamPipeline", description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: StreamPipelineSpec = Field(description="Desired state.")
    status: StreamPipelineStatus | None = Field(default=None, description="Observed state.")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StreamPipeline:
        """Parse a resource body as the API server or kopf hands it over.

        kopf's ``body``/``spec`` are read-only Mapping views, which strict models do not take for
        dicts; this copies them into plain dicts and lists first. Raises pydantic's ValidationError
        (``streampipe_operator.validation.errors_of`` words it the API server's way).
        """
        return cls.model_validate(_plain(body))

    def to_manifest(self) -> dict[str, Any]:
        """The resource as Kubernetes stores it: camelCase, absent instead of null, defaults filled in."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
