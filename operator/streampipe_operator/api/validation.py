"""``streampipe validate``: StreamPipeline manifests checked offline by the same models the CRD comes from.

Errors are reported with the API server's field paths (``spec.groups[1].scaling.maxReplicas``) and, as
far as pydantic's error kinds allow, in the API server's words (``Required value``, ``Unsupported value:
"x": supported values: ...``, ``should be greater than or equal to 1``), so a message found here is the
message ``kubectl apply`` would print. Cross-field rules use the CEL rules' own messages
(:mod:`streampipe_operator.api.cel`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import ErrorDetails

from streampipe_operator import api

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2

_JSON_TYPES = {"int": "integer", "str": "string", "float": "number", "bool": "boolean"}
_JSON_TYPES |= {"dict": "object", "list": "array", "NoneType": "null"}
_EXPECTED_TYPES = {
    "int_type": "integer",
    "int_parsing": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "float_type": "number",
    "float_parsing": "number",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
}


class FieldError(BaseModel):
    """One problem at one field."""

    path: str = Field(description="Field path as the API server writes it; empty for the whole document")
    message: str = Field(description="What is wrong, in the API server's words where it has them")

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DocumentReport(BaseModel):
    """The verdict on one YAML document of a file."""

    index: int = Field(description="Position of the document in its file, from 0")
    api_version: str | None = Field(default=None, description="The document's apiVersion")
    kind: str | None = Field(default=None, description="The document's kind")
    name: str | None = Field(default=None, description="metadata.name")
    namespace: str | None = Field(default=None, description="metadata.namespace")
    skipped: bool = Field(default=False, description="Not a streampipe.dev object, so not checked")
    errors: list[FieldError] = Field(default_factory=list, description="Empty when valid")

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def label(self) -> str:
        """``StreamPipeline/orders``, as kubectl names objects."""
        return f"{self.kind or '(no kind)'}/{self.name or '(no name)'}"


class FileReport(BaseModel):
    """The verdict on one file."""

    path: str = Field(description="The file as given on the command line")
    unreadable: str | None = Field(default=None, description="Why the file could not be read or parsed")
    documents: list[DocumentReport] = Field(default_factory=list, description="One per YAML document")

    @property
    def valid(self) -> bool:
        return self.unreadable is None and all(document.valid for document in self.documents)


class ValidationReport(BaseModel):
    """The verdict on every file; what ``--output json`` prints."""

    valid: bool = Field(description="Every file readable and every StreamPipeline valid")
    exit_code: int = Field(description="0 valid, 1 invalid manifests, 2 unreadable files")
    files: list[FileReport] = Field(description="One per file, in the order given")


def format_path(loc: Sequence[str | int]) -> str:
    """``("spec", "groups", 1, "name")`` -> ``spec.groups[1].name``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value).__name__, type(value).__name__)


