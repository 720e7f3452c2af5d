"""JSON schemas for kubeconform, made from what a real API server serves (its ``/openapi/v2``) and from
CRD manifests: one file per kind and version, named as kubeconform's ``-schema-location`` template
``{{ .ResourceKind }}{{ .KindSuffix }}.json`` expects (``deployment-apps-v1.json``, ``service-v1.json``).

The schemas are strict: an object schema that lists its properties and says nothing about others gets
``additionalProperties: false``, so an unknown or misspelt field fails validation instead of being
pruned silently by the API server. Each file carries the definitions it refers to (kubeconform loads
one file per kind); references keep the ``#/definitions/...`` form of OpenAPI v2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_LOCATION_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
DEFINITION_REF = "#/definitions/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Serialised as a string by the server, but a YAML number (`cpu: 1`, `port: 8080`) is accepted too.
STRING_OR_NUMBER = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": ["string", "number"],
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": ["string", "integer"],
}


def schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's file name for a kind: ``apps/v1`` -> ``-apps-v1``, ``rbac.authorization.k8s.io/v1``
    -> ``-rbac-v1``, ``v1`` -> ``-v1``."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix.lower()}.json"


def strict(schema: Any) -> Any:
    """A copy of a schema (OpenAPI v2 or a CRD's structural v3) as a strict JSON schema."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    if isinstance(schema.get("properties"), dict):  # property names are data, not keywords
        out["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
        out.pop("format", None)
        out["type"] = ["string", "integer"]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserves_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserves_unknown:
        out["additionalProperties"] = False
    return out


def references(schema: Any) -> set[str]:
    """The definition names a schema refers to directly."""
    if isinstance(schema, list):
        return set().union(*(references(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    ref = schema.get("$ref")
    found = {ref.removeprefix(DEFINITION_REF)} if isinstance(ref, str) else set()
    return found.union(*(references(value) for value in schema.values()))


def reachable(names: Iterable[str], definitions: dict[str, Any]) -> dict[str, Any]:
    """``names`` and every definition they refer to, transitively."""
    found: dict[str, Any] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in found:
            found[name] = definitions[name]
            pending.extend(references(definitions[name]))
    return found


def write_openapi_schemas(openapi_v2: dict[str, Any], directory: Path) -> list[str]:
    """One file per kind and version the server serves; returns the file names."""
    definitions = {
        name: {"type": STRING_OR_NUMBER[name], "description": body.get("description", "")}
        if name in STRING_OR_NUMBER
        else strict(body)
        for name, body in openapi_v2["definitions"].items()
    }
    written: list[str] = []
    for name, body in openapi_v2["definitions"].items():
        for gvk in body.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            file_name = schema_file_name(api_version, gvk["kind"])
            document = {
                **definitions[name],
                "definitions": reachable(references(definitions[name]), definitions),
            }
            (directory / file_name).write_text(json.dumps(document))
            written.append(file_name)
    return written


def write_crd_schemas(
    crds: Iterable[dict[str, Any]], openapi_v2: dict[str, Any], directory: Path
) -> list[str]:
    """One file per served version of each CRD (its ``openAPIV3Schema``), with ``metadata`` checked
    against the server's ObjectMeta, as the API server does for custom resources."""
    object_meta = reachable(
        [OBJECT_META], {name: strict(body) for name, body in openapi_v2["definitions"].items()}
    )
    written: list[str] = []
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})["metadata"] = {"$ref": DEFINITION_REF + OBJECT_META}
            for field in ("apiVersion", "kind"):
                schema["properties"].setdefault(field, {"type": "string"})
            schema["definitions"] = object_meta
            file_name = schema_file_name(f"{group}/{version['name']}", kind)
            (directory / file_name).write_text(json.dumps(schema))
            written.append(file_name)
    return written
