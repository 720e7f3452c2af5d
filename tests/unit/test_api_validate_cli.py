"""`streampipe validate`: paths in messages, multi-document files, folders, stdin, other kinds skipped,
exit codes 0/1/2, JSON output, and the pre-commit hook's entry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml
from typer.testing import CliRunner

from streampipe_operator.api.validation import ValidationReport
from streampipe_operator.cli.app import app
from tests.support.invalid_specs import minimal_manifest

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {}}


def _json_report(*args: str, stdin: str | None = None) -> tuple[int, ValidationReport]:
    result = runner.invoke(app, ["validate", "--output", "json", *args], input=stdin)
    return result.exit_code, ValidationReport.model_validate(json.loads(result.stdout))


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
    path = _write(tmp_path / "all.yaml", minimal_manifest(), CONFIG_MAP, _bad_scaling())
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}[0]: StreamPipeline/orders: valid",
        f"{path}[2]: StreamPipeline/orders: 1 error",
        "  spec.groups[1].scaling.maxReplicas: must be >= minReplicas (2)",
    ]
    assert result.stderr.splitlines()[0] == (
        f"{path}[1]: ConfigMap/settings: skipped: v1 ConfigMap is not a StreamPipeline"
    )


def test_unreadable_files_exit_two_and_others_are_still_checked(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    good = _write(tmp_path / "ok.yaml", minimal_manifest())
    code, report = _json_report(str(tmp_path / "missing.yaml"), str(broken), str(good))
    assert code == 2
    assert [(file.path, file.unreadable is not None, file.valid) for file in report.files] == [
        (str(tmp_path / "missing.yaml"), True, False),
        (str(broken), True, False),
        (str(good), False, True),
    ]
    assert report.files[0].unreadable == "No such file or directory"


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n")
    code, report = _json_report(str(broken))
    assert code == 2
    [file] = report.files
    assert file.path == str(broken)
    assert file.line == 5  # the parser notices at the end of the text, after line 4
    assert file.unreadable is not None
    assert file.unreadable.startswith("not valid YAML: ")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2
    assert result.stdout.splitlines()[0].startswith(f"{broken}:5: cannot read: not valid YAML")


def test_a_folder_of_other_kinds_only_exits_zero_with_a_note(tmp_path: Path) -> None:
    _write(tmp_path / "none.yaml", CONFIG_MAP)
    code, report = _json_report(str(tmp_path))
    assert code == 0
    assert (report.valid, report.checked, report.skipped) == (True, 0, 1)
    assert report.note == (
        "no streampipe.dev/v1alpha1 StreamPipeline found in 1 file (1 other document skipped); "
        "nothing to validate"
    )
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"note: {report.note}"


def test_an_empty_folder_exits_zero_with_a_note(tmp_path: Path) -> None:
    code, report = _json_report(str(tmp_path))
    assert (code, report.files, report.checked) == (0, [], 0)
    assert report.note is not None


def test_folders_are_walked_recursively_in_sorted_order_with_mixed_kinds(tmp_path: Path) -> None:
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    (tmp_path / "b").mkdir()
    _write(tmp_path / "b" / "pipeline.yml", minimal_manifest())
    _write(tmp_path / "a.yaml", CONFIG_MAP, deployment)
    _write(tmp_path / "kustomization.yaml", kustomization)
    (tmp_path / "README.md").write_text("not yaml: [")
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "ci.yaml").write_text("on: [unclosed")
    code, report = _json_report(str(tmp_path))
    assert code == 0
    assert [file.path for file in report.files] == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "b" / "pipeline.yml"),
        str(tmp_path / "kustomization.yaml"),
    ]
    documents = [
        (d.file, d.index, d.kind, d.name, d.skipped, d.valid) for f in report.files for d in f.documents
    ]
    assert documents == [
        (str(tmp_path / "a.yaml"), 0, "ConfigMap", "settings", True, True),
        (str(tmp_path / "a.yaml"), 1, "Deployment", "web", True, True),
        (str(tmp_path / "b" / "pipeline.yml"), 0, "StreamPipeline", "orders", False, True),
        (str(tmp_path / "kustomization.yaml"), 0, "Kustomization", None, True, True),
    ]
    assert (report.checked, report.invalid, report.skipped, report.note) == (1, 0, 3, None)


def test_an_invalid_pipeline_in_a_folder_exits_one_with_its_field_path(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    _write(tmp_path / "apps" / "ok.yaml", minimal_manifest(), CONFIG_MAP)
    _write(tmp_path / "apps" / "orders.yaml", _bad_scaling())
    code, report = _json_report(str(tmp_path))
    assert code == 1
    assert (report.valid, report.checked, report.invalid, report.skipped) == (False, 2, 1, 1)
    invalid = [d for f in report.files for d in f.documents if not d.valid]
    assert [(d.file, d.index, [e.path for e in d.errors]) for d in invalid] == [
        (str(tmp_path / "apps" / "orders.yaml"), 0, ["spec.groups[1].scaling.maxReplicas"])
    ]


def test_stdin_is_read_for_a_dash() -> None:
    stdin = yaml.safe_dump_all([CONFIG_MAP, _bad_scaling()])
    code, report = _json_report("-", stdin=stdin)
    assert code == 1
    [file] = report.files
    assert file.path == "-"
    assert [(d.index, d.kind, d.skipped, d.valid) for d in file.documents] == [
        (0, "ConfigMap", True, True),
        (1, "StreamPipeline", False, False),
    ]
    result = runner.invoke(app, ["validate", "-"], input=yaml.safe_dump(minimal_manifest()))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["-: StreamPipeline/orders: valid"]


def test_json_documents_carry_file_kind_name_validity_and_skip_reason(tmp_path: Path) -> None:
    path = _write(tmp_path / "all.yaml", CONFIG_MAP, _bad_scaling())
    result = runner.invoke(app, ["validate", "-o", "json", str(path)])
    assert result.exit_code == 1
    raw = json.loads(result.stdout)
    assert [
        {key: document[key] for key in ("file", "index", "kind", "name", "valid", "skipped_reason")}
        for document in raw["files"][0]["documents"]
    ] == [
        {
            "file": str(path),
            "index": 0,
            "kind": "ConfigMap",
            "name": "settings",
            "valid": True,
            "skipped_reason": "v1 ConfigMap is not a StreamPipeline",
        },
        {
            "file": str(path),
            "index": 1,
            "kind": "StreamPipeline",
            "name": "orders",
            "valid": False,
            "skipped_reason": None,
        },
    ]
    assert raw["files"][0]["documents"][1]["errors"] == [
        {"path": "spec.groups[1].scaling.maxReplicas", "message": "must be >= minReplicas (2)"}
    ]


def test_a_pipeline_with_a_typo_in_its_api_version_is_checked_not_skipped(tmp_path: Path) -> None:
    manifest = minimal_manifest()
    manifest["apiVersion"] = "streampipe.dev/v1"
    code, report = _json_report(str(_write(tmp_path / "typo.yaml", manifest)))
    assert code == 1
    [document] = report.files[0].documents
    assert not document.skipped
    assert [error.path for error in document.errors] == ["apiVersion"]


def test_the_pre_commit_hook_runs_a_console_script_of_the_package() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert hook["id"] == "streampipe-validate"
    assert hook["language"] == "python"
    script, command = hook["entry"].split()
    assert command == "validate"
    assert script in project["scripts"]
    assert project["scripts"][script] == "streampipe_operator.cli.app:main"


def _distribution(requirement: str) -> str:
    name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_pre_commit_hook_needs_only_its_declared_dependencies(tmp_path: Path) -> None:
    """pre-commit installs the package without extras, plus additional_dependencies: validate must run
    with every other dependency of the operator and worker extras missing."""
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    declared = [r for r in extras["operator"] + extras["worker"] if not r.startswith("streampipe")]
    assert set(hook["additional_dependencies"]) <= set(declared)
    missing = {_distribution(r) for r in declared} - {
        _distribution(r) for r in hook["additional_dependencies"]
    }
    modules = sorted(
        module
        for module, distributions in packages_distributions().items()
        if any(_distribution(d) in missing for d in distributions)
    )
    assert {"kopf", "redis", "kubernetes"} <= set(modules)
    blocker = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {modules!r}:
            raise ImportError("not installed by the hook: " + name)
sys.meta_path.insert(0, Blocked())
from streampipe_operator.cli.app import main
sys.argv = ["streampipe", "validate", *sys.argv[1:]]
main()
"""
    manifest = _write(tmp_path / "pipeline.yaml", minimal_manifest())
    done = subprocess.run(
        [sys.executable, "-c", blocker, str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


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


def test_the_examples_folder_validates_with_its_gitops_manifests_skipped() -> None:
    code, report = _json_report(str(ROOT / "examples"))
    assert code == 0
    pipelines = {
        Path(d.file).relative_to(ROOT / "examples").as_posix()
        for f in report.files
        for d in f.documents
        if d.kind == "StreamPipeline" and not d.skipped and d.valid
    }
    assert {"minimal.yaml", "full.yaml", "sentinel.yaml", "cluster.yaml", "tls-acl.yaml"} <= pipelines
    assert report.invalid == 0
    skipped_kinds = {d.kind for f in report.files for d in f.documents if d.skipped}
    assert {"Secret", "HelmRelease"} <= skipped_kinds


def test_the_documented_pre_commit_snippet_names_the_hook() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    configs = [yaml.safe_load(block) for block in blocks if block.startswith("# .pre-commit-config.yaml")]
    [config] = configs
    assert [h["id"] for repo in config["repos"] for h in repo["hooks"]] == [hook["id"]]
