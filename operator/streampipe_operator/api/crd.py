"""The StreamPipeline CustomResourceDefinition, generated from the API models (``spec``, ``status``).

pydantic writes JSON Schema (2020-12); the API server wants a *structural* OpenAPI v3 schema: every
node typed, no ``$ref``, no ``anyOf``/``oneOf`` except Kubernetes' int-or-string, no ``title``, no
``additionalProperties`` next to ``properties``, no ``null`` branches. :func:`structural` rewrites one into
the other and refuses anything it does not understand, so a model change that cannot be expressed fails
here, not on a cluster. The output is deterministic (sorted keys), which is what lets the committed
``crds/streampipeline.yaml`` be checked against ``streampipe crd`` by a golden test.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from streampipe_operator import api
from streampipe_operator.api.durations import DURATION_PATTERN

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Stream", "type": "string", "jsonPath": ".spec.stream", "description": "Stream key."},
    {
        "name": "Partitions",
        "type": "integer",
        "jsonPath": ".spec.partitions.count",
        "description": "Number of partitions (empty: one stream).",
    },
    {
        "name": "Backlog",
        "type": "integer",
        "jsonPath": ".status.backlog",
        "description": "Entries not yet processed, over all groups (lag + pending).",
    },
    {
        "name": "DLQ",
        "type": "integer",
        "jsonPath": ".status.deadLetter.length",
        "description": "Entries in the dead-letter stream.",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Status of the Ready condition.",
    },
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers",
        "description": "Ready worker pods / desired worker pods.",
        "priority": 1,
    },
    {
        "name": "Mode",
        "type": "string",
        "jsonPath": ".spec.redis.mode",
        "description": "Redis topology.",
        "priority": 1,
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Reason of the Ready condition.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# `kubectl get spipe --field-selector spec.stream=...` finds the pipelines on one stream (conflicts).
SELECTABLE_FIELDS = [{"jsonPath": ".spec.stream"}]

# Keywords a structural schema may carry, besides the x-kubernetes-* extensions.
_KEYWORDS = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "default",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "anyOf",
}
_EXTENSIONS = {
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}
_NULL = {"type": "null"}


class SchemaError(ValueError):
    """A model that has no structural OpenAPI form; the message names the schema path."""


def _description(text: str) -> str:
    # Docstrings wrap at the source's line length; `kubectl explain` re-wraps, so one line each.
    return re.sub(r"\s+", " ", text).strip()


def structural(node: Mapping[str, Any], defs: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """One pydantic JSON Schema node (and everything under it) as a structural OpenAPI v3 node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # The field's own description and default win over the model's docstring.
        return structural({**target, **node}, defs, path)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [branch for branch in node.pop("anyOf") if branch != _NULL]
        if len(branches) != 1:
            raise SchemaError(f"{path or '<root>'}: only `X | None` unions have a structural form")
        if node.get("default", ...) is None:
            del node["default"]
        # Optional fields are simply absent: the API server prunes `null` for non-nullable fields, and
        # so do the models (SpecModel._prune_nulls), so no `nullable` anywhere.
        return structural({**branches[0], **node}, defs, path)
    if "allOf" in node or "oneOf" in node or "not" in node:
        raise SchemaError(f"{path or '<root>'}: allOf/oneOf/not have no structural form")

    node.pop("title", None)
    node.pop("$defs", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "description" in node:
        node["description"] = _description(node["description"])
    if "additionalProperties" in node:
        _map_values(node, defs, path)
    if "properties" in node:
        node["properties"] = {
            name: structural(child, defs, f"{path}.{name}") for name, child in node["properties"].items()
        }
    if "items" in node:
        node["items"] = structural(node["items"], defs, f"{path}[*]")
    if "default" in node:
        node["default"] = copy.deepcopy(node["default"])  # no shared objects: YAML would emit anchors
    unknown = set(node) - _KEYWORDS - _EXTENSIONS
    if unknown:
        raise SchemaError(f"{path or '<root>'}: keywords {sorted(unknown)} are not allowed in a CRD schema")
    return node


def _map_values(node: dict[str, Any], defs: Mapping[str, Any], path: str) -> None:
    values = node.pop("additionalProperties")
    if values is True:
        # dict[str, Any]: a Kubernetes object we keep as written (affinity).
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(values, Mapping):
        node["additionalProperties"] = structural(values, defs, f"{path}.*")
    # False is pydantic's extra="forbid": the API server prunes (or, with strict field validation,
    # refuses) unknown fields by itself, and additionalProperties beside properties is not structural.


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_defaults(value) for key, value in node.items() if key != "default"}
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    return node


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's structural schema (camelCase property names)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}))


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the StreamPipeline CRD."""
    resource = api.StreamPipeline
    fields = resource.model_fields
    spec = model_schema(api.StreamPipelineSpec)
    spec["description"] = _description(fields["spec"].description or "")
    # Status is written by the operator in full; server-side defaults there would only add noise.
    status = _without_defaults(model_schema(api.StreamPipelineStatus))
    status["description"] = _description(fields["status"].description or "")
    metadata_name = model_schema(api.ObjectMeta)["properties"]["name"]
    root: dict[str, Any] = {
        "type": "object",
        "description": _description(resource.__doc__ or ""),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object.",
            },
            "kind": {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this object "
                "represents.",
            },
            # The one part of metadata a CRD may constrain (besides generateName).
            "metadata": {"type": "object", "properties": {"name": metadata_name}},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    problems = list(structural_problems(root))
    if problems:
        raise SchemaError("the generated schema is not structural:\n" + "\n".join(problems))
    return root


def crd_manifest() -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "streampipe", "app.kubernetes.io/part-of": "streampipe"},
            # Deleting the CRD deletes every StreamPipeline: no uninstall or prune may do it. Helm keeps
            # crds/ anyway (and, with this, a CRD rendered as a template); Argo CD neither prunes it nor
            # deletes it with its Application.
            "annotations": {
                "helm.sh/resource-policy": "keep",
                "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
            },
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": api.LIST_KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "selectableFields": copy.deepcopy(SELECTABLE_FIELDS),
                }
            ],
        },
    }


HEADER = (
    "# Generated by `streampipe crd` from operator/streampipe_operator/api/; do not edit.\n"
    "# Regenerate with `make crds` (writes crds/ and charts/streampipe/crds/).\n"
)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a shared sub-object out again instead of as an anchor (`&id001`) and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    """The CRD as YAML: the exact text of ``crds/streampipeline.yaml``."""
    body = yaml.dump(crd_manifest(), Dumper=_NoAliasDumper, sort_keys=True, width=110, allow_unicode=True)
    return HEADER + body


def structural_problems(node: Any, path: str = "") -> Iterator[str]:
    """Every violation of the structural-schema rules under ``node`` (empty when it is structural).

    Each node has a type, or is int-or-string, or (under a typed parent) preserves unknown fields; no
    ``$ref``, ``title``, ``nullable``, ``oneOf``/``allOf``/``not``; ``anyOf`` only for int-or-string;
    ``additionalProperties`` never beside ``properties``; list-maps keyed by required fields.
    """
    where = path or "<root>"
    if not isinstance(node, Mapping):
        yield f"{where}: not a schema object"
        return
    for keyword in ("$ref", "title", "nullable", "oneOf", "allOf", "not", "$defs", "definitions"):
        if keyword in node:
            yield f"{where}: has {keyword}"
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not int_or_string:
        yield f"{where}: no type"
    if "anyOf" in node and not int_or_string:
        yield f"{where}: anyOf outside int-or-string"
    if "properties" in node and "additionalProperties" in node:
        yield f"{where}: properties and additionalProperties together"
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            if key not in item.get("required", []) and "default" not in item.get("properties", {}).get(
                key, {}
            ):
                yield f"{where}: list-map key {key} is neither required nor defaulted"
    for name, child in node.get("properties", {}).items():
        yield from structural_problems(child, f"{path}.{name}")
    if "items" in node:
        yield from structural_problems(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from structural_problems(node["additionalProperties"], f"{path}.*")


# ------------------------------------------------------------------------------- docs/api.md tables

REFERENCE_BEGIN = "<!-- BEGIN GENERATED REFERENCE: `make crds` rewrites this part from the models -->"
REFERENCE_END = "<!-- END GENERATED REFERENCE -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_of(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity (int or string)"
    if node.get("pattern") == DURATION_PATTERN:
        return "duration"
    kind = str(node.get("type", ""))
    if kind == "array":
        return f"list of {_type_of(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
        return f"map of {_type_of(node['additionalProperties'])}"
    if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (kept as written)"
    return kind


def _constraints(node: Mapping[str, Any], required: bool) -> str:
    parts = ["required"] if required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    if "minimum" in node or "maximum" in node:
        parts.append(f"{node.get('minimum', '')}..{node.get('maximum', '')}")
    if "minItems" in node or "maxItems" in node:
        parts.append(f"{node.get('minItems', 0)}..{node.get('maxItems', '')} items")
    if "maxProperties" in node:
        parts.append(f"at most {node['maxProperties']} entries")
    if "maxLength" in node and node.get("pattern") != DURATION_PATTERN:
        parts.append(f"at most {node['maxLength']} chars")
    if "pattern" in node and node.get("pattern") != DURATION_PATTERN:
        parts.append(f"pattern `{node['pattern']}`")
    if node.get("x-kubernetes-list-type") == "map":
        parts.append("unique " + ", ".join(node.get("x-kubernetes-list-map-keys", [])))
    for rule in node.get("x-kubernetes-validations", []):
        if rule["rule"].startswith("!self.matches") and "duration(self)" in rule["rule"]:
            parts.append(rule["message"].removeprefix("must be "))
    return "; ".join(parts)


def _field_rows(node: Mapping[str, Any], prefix: str) -> Iterator[str]:
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        default = json.dumps(child["default"], separators=(", ", ": ")) if "default" in child else ""
        shown_default = f"`{default}`" if default and len(default) < 40 else ""
        cells = [f"`{path}`", _type_of(child), shown_default, _constraints(child, name in required)]
        yield "| " + " | ".join(_cell(cell) for cell in [*cells, child.get("description", "")]) + " |"
        target = child.get("items", child)
        if "properties" in target:
            yield from _field_rows(target, f"{path}[]" if "items" in child else path)


def _rule_rows(node: Mapping[str, Any], path: str) -> Iterator[str]:
    for rule in node.get("x-kubernetes-validations", []):
        where = path + rule.get("fieldPath", "")
        message = rule.get("message") or f"(computed) `{rule['messageExpression']}`"
        yield f"| `{_cell(where)}` | `{_cell(rule['rule'])}` | {_cell(message)} |"
    for name, child in node.get("properties", {}).items():
        yield from _rule_rows(child, f"{path}.{name}")
    if "items" in node:
        yield from _rule_rows(node["items"], f"{path}[]")


def _shown_in(column: Mapping[str, Any]) -> str:
    return "-o wide" if column.get("priority") else "always"


def reference_markdown() -> str:
    """The generated part of docs/api.md: field tables, CEL rules and printer columns."""
    schema = openapi_schema()
    header = "| Field | Type | Default | Constraints | Description |\n| --- | --- | --- | --- | --- |"
    spec_rows = "\n".join(_field_rows(schema["properties"]["spec"], "spec"))
    status_rows = "\n".join(_field_rows(schema["properties"]["status"], "status"))
    rules = "\n".join(_rule_rows(schema["properties"]["spec"], "spec"))
    columns = "\n".join(
        f"| {c['name']} | `{_cell(c['jsonPath'])}` | {c['type']} | {_shown_in(c)} |" for c in PRINTER_COLUMNS
    )
    return "\n".join(
        [
            REFERENCE_BEGIN,
            "",
            "### Spec fields",
            "",
            header,
            spec_rows,
            "",
            "### Status fields",
            "",
            header,
            status_rows,
            "",
            "### CEL rules (`x-kubernetes-validations`)",
            "",
            "Each has a Python twin in `streampipe_operator.api` with the same message, "
            "so `streampipe validate` agrees.",
            "",
            "| Reported at | Rule | Message |\n| --- | --- | --- |",
            rules,
            "",
            "### Printer columns",
            "",
            "| Column | JSONPath | Type | Shown |\n| --- | --- | --- | --- |",
            columns,
            "",
            REFERENCE_END,
        ]
    )


def update_reference(document: str) -> str:
    """``document`` (docs/api.md) with its generated part replaced by the current one."""
    start = document.index(REFERENCE_BEGIN)
    end = document.index(REFERENCE_END) + len(REFERENCE_END)
    return document[:start] + reference_markdown() + document[end:]
