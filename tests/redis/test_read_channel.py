"""The reader's own connection (streampipe_worker/read_channel.py), on real servers: replies in order
and decoded as the client decodes, error replies as redis-py's exceptions on a connection that stays
in step, and a connection that is dropped, never reused, after a cancellation, a timeout or a kill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.read_channel import ReadChannel
from streampipe_worker.redis_errors import RedisErrorKind, classify
from tests.support.polling import eventually_async

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def xreadgroup(block_ms: int = 2000) -> tuple[Any, ...]:
    return ("XREADGROUP", "GROUP", "g", "c1", "COUNT", 10, "BLOCK", block_ms, "STREAMS", "s", ">")


READ = xreadgroup()


def channel_clients(redis_url: str) -> tuple[Any, ReadChannel]:
    client = create_async_client(ConnectionSettings(url=redis_url, client_name="reader", socket_timeout=5.0))
    assert ReadChannel.supports(client)
    return client, ReadChannel(client)


def readers(redis_client: redis.Redis) -> list[int]:
    """Server-side ids of the connections named ``reader``."""
    return sorted(int(c["id"]) for c in redis_client.client_list() if c.get("name") == "reader")


async def test_replies_come_back_in_order_and_decoded(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.xgroup_create("s", "g", id="0", mkstream=True)
    first = redis_client.xadd("s", {"type": "a", "payload": b"\xff\xfe"})  # not UTF-8
    second = redis_client.xadd("s", {"type": "b", "n": "2"})
    client, channel = channel_clients(redis_url)
    try:
        [read] = await channel.call([READ])
        assert read == [
            ["s", [[first, ["type", "a", "payload", "\udcff\udcfe"]], [second, ["type", "b", "n", "2"]]]]
        ]
        acked, again = await channel.call([("XACK", "s", "g", first, second), xreadgroup(1)])
        assert acked == 2
        assert again is None  # nothing new: BLOCK timed out
        assert redis_client.xpending("s", "g")["pending"] == 0
    finally:
        await channel.close()
        await client.aclose()


async def test_an_error_reply_is_redis_pys_exception_and_the_connection_stays(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client, channel = channel_clients(redis_url)
    try:
        redis_client.xadd("s", {"n": "1"})
        acked, read = await channel.call([("XACK", "s", "g", "1-1"), READ])  # no such group
        assert acked == 0  # XACK to a missing group acks nothing; XREADGROUP refuses
        assert isinstance(read, redis.exceptions.ResponseError)
        assert classify(read) is RedisErrorKind.GROUP_MISSING
        before = readers(redis_client)
        assert len(before) == 1
        redis_client.xgroup_create("s", "g", id="0")
        [read] = await channel.call([READ])
        assert [entry[1] for entry in read[0][1]] == [["n", "1"]]
        assert readers(redis_client) == before  # the same connection
    finally:
        await channel.close()
        await client.aclose()


async def test_a_cancelled_read_drops_the_connection(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.xgroup_create("s", "g", id="$", mkstream=True)
    client, channel = channel_clients(redis_url)
    try:
        blocked = asyncio.create_task(channel.call([xreadgroup(0)]))
        await eventually_async(lambda: readers(redis_client), what="the read blocked")
        first = readers(redis_client)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        # The blocked XREADGROUP goes with its connection (once the server has seen it close, an entry
        # added is not delivered to it): the next call reads on a new connection.
        await eventually_async(lambda: not readers(redis_client), what="the old connection closed")
        entry = redis_client.xadd("s", {"n": "1"})
        [read] = await channel.call([READ])
        assert read[0][1][0][0] == entry
        now = readers(redis_client)
        assert len(now) == 1
        assert now != first
    finally:
        await channel.close()
        await client.aclose()


async def test_a_silent_server_times_the_read_out(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.xgroup_create("s", "g", id="$", mkstream=True)
    client = create_async_client(ConnectionSettings(url=redis_url, client_name="reader", socket_timeout=0.3))
    channel = ReadChannel(client)  # the client's socket timeout bounds the round trip
    try:
        await channel.call([("PING",)])  # connected before the server goes quiet
        redis_client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(redis.exceptions.TimeoutError) as caught:
            await channel.call([("PING",)])
        assert classify(caught.value) is RedisErrorKind.TRANSIENT
        redis_client.execute_command("CLIENT", "UNPAUSE")
        assert await channel.call([("PING",)]) == ["PONG"]
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
        await channel.close()
        await client.aclose()


async def test_a_killed_connection_is_a_transient_error_then_a_new_one(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xgroup_create("s", "g", id="$", mkstream=True)
    client, channel = channel_clients(redis_url)
    try:
        blocked = asyncio.create_task(channel.call([xreadgroup(0)]))
        await eventually_async(lambda: readers(redis_client), what="the read blocked")
        [killed] = readers(redis_client)
        redis_client.client_kill_filter(_id=killed)
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await blocked
        assert classify(caught.value) is RedisErrorKind.TRANSIENT
        assert await channel.call([("PING",)]) == ["PONG"]
        assert readers(redis_client) != [killed]
    finally:
        await channel.close()
        await client.aclose()


async def test_close_gives_the_connection_back_closed(redis_url: str, redis_client: redis.Redis) -> None:
    client, channel = channel_clients(redis_url)
    try:
        await channel.call([("PING",)])
        assert len(readers(redis_client)) == 1
        await channel.close()
        await channel.close()  # twice is fine
        await eventually_async(lambda: not readers(redis_client), what="the connection closed")
        # The pool reconnects the connection it got back when redis-py itself needs one.
        assert await client.ping() is True
    finally:
        await client.aclose()
