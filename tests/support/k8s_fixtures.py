"""pytest fixtures for the real control plane (registered from tests/conftest.py via pytest_plugins)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import (
    ControlPlane,
    ControlPlaneError,
    Kubectl,
    service_account_kubeconfig,
    unique_name,
)
from tests.support.pod_runner import PodRunner

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "streampipeline.yaml"
CRD_NAME = "streampipelines.streampipe.dev"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """kube-apiserver + etcd for the whole session (started once, on first use)."""
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane")).start()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """``kubectl(*args, input=None, check=True)`` with the admin kubeconfig."""
    return Kubectl(control_plane.kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test. Deletion is requested afterwards; without a controller-manager it
    stays Terminating, which is harmless because every test gets a new random name."""
    name = unique_name(request.node.name[:40])
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> str:
    """The generated StreamPipeline CRD from crds/, applied and Established."""
    return install_crd(kubectl)


def install_crd(kubectl: Kubectl) -> str:
    """Apply crds/streampipeline.yaml with ``kubectl`` and wait until the resource is served (also for a
    test's own control plane); returns the CRD's name."""
    if not CRD_FILE.exists():
        raise ControlPlaneError(f"{CRD_FILE} missing: run `make crds`")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    # Discovery can lag the Established condition by a moment.
    deadline = time.monotonic() + 30
    while kubectl("get", "streampipelines", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise ControlPlaneError("StreamPipeline resource not served 30s after the CRD was Established")
        time.sleep(0.2)
    return CRD_NAME


@pytest.fixture
def service_account(kubectl: Kubectl, control_plane: ControlPlane, tmp_path: Path) -> Callable[..., Path]:
    """``service_account(namespace, name, rules=[...], cluster_rules=[...], cluster_role=None)`` ->
    path of a kubeconfig that authenticates as that ServiceAccount with a TokenRequest token."""

    def make(namespace: str, name: str, **kwargs: Any) -> Path:
        path = tmp_path / f"{namespace}-{name}.kubeconfig"
        return service_account_kubeconfig(kubectl, control_plane, namespace, name, path, **kwargs)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the control plane carry the ``k8s`` marker, so ``-m k8s`` selects all of them."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture
def pod_runner(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., PodRunner]]:
    """``pod_runner(namespace=<the test's>, **options)`` starts the test pod runner (it runs the replicas
    of streampipe worker Deployments in that namespace as local processes; see
    tests/support/pod_runner.py). Every runner started is stopped, with its processes, after the test."""
    runners: list[PodRunner] = []

    def start(ns: str | None = None, **options: Any) -> PodRunner:
        target = ns or namespace
        runner = PodRunner(control_plane.kubeconfig, target, tmp_path / f"pods-{target}", **options).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()
