"""`streampipe dlq list|show|replay|purge` against real servers, with dead letters a real worker made."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import Entry, PermanentError
from streampipe_worker.settings import WorkerSettings
from tests.redis.conftest import STREAM, consumer_for, pending_count, running
from tests.support.polling import eventually_async as eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_group")]

DLQ = f"{STREAM}:dlq"
STREAMPIPE = str(Path(sys.executable).parent / "streampipe")
runner = CliRunner()


class Shop:
    """A handler that refuses orders while the 'payments' dependency is down, and records what it did."""

    def __init__(self) -> None:
        self.payments_down = True
        self.handled: list[tuple[str, dict[str, str]]] = []

    def __call__(self, entry: Entry) -> None:
        if self.payments_down and entry.fields["type"] == "order.paid":
            raise PermanentError("payments are down")
        self.handled.append((entry.id, dict(entry.fields)))


def cli(*arguments: str, url: str) -> tuple[int, str, str]:
    done = runner.invoke(app, [*arguments, "--redis-url", url, "--stream", STREAM])
    return done.exit_code, done.stdout, done.stderr


async def fill_dead_letters(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings], shop: Shop
) -> list[str]:
    """6 paid orders dead-lettered by a real consumer, 4 created orders processed; the paid IDs."""
    producer = Producer(redis_client, STREAM)
    paid = producer.send_many(Event(type="order.paid", payload={"order": i}) for i in range(6))
    producer.send_many(Event(type="order.created", payload={"order": i}) for i in range(4))
    async with running(consumer_for(make_settings(), shop)):
        await eventually(lambda: redis_client.xlen(DLQ) == 6 and pending_count(redis_client) == 0)
    return paid


async def test_list_and_show_dead_letters(
    redis_url: str, redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    paid = await fill_dead_letters(redis_client, make_settings, Shop())

    code, out, _ = cli("dlq", "list", "--limit", "4", "-o", "json", url=redis_url)
    assert code == 0
    page = json.loads(out)
    assert (page["length"], page["matched"], len(page["entries"])) == (6, 6, 4)
    first = page["entries"][0]
    assert first["envelope"]["original_id"] == paid[0]
    assert first["envelope"]["exception"].endswith("PermanentError")

    code, out, _ = cli("dlq", "list", "--filter", "type=order.created", "-o", "json", url=redis_url)
    assert (code, json.loads(out)["matched"]) == (0, 0)

    code, out, _ = cli("dlq", "list", url=redis_url)
    assert code == 0
    assert "payments are down" in out

    code, out, _ = cli("dlq", "show", first["id"], url=redis_url)
    assert code == 0
    assert paid[0] in out
    assert '"order": 0' in out

    code, _, err = cli("dlq", "show", "1-1", url=redis_url)
    assert code == 1
    assert "no entry 1-1" in err
    code, _, err = cli("dlq", "show", "not-an-id", url=redis_url)
    assert code == 2
    assert "not a stream entry ID" in err


async def test_replay_round_trip_each_entry_processed_once(
    redis_url: str, redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    shop = Shop()
    paid = await fill_dead_letters(redis_client, make_settings, shop)
    shop.payments_down = False  # the cause is fixed: now replay

    code, out, _ = cli("dlq", "replay", "--dry-run", "-o", "json", url=redis_url)
    assert code == 0
    assert json.loads(out)["dry_run"] is True
    assert redis_client.xlen(DLQ) == 6  # a dry run writes nothing

    code, out, _ = cli("dlq", "replay", "--limit", "2", "--rate", "1000", url=redis_url)
    assert code == 0
    assert "replayed 2 of 6 matching dead letters (--limit 2)" in out

    # The rest by two replays at once (two processes): each dead letter goes back exactly once.
    command = [STREAMPIPE, "dlq", "replay", "--redis-url", redis_url, "--stream", STREAM, "-o", "json"]
    replays = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE) for _ in range(2)
    ]
    outcomes = [json.loads((await replay.communicate())[0]) for replay in replays]
    assert [replay.returncode for replay in replays] == [0, 0]
    assert sum(outcome["replayed"] for outcome in outcomes) == 4
    assert redis_client.xlen(DLQ) == 0

    code, out, _ = cli("dlq", "replay", url=redis_url)
    assert (code, out.strip()) == (0, "replayed 0 of 0 matching dead letters")

    async with running(consumer_for(make_settings(), shop)):
        await eventually(lambda: pending_count(redis_client) == 0 and len(shop.handled) == 10)
    replayed = Counter(fields["replayed_from"] for _, fields in shop.handled if "replayed_from" in fields)
    assert replayed == Counter(paid)  # every dead letter processed, none twice
    assert redis_client.xlen(DLQ) == 0


async def test_replay_filter_takes_only_matching_entries(
    redis_url: str, redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    await fill_dead_letters(redis_client, make_settings, Shop())
    code, out, _ = cli("dlq", "replay", "--filter", "type=order.created", url=redis_url)
    assert code == 0
    assert "replayed 0 of 0" in out
    code, out, _ = cli(
        "dlq", "replay", "--filter", "exception=PermanentError", "--filter", "error=down", url=redis_url
    )
    assert code == 0
    assert "replayed 6 of 6" in out


def test_bad_filters_are_refused_with_exit_code_2(redis_url: str) -> None:
    for bad in ("type", "colour=red", "type="):
        code, _, err = cli("dlq", "list", "--filter", bad, url=redis_url)
        assert code == 2
        assert "expected KEY=VALUE" in err


async def test_purge_asks_first_and_deletes_only_what_matched(
    redis_url: str, redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    await fill_dead_letters(redis_client, make_settings, Shop())

    code, _, err = cli("dlq", "purge", url=redis_url)  # no terminal to ask on: refused
    assert code == 2
    assert "pass --yes" in err
    assert redis_client.xlen(DLQ) == 6

    code, prompt = purge_on_a_terminal(redis_url, answer="n")
    assert "Delete all 6 dead letters" in prompt
    assert (code, redis_client.xlen(DLQ)) == (1, 6)

    code, out, _ = cli("dlq", "purge", "--yes", "--filter", "type=order.created", url=redis_url)
    assert (code, redis_client.xlen(DLQ)) == (0, 6)
    assert "deleted 0" in out

    code, prompt = purge_on_a_terminal(redis_url, answer="y", extra=["--filter", "type=order.paid"])
    assert "Delete the matching 6 dead letters" in prompt
    assert (code, redis_client.xlen(DLQ)) == (0, 0)

    redis_client.xadd(DLQ, {"original_id": "1-1", "original_stream": STREAM, "error": "boom"})
    code, out, _ = cli("dlq", "purge", "--yes", "-o", "json", url=redis_url)
    assert code == 0
    assert json.loads(out) == {"dead_letter": DLQ, "matched": 1, "deleted": 1}
    assert redis_client.xlen(DLQ) == 0


def purge_on_a_terminal(url: str, answer: str, extra: list[str] | None = None) -> tuple[int, str]:
    """Run `dlq purge` with a pseudo-terminal as stdin (so it asks), answer, return (code, what it said)."""
    controller, terminal = pty.openpty()
    command = [STREAMPIPE, "dlq", "purge", "--redis-url", url, "--stream", STREAM, *(extra or [])]
    with subprocess.Popen(command, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        os.close(terminal)
        os.write(controller, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=30)
    os.close(controller)
    return proc.returncode, (out + err).decode()