def _shown(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _literal(error: ErrorDetails, ctx: Mapping[str, Any], given: object) -> str:
    allowed = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
    return f"Unsupported value: {_shown(given)}: supported values: " + ", ".join(f'"{v}"' for v in allowed)


# pydantic error type -> the API server's wording (kube-openapi's validation messages).
_WORDING: dict[str, Callable[[ErrorDetails, Mapping[str, Any], object], str]] = {
    "missing": lambda e, ctx, given: "Required value",
    "extra_forbidden": lambda e, ctx, given: f'unknown field "{format_path(e["loc"])}"',
    "literal_error": _literal,
    "greater_than_equal": lambda e, ctx, given: (
        f"Invalid value: {_shown(given)}: should be greater than or equal to {ctx['ge']}"
    ),
    "less_than_equal": lambda e, ctx, given: (
        f"Invalid value: {_shown(given)}: should be less than or equal to {ctx['le']}"
    ),
    "string_too_long": lambda e, ctx, given: f"Too long: may not be more than {ctx['max_length']} bytes",
    "string_too_short": lambda e, ctx, given: (
        f"Invalid value: {_shown(given)}: should be at least {ctx['min_length']} chars long"
    ),
    "too_long": lambda e, ctx, given: (
        f"Too many: {ctx.get('actual_length')}: must have at most {ctx['max_length']} items"
    ),
    "too_short": lambda e, ctx, given: (
        f"Invalid value: {ctx.get('actual_length')}: should have at least {ctx['min_length']} items"
    ),
    "string_pattern_mismatch": lambda e, ctx, given: (
        f"Invalid value: {_shown(given)}: should match '{ctx['pattern']}'"
    ),
    "duration_syntax": lambda e, ctx, given: f"Invalid value: {_shown(given)}: {e['msg']}",
    "quantity": lambda e, ctx, given: f"Invalid value: {_shown(given)}: {e['msg']}",
}


def describe(error: ErrorDetails) -> FieldError:
    """One pydantic error as the API server would have worded it."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    given = error.get("input")
    if kind in _WORDING:
        message = _WORDING[kind](error, ctx, given)
    elif kind in _EXPECTED_TYPES:
        message = f'must be of type {_EXPECTED_TYPES[kind]}: "{_json_type(given)}"'
    else:
        message = error["msg"]
    return FieldError(path=format_path(error["loc"]), message=message)


def errors_of(exc: ValidationError) -> list[FieldError]:
    """Every error of a pydantic ValidationError, described."""
    return [describe(error) for error in exc.errors(include_url=False)]


def validate_manifest(document: Mapping[str, Any]) -> list[FieldError]:
    """Problems of one StreamPipeline document (empty when it is valid)."""
    try:
        api.StreamPipeline.model_validate(document)
    except ValidationError as exc:
        return errors_of(exc)
    return []


def _objects(document: Any) -> Iterator[Any]:
    # `kind: List` (what `kubectl get -o yaml` writes for several objects) holds objects in items.
    if (
        isinstance(document, Mapping)
        and document.get("kind") == "List"
        and isinstance(document.get("items"), list)
    ):
        yield from document["items"]
    else:
        yield document


def check_document(index: int, document: Any) -> DocumentReport:
    """The verdict on one parsed YAML document."""
    if not isinstance(document, Mapping):
        return DocumentReport(
            index=index,
            errors=[
                FieldError(path="", message="not a Kubernetes object (a mapping with apiVersion and kind)")
            ],
        )
    metadata: Mapping[str, Any] = (
        document["metadata"] if isinstance(document.get("metadata"), Mapping) else {}
    )
    api_version = str(document.get("apiVersion", ""))
    kind = document.get("kind")
    report = DocumentReport(
        index=index,
        api_version=api_version or None,
        kind=kind if isinstance(kind, str) else None,
        name=metadata.get("name") if isinstance(metadata.get("name"), str) else None,
        namespace=metadata.get("namespace") if isinstance(metadata.get("namespace"), str) else None,
    )
    if api_version.split("/", maxsplit=1)[0] != api.GROUP:
        report.skipped = True
        return report
    report.errors = validate_manifest(document)
    return report


def check_file(path: Path) -> FileReport:
    """The verdict on one file of (possibly several) YAML documents."""
    report = FileReport(path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except OSError as exc:
        report.unreadable = exc.strerror or str(exc)
        return report
    except UnicodeDecodeError as exc:
        report.unreadable = f"not UTF-8 text: {exc.reason}"
        return report
    except yaml.YAMLError as exc:
        report.unreadable = f"not valid YAML: {exc}".replace("\n", " ")
        return report
    objects = [obj for document in documents for obj in _objects(document)]
    report.documents = [check_document(index, obj) for index, obj in enumerate(objects)]
    if not any(not document.skipped for document in report.documents):
        report.documents.append(
            DocumentReport(
                index=len(report.documents),
                errors=[FieldError(path="", message=f"no {api.API_VERSION} {api.KIND} in this file")],
            )
        )
    return report


def validate_files(paths: Iterable[Path]) -> ValidationReport:
    """The verdict on every file, with the exit code ``streampipe validate`` returns."""
    files = [check_file(path) for path in paths]
    if any(report.unreadable is not None for report in files):
        code = EXIT_UNREADABLE
    elif not all(report.valid for report in files):
        code = EXIT_INVALID
    else:
        code = EXIT_VALID
    return ValidationReport(valid=code == EXIT_VALID, exit_code=code, files=files)


def render_text(report: ValidationReport) -> str:
    """The human-readable report: one line per valid document, one per error."""
    lines: list[str] = []
    for file in report.files:
        if file.unreadable is not None:
            lines.append(f"{file.path}: cannot read: {file.unreadable}")
            continue
        several = len(file.documents) > 1
        for document in file.documents:
            where = f"{file.path}[{document.index}]" if several else file.path
            if document.skipped:
                lines.append(f"{where}: {document.label}: skipped (not a {api.GROUP} object)")
            elif document.valid:
                lines.append(f"{where}: {document.label}: valid")
            else:
                count = len(document.errors)
                lines.append(f"{where}: {document.label}: {count} error{'s' if count > 1 else ''}")
                lines.extend(f"  {error}" for error in document.errors)
    return "\n".join(lines)
