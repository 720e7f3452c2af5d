"""`streampipe peek` on real servers: newest and oldest entries, a group's pending list, payloads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app

pytestmark = pytest.mark.timeout(60)

STREAM = "{peek}:events"
runner = CliRunner()


def peek(redis_url: str, *args: str) -> tuple[int, Any]:
    done = runner.invoke(app, ["peek", "--redis-url", redis_url, "--stream", STREAM, "-o", "json", *args])
    return done.exit_code, (json.loads(done.stdout) if done.exit_code == 0 else done.output)


def test_newest_and_oldest_entries_with_parsed_payloads(redis_url: str, redis_client: redis.Redis) -> None:
    ids = [redis_client.xadd(STREAM, {"type": "order", "payload": json.dumps({"n": i})}) for i in range(12)]
    raw = redis_client.xadd(STREAM, {"type": "raw", "payload": "not json {"})

    code, newest = peek(redis_url, "-n", "3")
    assert code == 0
    assert (newest["view"], newest["length"]) == ("newest", 13)
    assert [e["id"] for e in newest["entries"]] == [raw, ids[11], ids[10]]
    assert newest["entries"][0]["payload"] is None  # not JSON: shown raw in fields
    assert newest["entries"][0]["fields"] == {"type": "raw", "payload": "not json {"}
    assert newest["entries"][1]["payload"] == {"n": 11}
    assert newest["entries"][1]["age_seconds"] >= 0

    code, oldest = peek(redis_url, "--oldest", "-n", "2")
    assert code == 0
    assert [e["id"] for e in oldest["entries"]] == ids[:2]
    assert [e["payload"] for e in oldest["entries"]] == [{"n": 0}, {"n": 1}]

    text = runner.invoke(app, ["peek", "--redis-url", redis_url, "--stream", STREAM, "-n", "2"])
    assert text.exit_code == 0


def test_a_groups_pending_list_with_consumers_and_deliveries(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = [redis_client.xadd(STREAM, {"payload": json.dumps({"n": i})}) for i in range(5)]
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xreadgroup("billing", "pod-a", {STREAM: ">"}, count=3)
    redis_client.xclaim(STREAM, "billing", "pod-b", 0, [ids[0]])  # a second delivery, to pod-b
    redis_client.xack(STREAM, "billing", ids[1])
    redis_client.xdel(STREAM, ids[2])  # deleted while pending

    code, report = peek(redis_url, "--pending", "billing")

    assert code == 0
    assert (report["view"], report["group"], report["pending_total"]) == ("pending", "billing", 2)
    first, second = report["entries"]
    assert (first["id"], first["pending"]["consumer"], first["pending"]["deliveries"]) == (ids[0], "pod-b", 2)
    assert first["payload"] == {"n": 0}
    assert (second["id"], second["pending"]["consumer"], second["fields"]) == (ids[2], "pod-a", None)

    text = runner.invoke(app, ["peek", "--redis-url", redis_url, "--stream", STREAM, "--pending", "billing"])
    assert text.exit_code == 0


@pytest.mark.parametrize(
    ("setup", "args"),
    [
        pytest.param(False, [], id="missing-stream"),
        pytest.param(True, ["--pending", "nobody"], id="missing-group"),
    ],
)
def test_missing_stream_or_group_exits_1(
    redis_url: str, redis_client: redis.Redis, setup: bool, args: list[str]
) -> None:
    if setup:
        redis_client.xadd(STREAM, {"n": "1"})
        redis_client.xgroup_create(STREAM, "billing", id="0")
    code, _ = peek(redis_url, *args)
    assert code == 1
