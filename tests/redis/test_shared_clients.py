"""The operator's pipelines share one Redis client per server and credentials (controller/connections.py),
checked on a real server: the connections held stay flat as pipelines are added, the client lives until
its last pipeline lets go, and different settings get different clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import redis
from streampipe_operator import api
from streampipe_operator.controller import connections
from streampipe_operator.controller.connections import PipelineConnection, SharedClients
from streampipe_operator.streams.admin import RedisAdmin
from tests.support.polling import eventually_async

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def connection(shared: SharedClients | None, uid: str) -> PipelineConnection:
    kube: Any = None  # no Secrets are read: the specs below have no auth or TLS
    return PipelineConnection(kube, "ns", uid, socket_timeout=5, secret_refresh=60, shared=shared)


def clients_named(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c["name"] == "streampipe-operator")


async def test_pipelines_on_one_server_share_one_client(redis_url: str, redis_client: redis.Redis) -> None:
    shared = SharedClients()
    spec = api.RedisSpec(url=redis_url)
    connections = [connection(shared, f"uid-{n}") for n in range(50)]
    admins = [await c.admin(spec) for c in connections]
    assert len({id(admin.client) for admin in admins}) == 1
    assert len(shared) == 1
    for admin in admins:
        assert (await admin.server_state()).used_memory is not None
    assert clients_named(redis_client) == 1  # 50 sequential passes, one connection

    for c in connections[:-1]:
        await c.close()
    assert len(shared) == 1  # the last pipeline still uses it
    assert (await connections[-1].admin(spec)).client is admins[0].client
    await connections[-1].close()
    assert len(shared) == 0
    # Closed with its last user (the server drops it from CLIENT LIST once it has read the close).
    await eventually_async(lambda: clients_named(redis_client) == 0, "the shared client's connection closed")


async def test_other_settings_get_their_own_client_and_reset_lets_go(redis_url: str) -> None:
    shared = SharedClients()
    first, second, other_db = connection(shared, "a"), connection(shared, "b"), connection(shared, "c")
    a = await first.admin(api.RedisSpec(url=redis_url))
    b = await second.admin(api.RedisSpec(url=redis_url))
    c = await other_db.admin(api.RedisSpec(url=redis_url.rsplit("/", 1)[0] + "/1"))
    assert a.client is b.client
    assert c.client is not a.client
    assert (await c.server_state()).used_memory is not None  # a working client of its own
    assert len(shared) == 2
    await first.reset()  # after a failure: lets go; the shared client stays with its other user
    assert len(shared) == 2
    again = await first.admin(api.RedisSpec(url=redis_url))
    assert again.client is b.client
    for conn in (first, second, other_db):
        await conn.close()
    assert len(shared) == 0


async def test_without_a_registry_each_pipeline_has_its_own_client(redis_url: str) -> None:
    one, two = connection(None, "a"), connection(None, "b")
    spec = api.RedisSpec(url=redis_url)
    assert (await one.admin(spec)).client is not (await two.admin(spec)).client
    await one.close()
    await two.close()


async def test_passes_on_a_shared_client_take_turns(redis_url: str) -> None:
    shared = SharedClients(passes=2)
    spec = api.RedisSpec(url=redis_url)
    connections = [connection(shared, f"uid-{n}") for n in range(3)]
    for conn in connections:
        await conn.admin(spec)
    first, second = connections[0].turn(), connections[1].turn()
    await first.__aenter__()
    await second.__aenter__()
    third = connections[2].turn()
    with pytest.raises(TimeoutError):  # both turns are taken: the third pass waits
        await asyncio.wait_for(third.__aenter__(), timeout=0.05)
    await first.__aexit__(None, None, None)
    await asyncio.wait_for(third.__aenter__(), timeout=5)  # a turn came free
    await third.__aexit__(None, None, None)
    await second.__aexit__(None, None, None)
    for conn in connections:
        await conn.close()


async def test_one_server_state_reading_serves_the_pipelines_of_a_shared_client(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TTL no test machine outlasts between two calls, so the assertion cannot depend on timing.
    monkeypatch.setattr(connections, "SERVER_STATE_TTL", 3600.0)
    shared = SharedClients()
    spec = api.RedisSpec(url=redis_url)
    one, two = connection(shared, "a"), connection(shared, "b")
    first = await (await one.admin(spec)).server_state()
    assert first.maxmemory_policy == "noeviction"
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        # Within the TTL the other pipeline gets the same reading, not a second INFO...
        assert (await (await two.admin(spec)).server_state()) is first
        # ...and an admin without a TTL on the same client reads the server now.
        fresh = await RedisAdmin((await two.admin(spec)).client).server_state()
        assert fresh.maxmemory_policy == "allkeys-lru"
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    await one.close()
    await two.close()
