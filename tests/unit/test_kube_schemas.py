"""tests/support/kube_schemas.py: kubeconform's file names and the strict JSON schemas made from OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kube_schemas import references, schema_file_name, strict


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        ("v1", "Service", "service-v1.json"),
        ("apps/v1", "Deployment", "deployment-apps-v1.json"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterrole-rbac-v1.json"),
        ("streampipe.dev/v1alpha1", "StreamPipeline", "streampipeline-streampipe-v1alpha1.json"),
    ],
)
def test_schema_file_name_is_kubeconforms(api_version: str, kind: str, expected: str) -> None:
    assert schema_file_name(api_version, kind) == expected


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        # Listed properties and nothing said about others: others are refused.
        (
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
        ),
        # A map keeps its value schema; a free-form object stays free.
        (
            {"type": "object", "additionalProperties": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
        ({"type": "object"}, {"type": "object"}),
        (
            {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
            {"type": "object", "properties": {"a": {}}},
        ),
        # OpenAPI v2's int-or-string, a CRD's x-kubernetes-int-or-string, a CRD's nullable.
        ({"type": "string", "format": "int-or-string"}, {"type": ["string", "integer"]}),
        ({"x-kubernetes-int-or-string": True}, {"type": ["string", "integer"]}),
        ({"type": "integer", "nullable": True}, {"type": ["integer", "null"]}),
        # Property names are data: JSONSchemaProps has properties called `$ref` and `x-kubernetes-*`.
        (
            {"properties": {"x-kubernetes-list-type": {"type": "string"}}},
            {"properties": {"x-kubernetes-list-type": {"type": "string"}}, "additionalProperties": False},
        ),
    ],
)
def test_strict(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert strict(schema) == expected


def test_references_are_definition_names_not_property_names() -> None:
    schema = {
        "properties": {
            "spec": {"$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"},
            "$ref": {"type": "string"},
            "items": {"type": "array", "items": {"$ref": "#/definitions/io.k8s.api.core.v1.Container"}},
        }
    }
    assert references(schema) == {"io.k8s.api.apps.v1.DeploymentSpec", "io.k8s.api.core.v1.Container"}
