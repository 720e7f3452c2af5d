"""What the API models share: limits, patterns, constrained field types, and the spec models' base."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
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

from streampipe_operator.api.cel import RuleModel, add_rules_to_schema

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


def refuse_duplicates(names: Sequence[str], field: str, what: str) -> None:
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
