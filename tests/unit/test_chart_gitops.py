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


# --- delivering pipelines ------------------------------------------------------------------------------


def one_of(name: str, kind: str, object_name: str | None = None) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in documents(name)
        if doc["kind"] == kind and (object_name is None or doc["metadata"]["name"] == object_name)
    ]
    return found


def test_argo_cd_delivers_pipelines_after_the_operator() -> None:
    operator = one_of("argocd-application.yaml", "Application")
    pipelines = one_of("argocd-pipelines.yaml", "Application")
    wave = "argocd.argoproj.io/sync-wave"
    assert int(pipelines["metadata"]["annotations"][wave]) > int(operator["metadata"]["annotations"][wave])
    assert "SkipDryRunOnMissingResource=true" in pipelines["spec"]["syncPolicy"]["syncOptions"]


def test_flux_delivers_pipelines_after_the_operator_is_ready() -> None:
    pipelines = one_of("flux-pipelines.yaml", "Kustomization", "shop-pipelines")
    (dependency,) = pipelines["spec"]["dependsOn"]
    operator = one_of("flux-pipelines.yaml", "Kustomization", dependency["name"])
    assert operator["spec"]["wait"] is True  # Ready only once the HelmRelease (and its CRD) is
    assert pipelines["spec"]["wait"] is True  # health: each StreamPipeline's Ready condition (kstatus)
    assert (
        pipelines["spec"]["sourceRef"]["name"]
        == one_of("flux-pipelines.yaml", "GitRepository")["metadata"]["name"]
    )


@pytest.mark.parametrize("name", sorted(p.name for p in GITOPS.glob("*.yaml")))
def test_every_namespace_an_example_puts_objects_in_is_created_or_a_tools_own(name: str) -> None:
    docs = documents(name)
    created = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace"}
    used = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} - {None}
    assert used - created <= {"flux-system", "argocd"}


def test_the_crd_is_never_pruned_or_deleted_by_an_uninstall() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "streampipeline.yaml").read_text())
    annotations = crd["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert set(annotations["argocd.argoproj.io/sync-options"].split(",")) == {"Prune=false", "Delete=false"}


def health(status: dict[str, Any] | None, generation: int = 3) -> tuple[str, str]:
    """The Argo CD health script, run by Lua 5.1 (Argo CD's gopher-lua speaks 5.1) on a StreamPipeline."""
    from lupa import lua51

    script = one_of("argocd-pipelines.yaml", "ConfigMap")["data"][
        "resource.customizations.health.streampipe.dev_StreamPipeline"
    ]
    runtime = lua51.LuaRuntime()
    body: dict[str, Any] = {"metadata": {"name": "orders", "generation": generation}}
    if status is not None:
        body["status"] = status
    runtime.globals().obj = to_lua(runtime, body)
    result = runtime.execute(script)
    return str(result["status"]), str(result["message"])


def to_lua(runtime: Any, value: Any) -> Any:
    """JSON-like Python data as Lua tables, lists 1-based as Argo CD passes them."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def status_of(**changes: Any) -> dict[str, Any]:
    from streampipe_operator.kube.status import build_status, status_document
    from tests.unit.test_reconcile_status import NOW, healthy

    return status_document(build_status(healthy(**changes), None, now=NOW))


def test_the_argo_cd_health_script_reads_the_operators_own_status() -> None:
    assert health(None) == ("Progressing", "waiting for the streampipe operator")
    assert health(status_of())[0] == "Healthy"
    assert health(status_of(), generation=4)[0] == "Progressing"  # spec changed, not acted on yet
    status, message = health(status_of(invalid=["spec.groups[0].image: required"]))
    assert (status, message.split(":")[0]) == ("Degraded", "InvalidSpec")
    status, message = health(status_of(redis_problem=("RedisUnreachable", "down"), observation=None))
    assert (status, message.split(":")[0]) == ("Degraded", "RedisUnreachable")
