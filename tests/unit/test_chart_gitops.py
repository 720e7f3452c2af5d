"""examples/gitops: the Argo CD Application and Flux HelmReleases point at the chart, upgrade its CRDs
(which neither tool does by default), and carry values the chart's schema accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_chart import CHART, ROOT, by_kind, render

GITOPS = ROOT / "examples" / "gitops"

pytestmark = pytest.mark.timeout(60)


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((GITOPS / name).read_text()) if doc]


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_argo_cd_application_renders_the_chart_and_applies_crds_server_side(tmp_path: Path) -> None:
    (app,) = documents("argocd-application.yaml")
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (ROOT / source["path"]) == CHART
    assert "skipCrds" not in source["helm"], "Argo CD must apply the chart's crds/"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    objects = render(
        values_file(tmp_path, source["helm"]["valuesObject"]), release=source["helm"]["releaseName"]
    )
    assert by_kind(objects, "Deployment")[0]["spec"]["replicas"] == 2
    assert app["spec"]["destination"]["namespace"] == "streampipe-system"


@pytest.mark.parametrize(
    "name", ["flux-helmrelease.yaml", "flux-helmrepository.yaml", "flux-ocirepository.yaml"]
)
def test_flux_helmrelease_upgrades_crds_and_its_values_fit_the_schema(name: str, tmp_path: Path) -> None:
    docs = documents(name)
    (release,) = [doc for doc in docs if doc["kind"] == "HelmRelease"]
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    spec = release["spec"]
    assert spec["install"]["crds"] == "CreateReplace"
    assert spec["upgrade"]["crds"] == "CreateReplace", "Flux skips CRD upgrades unless told otherwise"
    sources = {doc["kind"]: doc for doc in docs if doc["apiVersion"].startswith("source.toolkit.fluxcd.io/")}
    if "chartRef" in spec:
        assert spec["chartRef"]["kind"] in sources
    else:
        source_ref = spec["chart"]["spec"]["sourceRef"]
        assert source_ref["kind"] in sources
        if source_ref["kind"] == "GitRepository":
            assert (ROOT / spec["chart"]["spec"]["chart"]) == CHART
    render(values_file(tmp_path, spec["values"]), release=spec["releaseName"])
