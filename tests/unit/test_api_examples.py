"""examples/: every StreamPipeline there is valid, and full.yaml really sets every field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streampipe_operator import api
from streampipe_operator.api.crd import openapi_schema
from streampipe_operator.api.validation import validate_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED_EXAMPLES = ["minimal.yaml", "full.yaml", "sentinel.yaml", "cluster.yaml", "tls-acl.yaml"]


def test_the_promised_examples_exist() -> None:
    missing = [name for name in REQUIRED_EXAMPLES if not (EXAMPLES / name).exists()]
    assert not missing


def _pipeline_files() -> list[Path]:
    return [
        path
        for path in sorted(EXAMPLES.glob("*.yaml"))
        if any(doc and doc.get("kind") == api.KIND for doc in yaml.safe_load_all(path.read_text()))
    ]


@pytest.mark.parametrize("example", _pipeline_files(), ids=lambda path: path.name)
def test_example_validates(example: Path) -> None:
    report = validate_files([example])
    errors = [str(e) for f in report.files for d in f.documents for e in d.errors]
    assert report.exit_code == 0, errors


def test_examples_cover_every_mode() -> None:
    modes = {
        doc["spec"]["redis"].get("mode", "standalone")
        for path in _pipeline_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == api.KIND
    }
    assert modes == {"standalone", "sentinel", "cluster"}


def _schema_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every field path the spec schema declares; maps and kept-as-written objects count as one field."""
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        target = child.get("items", child)
        if "properties" in target:
            yield from _schema_paths(target, path)


def _document_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _document_paths(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _document_paths(item, prefix)


def test_full_example_sets_every_spec_field() -> None:
    declared = set(_schema_paths(openapi_schema()["properties"]["spec"]))
    document = next(doc for doc in yaml.safe_load_all((EXAMPLES / "full.yaml").read_text()) if doc)
    written = set(_document_paths(document["spec"]))
    # partitions go with no deadLetter.stream, so examples/partitioned.yaml shows them instead.
    partitioned = next(doc for doc in yaml.safe_load_all((EXAMPLES / "partitioned.yaml").read_text()) if doc)
    written |= {path for path in _document_paths(partitioned["spec"]) if path.startswith("partitions")}
    missing = sorted(declared - written)
    assert not missing, (
        f"examples/full.yaml (with examples/partitioned.yaml's partitions) does not set: {missing}"
    )
    assert len(declared) > 60  # the walk found the whole schema, not just the top level
