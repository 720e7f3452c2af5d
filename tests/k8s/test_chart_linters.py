"""The chart linters (issue 14), each on the chart's defaults and every ``ci/*-values.yaml``:

- ``ct lint`` (chart-testing) with its default configuration: yamale on Chart.yaml, yamllint on the
  values files, ``helm lint`` per value set. Exceptions: charts/ct.yaml.
- kube-score with its default checks. Exceptions: charts/kube-score.yaml.
- kubeconform, strict, against the schemas the test API server serves (``/openapi/v2``) and the
  chart's CRDs, on the rendered chart and the manifests in examples/. Skipped kinds: charts/kubeconform.yaml.

kube-linter and pluto are not run: the Go module proxy refuses both (hack/chart_linters.py). A missing
linter fails these tests; ``make tools`` builds them into .cache/bin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import Kubectl
from tests.support.kube_schemas import SCHEMA_LOCATION_TEMPLATE, write_crd_schemas, write_openapi_schemas
from tests.support.servers import TOOL_BIN
from tests.unit.test_chart import CHART, MONITORING_APIS, ROOT, VALUE_SETS, render, render_text

pytestmark = pytest.mark.timeout(300)

CT_CONFIG = ROOT / "charts" / "ct.yaml"
KUBE_SCORE_CONFIG = ROOT / "charts" / "kube-score.yaml"
KUBECONFORM_CONFIG = ROOT / "charts" / "kubeconform.yaml"
# ct's own default yamllint and yamale configuration, copied from its module by hack/chart_linters.py.
CT_DEFAULTS = ROOT / ".cache" / "ct"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("*/*.yaml"))
RELEASE, NAMESPACE = "sp", "streampipe-system"
KUBE_SCORE_OK = 10  # kube-score's grade of a passed check (warnings are 5, critical findings 1)


def linter(name: str) -> Path:
    binary = TOOL_BIN / name
    if not binary.exists():
        pytest.fail(f"{binary} missing: run `make tools` (hack/chart_linters.py builds it)")
    return binary


def run(
    *args: str | Path, stdin: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    # ct runs helm, yamllint and yamale from PATH: the pinned ones first.
    path = os.pathsep.join([str(TOOL_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        timeout=timeout,
        check=False,
    )


def config(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


# ct


def test_ct_lint_passes_with_the_default_configuration() -> None:
    ct = linter("ct")
    for name in ("lintconf.yaml", "chart_schema.yaml"):
        assert (CT_DEFAULTS / name).exists(), f"{CT_DEFAULTS / name} missing: run `make tools`"
    # Deliberate exceptions to ct's defaults are these and no others (each justified in charts/ct.yaml).
    settings = config(CT_CONFIG)
    assert settings["charts"] == [str(CHART.relative_to(ROOT))]
    assert {key: value for key, value in settings.items() if isinstance(value, bool)} == {
        "validate-maintainers": False
    }
    done = run(ct, "lint", "--config", CT_CONFIG)
    assert done.returncode == 0, f"ct lint failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"


def test_ct_lint_fails_on_a_yamllint_finding(tmp_path: Path) -> None:
    """ct really lints the ci/ values files with its default yamllint rules (here: a duplicate key)."""
    ct = linter("ct")
    chart = tmp_path / "charts" / CHART.name
    shutil.copytree(CHART, chart)
    assert run(ct, "lint", "--config", CT_CONFIG, "--charts", chart).returncode == 0
    (chart / "ci" / "broken-values.yaml").write_text("replicaCount: 1\nreplicaCount: 2\n")
    done = run(ct, "lint", "--config", CT_CONFIG, "--charts", chart)
    assert done.returncode != 0, done.stdout[-3000:]


# kube-score


def kube_score_findings(rendered: str) -> set[tuple[str, str]]:
    """(check id, ``Kind/name``) of every check kube-score did not pass, from its JSON (v2) report."""
    done = run(linter("kube-score"), "score", "--output-format", "json", "--kubernetes-version", "v1.35", "-",
               stdin=rendered)  # fmt: skip
    # Exit code 1 means findings; anything else (or no JSON) is kube-score failing to run.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report: list[dict[str, Any]] = json.loads(done.stdout)
    assert report, "kube-score scored no objects"
    return {
        (check["check"]["id"], f"{scored['type_meta']['kind']}/{scored['object_meta']['name']}")
        for scored in report
        for check in scored["checks"]
        if not check["skipped"] and check["grade"] < KUBE_SCORE_OK
    }


def test_kube_score_findings_are_fixed_or_justified() -> None:
    ignored: dict[str, str] = config(KUBE_SCORE_CONFIG)["ignored-checks"]
    assert all(reason.strip() for reason in ignored.values()), "every exception needs its reason"
    findings: dict[str, set[tuple[str, str]]] = {}
    for name, values in VALUE_SETS.items():
        rendered = render_text(values, release=RELEASE, namespace=NAMESPACE)
        findings[name] = kube_score_findings(rendered)
    unjustified = {
        name: sorted(finding for finding in found if finding[0] not in ignored)
        for name, found in findings.items()
    }
    assert unjustified == {name: [] for name in VALUE_SETS}, (
        f"fix these or justify them in {KUBE_SCORE_CONFIG}"
    )
    reported = {check for found in findings.values() for check, _ in found}
    assert set(ignored) - reported == set(), f"{KUBE_SCORE_CONFIG} ignores checks that no longer fail"
    # The network policy exception holds only while the policy is off: with it on, every pod is covered.
    assert not {check for check, _ in findings["networkpolicy"]} & {"pod-networkpolicy"}


# kubeconform


@pytest.fixture(scope="module")
def served_schemas(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kubeconform schemas of every kind the test API server serves, plus the chart's CRDs."""
    directory = tmp_path_factory.mktemp("kubeconform-schemas")
    openapi = json.loads(kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout)
    crds = [
        doc
        for path in sorted((CHART / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    served = write_openapi_schemas(openapi, directory)
    assert {"deployment-apps-v1.json", "service-v1.json", "networkpolicy-networking-v1.json"} <= set(served)
    custom = write_crd_schemas(crds, openapi, directory)
    assert "streampipeline-streampipe-v1alpha1.json" in custom
    return directory


def kubeconform(schemas: Path, *files: Path) -> dict[str, Any]:
    skip = config(KUBECONFORM_CONFIG)["skip-kinds"]
    done = run(
        linter("kubeconform"), "-strict", "-summary", "-verbose", "-output", "json",
        "-schema-location", f"{schemas}/{SCHEMA_LOCATION_TEMPLATE}", "-skip", ",".join(skip), *files,
    )  # fmt: skip
    assert done.stdout, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def manifests(tmp_path: Path) -> Iterator[Path]:
    """The chart rendered with each value set (monitoring objects included), then examples/."""
    for name, values in VALUE_SETS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            render_text(values, release=RELEASE, namespace=NAMESPACE, api_versions=MONITORING_APIS)
        )
        yield path
    yield from EXAMPLES


def test_kubeconform_accepts_the_chart_and_the_examples(served_schemas: Path, tmp_path: Path) -> None:
    skip: dict[str, str] = config(KUBECONFORM_CONFIG)["skip-kinds"]
    assert all(reason.strip() for reason in skip.values()), "every skipped kind needs its reason"
    files = list(manifests(tmp_path))
    report = kubeconform(served_schemas, *files)
    resources: list[dict[str, Any]] = report["resources"]
    failed = [
        resource for resource in resources if resource["status"] not in {"statusValid", "statusSkipped"}
    ]
    assert failed == [], "kubeconform: invalid objects or missing schemas"
    assert report["summary"]["invalid"] == report["summary"]["errors"] == 0, report["summary"]

    def kinds(status: str) -> set[str]:
        return {
            f"{resource['version']}/{resource['kind']}"
            for resource in resources
            if resource["status"] == status
        }

    assert {"apps/v1/Deployment", "v1/Pod", "streampipe.dev/v1alpha1/StreamPipeline"} <= kinds("statusValid")
    assert kinds("statusSkipped") == set(skip), f"{KUBECONFORM_CONFIG} lists kinds that are not in the inputs"


def test_kubeconform_refuses_unknown_fields(served_schemas: Path, tmp_path: Path) -> None:
    """The schemas are strict: a misspelt field fails, in a built-in kind and in a StreamPipeline."""
    deployment = next(obj for obj in render(None) if obj["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2
    pipeline = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    pipeline["spec"]["stream_name"] = "orders"
    path = tmp_path / "misspelt.yaml"
    path.write_text(yaml.safe_dump_all([deployment, pipeline]))
    report = kubeconform(served_schemas, path)
    assert {(resource["kind"], resource["status"]) for resource in report["resources"]} == {
        ("Deployment", "statusInvalid"),
        ("StreamPipeline", "statusInvalid"),
    }
