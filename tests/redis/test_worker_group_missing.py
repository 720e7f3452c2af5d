"""A worker started before its group exists says so, stays not-ready, and starts once it appears."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import redis
from streampipe_worker.router import Entry
from streampipe_worker.settings import WorkerSettings
from tests.redis.conftest import GROUP, STREAM, consumer_for, running
from tests.support.polling import eventually_async as eventually


@pytest.mark.timeout(60)
async def test_missing_group_is_reported_then_consumed_once_created(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings], caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.xadd(STREAM, {"n": "1"})
    seen: list[Entry] = []
    consumer = consumer_for(make_settings(), seen.append)
    async with running(consumer):
        await eventually(lambda: consumer.health.reason == "consumer group missing", what="NOGROUP reported")
        assert not consumer.health.ready
        assert f"group {GROUP} missing (NOGROUP); the operator creates groups" in caplog.text
        redis_client.xgroup_create(STREAM, GROUP, id="0")
        await eventually(lambda: len(seen) == 1 and consumer.health.ready, what="consumed after creation")
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
