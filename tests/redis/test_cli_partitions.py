"""`streampipe produce|status|dlq --partitions N` on real servers: routing by key, a row per
partition with the totals, and dead letters listed, replayed into their own partition and purged per
partition. The dead letters are made by a real partitioned worker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app
from streampipe_worker.partitioned import PartitionedConsumer
from streampipe_worker.partitions import PartitionLayout, partition_of
from streampipe_worker.router import Entry, PermanentError, classify_handler
from tests.redis.conftest import GROUP, worker_settings_for
from tests.support.polling import eventually_async

pytestmark = pytest.mark.timeout(90)

BASE = "shop"
LAYOUT = PartitionLayout(BASE, 4, key="customer")
runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli(*arguments: str, url: str, partitions: int = 4) -> tuple[int, str, str]:
    done = runner.invoke(
        app, [*arguments, "--redis-url", url, "--stream", BASE, "--partitions", str(partitions)]
    )
    return done.exit_code, done.stdout, done.stderr


def events(count: int) -> str:
    return "\n".join(
        json.dumps(
            {"type": "order.created", "payload": {"n": n}, "fields": {"customer": f"c-{n % 7}", "n": str(n)}}
        )
        for n in range(count)
    )


def test_produce_routes_by_the_key_field(redis_url: str, redis_client: redis.Redis) -> None:
    done = runner.invoke(
        app,
        [
            "produce",
            "--redis-url",
            redis_url,
            "--stream",
            BASE,
            "--partitions",
            "4",
            "--key",
            "customer",
            "-o",
            "json",
        ],
        input=events(70),
    )
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["stream"], result["count"]) == (BASE, 70)
    for index, stream in enumerate(LAYOUT.streams):
        customers = {fields["customer"] for _, fields in redis_client.xrange(stream)}
        assert customers == {f"c-{k}" for k in range(7) if partition_of(f"c-{k}", 4) == index}


def test_produce_refuses_an_event_without_the_key_and_sends_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    lines = events(3) + "\n" + json.dumps({"type": "order.created", "payload": {}})
    done = runner.invoke(
        app,
        ["produce", "--redis-url", redis_url, "--stream", BASE, "--partitions", "4", "--key", "customer"],
        input=lines,
    )
    assert done.exit_code == 2
    assert redis_client.exists(*LAYOUT.streams) == 0
    done = runner.invoke(
        app, ["produce", "--redis-url", redis_url, "--stream", BASE, "--key", "customer"], input=lines
    )
    assert done.exit_code == 2  # --key without --partitions


async def _worker_settles(redis_url: str, count: int) -> None:
    """Run a partitioned worker (customer c-3 is poison) until ``count`` entries are settled."""

    def handle(entry: Entry) -> None:
        if entry.fields["customer"] == "c-3":
            raise PermanentError("customer 3 is blocked")

    settings = worker_settings_for(redis_url, stream=BASE, partitions=4, create_group="0")
    fleet = PartitionedConsumer(settings, classify_handler(handle))
    task = asyncio.create_task(fleet.run())
    try:
        await eventually_async(
            lambda: sum(c.stats.processed + c.stats.dead_lettered for c in fleet.consumers) == count,
            what=f"{count} settled",
        )
    finally:
        fleet.request_stop()
        await asyncio.wait_for(task, timeout=30)


def test_status_and_dead_letters_per_partition(redis_url: str, redis_client: redis.Redis) -> None:
    # The CLI runs its own event loop: the test is synchronous, the worker runs in asyncio.run.
    code, _, err = cli("produce", "--key", "customer", url=redis_url)
    assert code == 2, err  # nothing on stdin: no events
    done = runner.invoke(
        app,
        ["produce", "--redis-url", redis_url, "--stream", BASE, "--partitions", "4", "--key", "customer"],
        input=events(70),
    )
    assert done.exit_code == 0, done.stderr
    asyncio.run(_worker_settles(redis_url, 70))
    poisoned = partition_of("c-3", 4)

    code, out, err = cli("status", "-o", "json", url=redis_url)
    assert code == 0, (out, err)
    status = json.loads(out)
    assert [p["status"]["stream"]["key"] for p in status["partitions"]] == LAYOUT.streams
    assert [p["slot"] for p in status["partitions"]] == [LAYOUT.slot(i) for i in range(4)]
    assert (status["length"], status["dead_letters"]) == (70, 10)
    assert status["groups"] == [{"name": GROUP, "lag": 0, "pending": 0, "backlog": 0}]
    code, out, _ = cli("status", url=redis_url)
    assert code == 0

    code, out, err = cli("dlq", "list", "-o", "json", url=redis_url)
    assert code == 0, err
    pages = json.loads(out)
    assert [page["length"] for page in pages] == [10 if i == poisoned else 0 for i in range(4)]
    code, out, err = cli("dlq", "replay", "--dry-run", "-o", "json", url=redis_url)
    assert [result["matched"] for result in json.loads(out)] == [10 if i == poisoned else 0 for i in range(4)]

    # Replayed into its own partition (the worker is stopped: the entries wait there).
    before = redis_client.xlen(LAYOUT.stream(poisoned))
    code, out, err = cli("dlq", "replay", "--partition", str(poisoned), "-o", "json", url=redis_url)
    assert code == 0, err
    [result] = json.loads(out)
    assert result["replayed"] == 10
    assert redis_client.xlen(LAYOUT.stream(poisoned)) == before + 10
    assert redis_client.xlen(LAYOUT.dead_letter(poisoned)) == 0
    replayed = redis_client.xrange(LAYOUT.stream(poisoned))[-10:]
    assert {fields["customer"] for _, fields in replayed} == {"c-3"}

    code, _, err = cli("dlq", "show", "1-1", url=redis_url)
    assert code == 2  # which partition?
    code, _, err = cli("dlq", "list", "--partition", "4", url=redis_url)
    assert code == 2  # partitions are 0..3


def test_partition_options_are_checked(redis_url: str) -> None:
    done = runner.invoke(app, ["status", "--redis-url", redis_url, "--stream", "{shop}", "--partitions", "4"])
    assert done.exit_code == 2
    done = runner.invoke(app, ["dlq", "list", "--redis-url", redis_url, "--stream", BASE, "--partition", "1"])
    assert done.exit_code == 2


def test_a_partitioned_pipeline_file_names_the_partitions_and_the_key(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    document = yaml.safe_load((EXAMPLES / "partitioned.yaml").read_text())
    document["spec"] |= {"stream": BASE, "partitions": {"count": 4, "key": "customer"}}
    file = tmp_path / "pipeline.yaml"
    file.write_text(yaml.safe_dump(document))
    target = ["-f", str(file), "--redis-url", redis_url]
    # The example is for a cluster; this server is not one: a clear error, not a traceback.
    done = runner.invoke(app, ["status", *target])
    assert done.exit_code == 1
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert "cannot be used as a cluster" in done.stderr
    document["spec"]["redis"] = {"url": redis_url}
    file.write_text(yaml.safe_dump(document))

    # produce routes by the file's key field without --key.
    done = runner.invoke(app, ["produce", *target, "-o", "json"], input=events(28))
    assert done.exit_code == 0, done.stderr
    for index, stream in enumerate(LAYOUT.streams):
        customers = {fields["customer"] for _, fields in redis_client.xrange(stream)}
        assert customers == {f"c-{k}" for k in range(7) if partition_of(f"c-{k}", 4) == index}

    done = runner.invoke(app, ["status", *target, "-o", "json"])
    assert done.exit_code == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["groups"] == []  # nothing has run the pipeline: no group yet
    assert [p["status"]["stream"]["key"] for p in status["partitions"]] == LAYOUT.streams
    assert status["length"] == 28
    done = runner.invoke(app, ["dlq", "list", *target, "-o", "json"])
    assert done.exit_code == 0, done.stderr
    assert [page["length"] for page in json.loads(done.stdout)] == [0, 0, 0, 0]

    done = runner.invoke(app, ["status", *target, "--partitions", "8"])
    assert done.exit_code == 2  # contradicts the file's count
    done = runner.invoke(app, ["dlq", "list", *target, "--dead-letter", "x"])
    assert done.exit_code == 2  # each partition has its own
