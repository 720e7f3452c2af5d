"""Shared fixtures: real Valkey 9.1, Redis 7.0 and Redis 8.2 servers on loopback (support/servers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import redis
from tests.support.servers import SERVER_KINDS, ServerProcess, start_server

pytest_plugins = [
    "tests.support.k8s_fixtures",
    "tests.support.operator_fixtures",
]

SERVER_IDS = list(SERVER_KINDS)


@pytest.fixture(scope="session", params=SERVER_IDS)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per kind for the whole session; tests get it flushed through ``redis_server``."""
    kind: str = request.param
    server = start_server(kind, tmp_path_factory.mktemp(kind))
    yield server
    server.stop()


@pytest.fixture
def redis_server(shared_server: ServerProcess) -> ServerProcess:
    """The session's server of this test's kind, with an empty data set."""
    with shared_server.client() as client:
        client.flushall()
    return shared_server


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> str:
    """URL of a real, empty server; parametrized over ``valkey9``, ``redis7`` and ``redis8``."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: ServerProcess) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers owned by one test (fault tests kill and restart them); all stopped after it."""
    started: list[ServerProcess] = []

    def factory(kind: str = "valkey9", *extra_args: str, **kwargs: object) -> ServerProcess:
        workdir = tmp_path / f"{kind}-{len(started)}"
        server = start_server(kind, workdir, extra_args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a real server carry the ``redis`` marker, so ``-m redis`` selects all of them."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"shared_server", "server_factory"} & set(fixtures):
            item.add_marker(pytest.mark.redis)
