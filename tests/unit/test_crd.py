"""The generated CRD: committed copies are current, the schema is structural and fully described."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from streampipe_operator import api
from streampipe_operator.api.cel import RuleModel
from streampipe_operator.api.crd import (
    SchemaError,
    crd_yaml,
    openapi_schema,
    reference_markdown,
    structural,
    structural_problems,
    update_reference,
)
from streampipe_operator.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = [
    ROOT / "crds" / "streampipeline.yaml",
    ROOT / "charts" / "streampipe" / "crds" / "streampipeline.yaml",
]

API_PKG = f"{api.__name__}."  # the models live in the api sub-package's modules


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: str(path.relative_to(ROOT)))
def test_committed_crd_is_current(path: Path) -> None:
    assert path.exists(), f"{path} missing: run `make crds`"
    assert path.read_text() == crd_yaml(), f"{path} differs from `streampipe crd`: run `make crds` and commit"


def test_streampipe_crd_prints_it() -> None:
    result = CliRunner().invoke(app, ["crd"])
    assert result.exit_code == 0
    assert result.stdout == crd_yaml()


def test_output_is_deterministic_and_plain_yaml() -> None:
    text = crd_yaml()
    assert crd_yaml() == text
    assert "&id" not in text
    assert "*id" not in text  # no anchors/aliases: some tools mishandle them


def _crd() -> dict[str, Any]:
    return dict(yaml.safe_load(COMMITTED[0].read_text()))


def test_names_scope_and_subresources() -> None:
    crd = _crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "streampipelines.streampipe.dev"
    assert spec["group"] == "streampipe.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "StreamPipeline",
        "listKind": "StreamPipelineList",
        "plural": "streampipelines",
        "singular": "streampipeline",
        "shortNames": ["spipe"],
        "categories": ["streampipe"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    # Status only through /status; no /scale: replicas are per group, on the Deployments.
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    [version] = _crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    default_view = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_view == ["Stream", "Partitions", "Backlog", "DLQ", "Ready", "Age"]
    assert columns["Partitions"]["jsonPath"] == ".spec.partitions.count"
    assert columns["Stream"]["jsonPath"] == ".spec.stream"
    assert columns["Backlog"]["jsonPath"] == ".status.backlog"
    assert columns["DLQ"]["jsonPath"] == ".status.deadLetter.length"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    # Every column's path exists in the schema (a typo would show an empty column forever).
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema
        for part in path:
            node = node["properties"][part]
            node = node.get("items", node)


# ------------------------------------------------------------------------------------------ structure

_FORBIDDEN = ("$ref", "$defs", "definitions", "title", "nullable", "oneOf", "allOf", "not")


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, node, is_property) for every schema node."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child, True
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield f"{path}[*]", node["items"], False
        yield from _nodes(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield f"{path}.*", node["additionalProperties"], False
        yield from _nodes(node["additionalProperties"], f"{path}.*")


def _committed_schema() -> dict[str, Any]:
    [version] = _crd()["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    # An independent walk over the committed file (crd.py's own check is structural_problems()).
    problems = []
    for path, node, _ in [("<root>", _committed_schema(), False), *_nodes(_committed_schema())]:
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if "type" not in node and not int_or_string:
            problems.append(f"{path}: no type")
        if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") != "object":
            problems.append(f"{path}: preserve-unknown-fields on a non-object")
        problems += [f"{path}: {key}" for key in _FORBIDDEN if key in node]
        if "anyOf" in node and (
            not int_or_string or node["anyOf"] != [{"type": "integer"}, {"type": "string"}]
        ):
            problems.append(f"{path}: anyOf outside int-or-string")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties beside additionalProperties")
        if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
            problems.append(f"{path}: additionalProperties: {node['additionalProperties']}")
    assert not problems
    assert list(structural_problems(_committed_schema())) == []


def test_every_field_is_described() -> None:
    # Descriptions are what `kubectl explain` prints.
    undescribed = [
        path
        for path, node, is_property in _nodes(_committed_schema())
        if is_property and not node.get("description") and not path.startswith((".metadata", ".apiVersion"))
    ]
    assert not undescribed


def test_every_model_field_has_a_description() -> None:
    missing = []
    for value in vars(api).values():
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__.startswith(API_PKG):
            missing += [
                f"{value.__name__}.{name}"
                for name, info in value.model_fields.items()
                if not info.description
            ]
    assert not missing


def test_lists_maps_and_strings_under_cel_rules_are_bounded() -> None:
    # The API server estimates each rule's cost from these bounds and refuses unbounded ones.
    unbounded = []
    for path, node, _ in _nodes(_committed_schema()):
        if not path.startswith(".spec"):
            continue
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(path)
    assert not unbounded


def test_every_python_rule_is_in_the_crd_with_the_same_message() -> None:
    in_crd = [
        (rule["rule"], rule.get("message"), rule.get("messageExpression"), rule.get("fieldPath"))
        for _, node, _ in _nodes(_committed_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    twins = [
        (rule.rule, rule.message or None, rule.message_expression or None, rule.field_path or None)
        for model in vars(api).values()
        if isinstance(model, type) and issubclass(model, RuleModel) and model.__module__.startswith(API_PKG)
        for rule, _ in model.cel_rules()
    ]
    assert twins
    for twin in twins:
        assert twin in in_crd, f"{twin[0]} is not in the CRD"


def test_defaults_of_sub_objects_are_the_full_model_defaults() -> None:
    # The API server checks a default against CEL rules as written, so `default: {}` would break
    # rules that read sub-fields; the generator writes the model's defaults out instead.
    spec = openapi_schema()["properties"]["spec"]
    assert spec["properties"]["retry"]["default"] == api.RetrySpec().model_dump(mode="json", by_alias=True)
    status = openapi_schema()["properties"]["status"]
    assert not [path for path, node, _ in _nodes(status) if "default" in node]


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, ".a: has $ref"),
        ({"type": "object", "properties": {"a": {"description": "x"}}}, ".a: no type"),
        ({"type": "object", "properties": {"a": {"type": "string", "title": "A"}}}, ".a: has title"),
        ({"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}, ".a: has nullable"),
        (
            {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
            ".a: anyOf outside int-or-string",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "<root>: properties and additionalProperties together",
        ),
        (
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "<root>: list-map key name is neither required nor defaulted",
        ),
    ],
)
def test_structural_check_catches_violations(schema: dict[str, Any], problem: str) -> None:
    assert problem in list(structural_problems(schema))


def test_generator_refuses_what_has_no_structural_form() -> None:
    with pytest.raises(SchemaError, match=re.escape("only `X | None` unions")):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, "spec.x")
    with pytest.raises(SchemaError, match="not allowed in a CRD schema"):
        structural({"type": "number", "exclusiveMinimum": 0}, {}, "spec.x")


def test_docs_reference_is_current() -> None:
    document = (ROOT / "docs" / "api.md").read_text()
    assert update_reference(document) == document, (
        "docs/api.md's generated reference is stale: run `make crds`"
    )
    assert "`spec.groups[].scaling.maxReplicas`" in reference_markdown()


def test_group_dedupe_ttl_is_in_the_schema_with_its_range_rule() -> None:
    group = openapi_schema()["properties"]["spec"]["properties"]["groups"]["items"]
    dedupe = group["properties"]["dedupe"]
    assert "dedupe" not in group.get("required", [])
    assert "default" not in dedupe  # off unless written
    assert dedupe["required"] == ["ttl"]
    ttl = dedupe["properties"]["ttl"]
    assert ttl["type"] == "string"
    assert [rule["message"] for rule in ttl["x-kubernetes-validations"]] == ["must be between 1s and 720h"]
    assert "duration('720h')" in ttl["x-kubernetes-validations"][0]["rule"]
