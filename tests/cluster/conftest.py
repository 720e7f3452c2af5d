"""Fixtures of the one-node cluster tier (tests/cluster/).

The cluster (tests/support/cluster.py) starts once for this package, on first use, after ``make images``'
builder has made sure the images are current (a no-op when they are), and stops after the package's
last test, so the rest of the suite does not run beside an idle node. Every test here carries the
``cluster`` marker: ``pytest -m cluster`` selects the tier and ``-m "not cluster"`` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hack.images import build_all

from tests.support.cluster import Cluster, start_node_valkey
from tests.support.servers import ServerProcess


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running one-node cluster with every image ``make images`` builds loaded into its node."""
    build_all()
    running = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield running
    running.stop()


@pytest.fixture(scope="package")
def cluster_valkey(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Valkey 9.1 on the node's address: pods and the test process both reach it (``.url``)."""
    server = start_node_valkey(tmp_path_factory.mktemp("cluster-valkey"))
    yield server
    server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.cluster)
