"""``streampipe validate``: StreamPipeline manifests checked offline by the same models the CRD comes from.

Errors are reported with the API server's field paths (``spec.groups[1].scaling.maxReplicas``) and, as
far as pydantic's error kinds allow, in the API server's words (``Required value``, ``Unsupported value:
"x": supported values: ...``, ``should be greater than or equal to 1``), so a message found here is the
message ``kubectl apply`` would print. Cross-field rules use the CEL rules' own messages
(:mod:`streampipe_operator.api.cel`).

It also owns what ``validate`` reads and how it reports: files, folders (``*.yaml``/``*.yml``, recursive,
sorted) and stdin, YAML documents of other kinds skipped and counted, syntax errors with their line,
and the report models ``--output json`` prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, computed_field
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

    file: str = Field(default="", description="The file the document is in (``-`` for stdin)")
    index: int = Field(description="Position of the document in its file, from 0")
    api_version: str | None = Field(default=None, description="The document's apiVersion")
    kind: str | None = Field(default=None, description="The document's kind")
    name: str | None = Field(default=None, description="metadata.name")
    namespace: str | None = Field(default=None, description="metadata.namespace")
    skipped_reason: str | None = Field(
        default=None, description="Why the document was not checked (another kind); null when checked"
    )
    errors: list[FieldError] = Field(default_factory=list, description="Empty when valid")

    @computed_field(description="Not a StreamPipeline, so not checked")  # type: ignore[prop-decorator]
    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    @computed_field(description="No errors (a skipped document is valid)")  # type: ignore[prop-decorator]
    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def label(self) -> str:
        """``StreamPipeline/orders``, as kubectl names objects."""
        return f"{self.kind or '(no kind)'}/{self.name or '(no name)'}"


class FileReport(BaseModel):
    """The verdict on one file."""

    path: str = Field(description="The file as given or found in a folder; ``-`` for stdin")
    unreadable: str | None = Field(default=None, description="Why the file could not be read or parsed")
    line: int | None = Field(default=None, description="Line (from 1) of a YAML syntax error")
    documents: list[DocumentReport] = Field(default_factory=list, description="One per YAML document")

    @property
    def valid(self) -> bool:
        return self.unreadable is None and all(document.valid for document in self.documents)


class ValidationReport(BaseModel):
    """The verdict on every file; what ``--output json`` prints."""

    valid: bool = Field(description="Every file readable and every StreamPipeline valid")
    exit_code: int = Field(description="0 valid, 1 invalid manifests, 2 unreadable files")
    checked: int = Field(default=0, description="StreamPipeline documents checked")
    invalid: int = Field(default=0, description="Checked documents with errors")
    skipped: int = Field(default=0, description="Documents of other kinds, not checked")
    note: str | None = Field(default=None, description="Set when nothing was checked at all")
    files: list[FileReport] = Field(description="One per file, in the order given (folders: sorted)")


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


def _skip_reason(document: Any) -> str | None:
    """Why a document is not checked, or None for a StreamPipeline (or a near miss of one).

    A document of our group or of our kind is checked whatever its version, so a typo in
    ``apiVersion`` or ``kind`` is an error rather than a silently skipped document.
    """
    if not isinstance(document, Mapping):
        return "not a Kubernetes object (a mapping with apiVersion and kind)"
    api_version = str(document.get("apiVersion") or "")
    kind = document.get("kind")
    if api_version.split("/", maxsplit=1)[0] == api.GROUP or kind == api.KIND:
        return None
    if not api_version and not kind:
        return "not a Kubernetes object (no apiVersion, no kind)"
    return f"{api_version or 'no apiVersion'} {kind or '(no kind)'} is not a {api.KIND}"


def check_document(index: int, document: Any, file: str = "") -> DocumentReport:
    """The verdict on one parsed YAML document: checked when a StreamPipeline, else skipped."""
    reason = _skip_reason(document)
    if not isinstance(document, Mapping):
        return DocumentReport(file=file, index=index, skipped_reason=reason)
    metadata: Mapping[str, Any] = (
        document["metadata"] if isinstance(document.get("metadata"), Mapping) else {}
    )
    api_version = document.get("apiVersion")
    kind = document.get("kind")
    report = DocumentReport(
        file=file,
        index=index,
        api_version=api_version if isinstance(api_version, str) else None,
        kind=kind if isinstance(kind, str) else None,
        name=metadata.get("name") if isinstance(metadata.get("name"), str) else None,
        namespace=metadata.get("namespace") if isinstance(metadata.get("namespace"), str) else None,
        skipped_reason=reason,
    )
    if reason is None:
        report.errors = validate_manifest(document)
    return report


STDIN = "-"
MANIFEST_SUFFIXES = (".yaml", ".yml")


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """The files to check: files and ``-`` as given, folders as their ``*.yaml``/``*.yml`` files.

    A folder is walked recursively in sorted order; hidden files and folders (``.git``, ``.github``)
    are left out.
    """
    for path in paths:
        if str(path) != STDIN and path.is_dir():
            found = [
                candidate
                for candidate in path.rglob("*")
                if candidate.suffix in MANIFEST_SUFFIXES
                and candidate.is_file()
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            ]
            yield from sorted(found)
        else:
            yield path


def _parse(report: FileReport, text: str) -> list[Any]:
    """The documents of ``text``; a syntax error sets ``report.unreadable`` with its line."""
    documents: list[Any] = []
    try:
        documents.extend(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        report.line = mark.line + 1 if mark is not None else None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        report.unreadable = f"not valid YAML: {problem or 'syntax error'}{where}"
    except yaml.YAMLError as exc:
        report.unreadable = f"not valid YAML: {exc}".replace("\n", " ")
    return [document for document in documents if document is not None]


def check_file(path: Path, read_stdin: Callable[[], str] | None = None) -> FileReport:
    """The verdict on one file of (possibly several) YAML documents; ``-`` is ``read_stdin()``."""
    report = FileReport(path=str(path))
    try:
        if str(path) == STDIN:
            if read_stdin is None:
                raise OSError("standard input not available")
            text = read_stdin()
        else:
            text = path.read_text(encoding="utf-8")
    except OSError as exc:
        report.unreadable = exc.strerror or str(exc)
        return report
    except UnicodeDecodeError as exc:
        report.unreadable = f"not UTF-8 text: {exc.reason}"
        return report
    objects = [obj for document in _parse(report, text) for obj in _objects(document)]
    report.documents = [check_document(index, obj, report.path) for index, obj in enumerate(objects)]
    return report


def validate_files(paths: Iterable[Path], read_stdin: Callable[[], str] | None = None) -> ValidationReport:
    """The verdict on every file (folders expanded), with the exit code ``streampipe validate`` returns.

    Documents of other kinds are skipped and counted. Finding no StreamPipeline at all is not a
    failure (a GitOps folder may hold none yet) but is said in ``note``.
    """
    files = [check_file(path, read_stdin) for path in expand_paths(paths)]
    documents = [document for file in files for document in file.documents]
    checked = [document for document in documents if not document.skipped]
    if any(report.unreadable is not None for report in files):
        code = EXIT_UNREADABLE
    elif not all(report.valid for report in files):
        code = EXIT_INVALID
    else:
        code = EXIT_VALID
    skipped = len(documents) - len(checked)
    note = None
    if not checked:
        note = (
            f"no {api.API_VERSION} {api.KIND} found in {len(files)} file{'s' if len(files) != 1 else ''}"
            f" ({skipped} other document{'s' if skipped != 1 else ''} skipped); nothing to validate"
        )
    return ValidationReport(
        valid=code == EXIT_VALID,
        exit_code=code,
        checked=len(checked),
        invalid=sum(1 for document in checked if not document.valid),
        skipped=skipped,
        note=note,
        files=files,
    )


def _where(file: FileReport, document: DocumentReport) -> str:
    return f"{file.path}[{document.index}]" if len(file.documents) > 1 else file.path


def render_text(report: ValidationReport) -> str:
    """The human-readable report for stdout: one line per StreamPipeline, one per error."""
    lines: list[str] = []
    for file in report.files:
        if file.unreadable is not None:
            where = f"{file.path}:{file.line}" if file.line is not None else file.path
            lines.append(f"{where}: cannot read: {file.unreadable}")
        for document in file.documents:
            if document.skipped:
                continue
            where = _where(file, document)
            if document.valid:
                lines.append(f"{where}: {document.label}: valid")
            else:
                count = len(document.errors)
                lines.append(f"{where}: {document.label}: {count} error{'s' if count > 1 else ''}")
                lines.extend(f"  {error}" for error in document.errors)
    return "\n".join(lines)


def render_notes(report: ValidationReport) -> str:
    """What goes to stderr: one line per skipped document, a summary, and the note if any."""
    lines: list[str] = []
    for file in report.files:
        lines.extend(
            f"{_where(file, document)}: {document.label}: skipped: {document.skipped_reason}"
            for document in file.documents
            if document.skipped
        )
    unreadable = sum(1 for file in report.files if file.unreadable is not None)
    summary = (
        f"{len(report.files)} file{'s' if len(report.files) != 1 else ''}: "
        f"{report.checked} {api.KIND}{'s' if report.checked != 1 else ''} checked, "
        f"{report.invalid} invalid, {report.skipped} other document{'s' if report.skipped != 1 else ''} "
        f"skipped, {unreadable} unreadable"
    )
    lines.append(summary)
    if report.note is not None:
        lines.append(f"note: {report.note}")
    return "\n".join(lines)
