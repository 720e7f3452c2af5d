"""Fixtures for tests on real servers: settings for a test's stream, running consumers, a RedisAdmin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

import redis
from streampipe_operator.streams.admin import RedisAdmin
from streampipe_worker.consumer import Consumer
from streampipe_worker.router import LoadedHandler, classify_handler
from streampipe_worker.settings import WorkerSettings, load_settings

STREAM = "{orders}:events"
GROUP = "billing"


def worker_settings_for(url: str, **overrides: Any) -> WorkerSettings:
    """Settings for tests: short timings so retries and reclaims happen in fractions of a second."""
    values: dict[str, Any] = {
        "redis_url": url,
        "stream": STREAM,
        "group": GROUP,
        "consumer": "c1",
        "handler": "tests.unused:handler",
        "batch_size": 100,
        "block": "100ms",
        "claim_idle": "2s",
        "backoff_initial": "100ms",
        "backoff_max": "1s",
        "metrics_port": 0,
        "shutdown_grace": "5s",
    }
    values.update(overrides)
    return load_settings({}, **values)


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., WorkerSettings]:
    def make(**overrides: Any) -> WorkerSettings:
        return worker_settings_for(redis_url, **overrides)

    return make


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[RedisAdmin]:
    """The operator's RedisAdmin on the test's server."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield RedisAdmin(client)
    await client.aclose()


@pytest.fixture
def stream_group(redis_client: redis.Redis) -> redis.Redis:
    """The test stream with its group at 0 (the operator creates groups; in these tests we do)."""
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    return redis_client


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Consumer]:
    """Run a consumer for the duration of the block; stop it (as SIGTERM would) afterwards."""
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, timeout=30)


def consumer_for(settings: WorkerSettings, handler: Callable[..., Any] | LoadedHandler) -> Consumer:
    loaded = handler if isinstance(handler, LoadedHandler) else classify_handler(handler)
    return Consumer(settings, loaded)


def pending_count(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, GROUP)["pending"])
