"""`streampipe validate`: paths in messages, multi-document files, exit codes 0/1/2, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from streampipe_operator.api.validation import ValidationReport
from streampipe_operator.cli.app import app
from tests.support.invalid_specs import minimal_manifest

runner = CliRunner()


def _write(path: Path, *documents: object) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def _bad_scaling() -> dict[str, object]:
    manifest = minimal_manifest()
    groups = manifest["spec"]["groups"]
    groups.append(
        {"name": "audit", "handler": "a:b", "image": "img:1", "scaling": {"minReplicas": 2, "maxReplicas": 1}}
    )
    return manifest


def test_valid_file_exits_zero(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path / "ok.yaml", minimal_manifest()))])
    assert result.exit_code == 0, result.output
    assert "StreamPipeline/orders: valid" in result.output


def test_errors_are_printed_with_their_path_and_exit_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", _bad_scaling())
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "spec.groups[1].scaling.maxReplicas: must be >= minReplicas (2)" in result.output


def test_multi_document_files_are_checked_document_by_document(tmp_path: Path) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {}}
    path = _write(tmp_path / "all.yaml", minimal_manifest(), other, _bad_scaling())
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{path}[0]: StreamPipeline/orders: valid" in lines
    assert f"{path}[1]: ConfigMap/settings: skipped (not a streampipe.dev object)" in lines
    assert f"{path}[2]: StreamPipeline/orders: 1 error" in lines


def test_unreadable_files_exit_two_and_others_are_still_checked(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    good = _write(tmp_path / "ok.yaml", minimal_manifest())
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), str(broken), str(good)])
    assert result.exit_code == 2
    assert "missing.yaml: cannot read: No such file or directory" in result.output
    assert "broken.yaml: cannot read: not valid YAML" in result.output
    assert "ok.yaml: StreamPipeline/orders: valid" in result.output


def test_a_file_without_any_pipeline_is_an_error(tmp_path: Path) -> None:
    # A typo in apiVersion would otherwise make a broken manifest "pass" as something else.
    path = _write(
        tmp_path / "none.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "no streampipe.dev/v1alpha1 StreamPipeline in this file" in result.output


def test_wrong_version_or_kind_in_our_group_is_refused(tmp_path: Path) -> None:
    manifest = minimal_manifest()
    manifest["kind"] = "StreamPipline"
    result = runner.invoke(app, ["validate", str(_write(tmp_path / "typo.yaml", manifest))])
    assert result.exit_code == 1
    assert 'kind: Unsupported value: "StreamPipline": supported values: "StreamPipeline"' in result.output


def test_kind_list_is_expanded(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [minimal_manifest(), _bad_scaling()]}
    result = runner.invoke(app, ["validate", str(_write(tmp_path / "list.yaml", listing))])
    assert result.exit_code == 1
    assert "[0]: StreamPipeline/orders: valid" in result.output
    assert "[1]: StreamPipeline/orders: 1 error" in result.output


def test_json_output(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", _bad_scaling())
    result = runner.invoke(app, ["validate", "--output", "json", str(path)])
    assert result.exit_code == 1
    report = ValidationReport.model_validate(json.loads(result.stdout))
    assert not report.valid
    assert report.exit_code == 1
    [document] = report.files[0].documents
    assert [(e.path, e.message) for e in document.errors] == [
        ("spec.groups[1].scaling.maxReplicas", "must be >= minReplicas (2)")
    ]
