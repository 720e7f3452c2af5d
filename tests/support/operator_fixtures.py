"""pytest fixtures for the operator process (registered from tests/conftest.py via pytest_plugins)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.operator_process import Cluster, OperatorProcess

OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    """Reads of StreamPipelines, Deployments and Events with the admin credentials."""
    reader = Cluster(control_plane.kubeconfig)
    yield reader
    reader.close()


@pytest.fixture
def operator_factory(
    control_plane: ControlPlane, crd_installed: str, tmp_path: Path
) -> Iterator[OperatorFactory]:
    """``operator_factory(namespace, ..., kubeconfig=None, extra_args=())`` starts ``streampipe operator
    run`` for those namespaces (admin credentials unless ``kubeconfig``); all are stopped by PID after
    the test, and their logs are printed (pytest shows them when the test failed)."""
    started: list[OperatorProcess] = []

    def start(
        *namespaces: str, kubeconfig: Path | None = None, extra_args: Sequence[str] = ()
    ) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=kubeconfig or control_plane.kubeconfig,
            namespaces=namespaces,
            logfile=tmp_path / f"operator-{len(started)}.log",
            extra_args=extra_args,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
        print(f"--- {process.logfile.name} (last lines) ---\n{process.log_tail(4000)}")


@pytest.fixture
def operator(operator_factory: OperatorFactory, namespace: str) -> OperatorProcess:
    """The operator watching this test's namespace."""
    return operator_factory(namespace)
