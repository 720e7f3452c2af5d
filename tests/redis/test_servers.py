"""The real test servers start, answer, and report what they can do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from streampipe_worker.capabilities import ServerCapabilities, adetect_capabilities, detect_capabilities
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from tests.support.servers import SERVER_IDS, ServerProcess
from tests.support.topologies import start_cluster


def test_capabilities_are_read_from_the_server(
    redis_server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    caps = detect_capabilities(redis_server.client())
    kind = request.node.callspec.params["shared_server"]
    # Each server is asked, not looked up: Valkey 9.1 reports its own version and family.
    expected = {"valkey9": ("valkey", (9, 1)), "redis7": ("redis", (7, 0)), "redis8": ("redis", (8, 2))}
    assert (caps.family, caps.version_tuple[:2]) == expected[kind]
    # All report entries-read / lag (7.0+) and have XAUTOCLAIM; only Redis 8.2 has XTRIM ACKED
    # and XACKDEL.
    assert caps.lag_in_xinfo
    assert caps.xautoclaim
    assert caps.xtrim_acked == (kind == "redis8")
    assert caps.xackdel == (kind == "redis8")
    assert not caps.aof_enabled


def test_capabilities_independent_of_reply_decoding(redis_server: ServerProcess) -> None:
    as_text = detect_capabilities(redis_server.client(decode_responses=True))
    as_bytes = detect_capabilities(redis_server.client(decode_responses=False))
    as_resp3 = detect_capabilities(redis_server.client(protocol=3))
    assert as_text == as_bytes == as_resp3


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", SERVER_IDS)
def test_capabilities_through_a_cluster_client(kind: str, tmp_path: Path) -> None:
    """INFO and COMMAND DOCS name no key: a cluster client asks one node (they all run the same)."""
    cluster = start_cluster(kind, tmp_path)
    settings = ConnectionSettings(url=cluster.url, mode="cluster")

    async def detect_async() -> ServerCapabilities:
        client = create_async_client(settings)  # fresh: not yet connected, slots unknown
        try:
            return await adetect_capabilities(client)
        finally:
            await client.aclose()

    try:
        with cluster.nodes[1].client() as node:
            expected = detect_capabilities(node)
        with create_client(settings) as client:
            assert detect_capabilities(client) == expected
        assert asyncio.run(detect_async()) == expected
        assert expected.family == ("valkey" if kind == "valkey9" else "redis")
    finally:
        cluster.stop()


def test_redis_client_starts_empty(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.xadd("probe", {"k": "v"})
    assert redis_client.xlen("probe") == 1


def test_server_factory_restart_keeps_aof_data(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("valkey9", "--appendonly", "yes", "--appendfsync", "always")
    client = server.client()
    ids = [client.xadd("s", {"n": str(i)}) for i in range(10)]
    assert detect_capabilities(client).aof_enabled
    server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert [entry_id for entry_id, _ in server.client().xrange("s")] == ids
