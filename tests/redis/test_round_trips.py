"""Callers of one client that ask in the same turn of the event loop share one pipelined round trip
(streams/round_trips.py), on real servers: each gets exactly its own replies, an error reply stays with
its caller, a failed round trip fails every caller that shared it, a cancelled caller leaves the others
their replies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio

import redis
from streampipe_operator.streams.round_trips import RoundTrips, round_trips
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def lengths_of(key: str) -> Callable[[Any], None]:
    def queue(pipe: Any) -> None:
        pipe.xlen(key)
        pipe.xinfo_stream(key)

    return queue


async def test_callers_in_one_turn_share_one_round_trip(redis_url: str, redis_client: redis.Redis) -> None:
    for n in range(10):
        for _ in range(n + 1):
            redis_client.xadd(f"s{n}", {"n": n})
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        trips = round_trips(client)
        assert round_trips(client) is trips  # one per client
        replies = await asyncio.gather(*(trips.execute(lengths_of(f"s{n}")) for n in range(10)))
        assert trips.sent == 1
        assert trips.served == 10
        for n, (length, info) in enumerate(replies):
            assert length == n + 1
            assert info["length"] == n + 1  # XINFO STREAM's reply parsed as on its own pipeline

        # Callers in different turns get a round trip each.
        assert await trips.execute(lengths_of("s0")) == [1, replies[0][1]]
        assert await trips.execute(lengths_of("s1")) == [2, replies[1][1]]
        assert trips.sent == 3
    finally:
        await client.aclose()


async def test_an_error_reply_stays_with_its_caller(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set("not-a-stream", "x")
    redis_client.xadd("s", {"a": 1})
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        trips = RoundTrips(client)
        wrong, right = await asyncio.gather(
            trips.execute(lengths_of("not-a-stream")), trips.execute(lengths_of("s"))
        )
        assert trips.sent == 1
        assert all(isinstance(reply, redis.exceptions.ResponseError) for reply in wrong)
        assert right[0] == 1
    finally:
        await client.aclose()


async def test_a_failed_round_trip_fails_every_caller(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=2)
    try:
        trips = RoundTrips(client)
        assert (await trips.execute(lengths_of("s")))[0] == 0  # XLEN of a missing key
        server.stop()
        outcomes = await asyncio.gather(
            *(trips.execute(lengths_of(f"s{n}")) for n in range(3)), return_exceptions=True
        )
        assert [isinstance(outcome, redis.exceptions.ConnectionError) for outcome in outcomes] == [True] * 3
        assert trips.sent == 2  # the three shared the failed one
    finally:
        await client.aclose()


async def test_a_cancelled_caller_leaves_the_others_their_replies(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xadd("a", {"n": 1})
    redis_client.xadd("b", {"n": 1})
    redis_client.xadd("b", {"n": 2})
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        trips = RoundTrips(client)
        first = asyncio.create_task(trips.execute(lengths_of("a")))
        second = asyncio.create_task(trips.execute(lengths_of("b")))
        await asyncio.sleep(0)  # both queued; the round trip is sent on the next turn
        first.cancel()
        assert (await second)[0] == 2
        with pytest.raises(asyncio.CancelledError):
            await first
        assert trips.sent == 1
        assert (await trips.execute(lengths_of("a")))[0] == 1  # the client is still in step
    finally:
        await client.aclose()
