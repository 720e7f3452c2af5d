"""``groups[].dedupe.ttl`` end to end on real servers: the pipeline's ttl reaches a worker through the
env that ``streampipe up`` and the worker Deployment render, and a repeated event is processed once."""

from __future__ import annotations

import json
from typing import Any

import pytest

import redis
from streampipe_operator import api
from streampipe_operator.kube import deployments
from streampipe_operator.local import workers
from streampipe_worker.producer import Producer
from streampipe_worker.router import Entry
from streampipe_worker.settings import load_settings
from tests.redis.conftest import GROUP, STREAM, consumer_for, pending_count, running
from tests.support.polling import eventually_async as eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_group")]


def pipeline(url: str, dedupe: dict[str, str] | None) -> api.StreamPipeline:
    group: dict[str, Any] = {"name": GROUP, "handler": "tests.unused:handler", "image": "reg/w:1"}
    if dedupe is not None:
        group["dedupe"] = dedupe
    return api.StreamPipeline.from_body(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                "name": "orders",
                "namespace": "shop",
                "uid": "0b7a3c5e-1111-4222-8333-944455556666",
            },
            "spec": {"redis": {"url": url}, "stream": STREAM, "groups": [group]},
        }
    )


def env_from(source: str, pipeline: api.StreamPipeline, url: str) -> dict[str, str]:
    """The worker env as ``streampipe up`` or the worker Deployment renders it (literal values)."""
    spec = pipeline.spec
    if source == "up":
        env, _ = workers.worker_env(spec, spec.groups[0], redis_url=url, python_path=[])
        return env
    items = deployments.worker_env(pipeline, spec.groups[0])
    return {item["name"]: item["value"] for item in items if "value" in item}


@pytest.mark.parametrize("source", ["up", "deployment"])
@pytest.mark.parametrize(("dedupe", "runs"), [({"ttl": "10m"}, 1), (None, 2)], ids=["ttl", "no-dedupe"])
async def test_a_repeated_event_runs_once_with_the_pipelines_ttl(
    redis_url: str, redis_client: redis.Redis, source: str, dedupe: dict[str, str] | None, runs: int
) -> None:
    env = env_from(source, pipeline(redis_url, dedupe), redis_url)
    settings = load_settings(env, consumer="c1", metrics_port=0, block="100ms", log_format="text")
    handled: list[Any] = []

    def handle(entry: Entry) -> None:
        handled.append(json.loads(entry.fields["payload"]))

    producer = Producer(redis_client, STREAM)
    async with running(consumer_for(settings, handle)) as consumer:
        producer.send("payment.captured", {"id": 7}, dedupe_key="pay-7")
        await eventually(lambda: len(handled) == 1 and pending_count(redis_client) == 0, what="first run")
        producer.send("payment.captured", {"id": 7}, dedupe_key="pay-7")  # the producer retried
        producer.send("payment.captured", {"id": 8}, dedupe_key="pay-8")
        await eventually(
            lambda: {"id": 8} in handled and pending_count(redis_client) == 0, what="the rest acked"
        )
    assert handled == [{"id": 7}] * runs + [{"id": 8}]
    assert consumer.stats.deduplicated == 2 - runs
    marker = redis_client.pttl(f"{STREAM}:dedupe:{GROUP}:pay-7")
    if dedupe is None:
        assert marker == -2  # no marker without dedupe
    else:
        assert 9 * 60_000 < marker <= 10 * 60_000
