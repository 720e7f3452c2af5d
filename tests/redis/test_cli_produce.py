"""`streampipe produce` against real servers: arguments, JSON lines on stdin, all-or-nothing parsing."""

from __future__ import annotations

import json
import socket

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app
from streampipe_worker.router import Entry, Router

pytestmark = pytest.mark.timeout(60)

STREAM = "{cli}:events"
runner = CliRunner()


def produce(url: str, *arguments: str, stdin: str | None = None) -> tuple[int, str, str]:
    done = runner.invoke(app, ["produce", "--redis-url", url, "--stream", STREAM, *arguments], input=stdin)
    return done.exit_code, done.stdout, done.stderr


def test_events_as_arguments_land_as_the_routers_envelope(redis_url: str, redis_client: redis.Redis) -> None:
    code, out, _ = produce(
        redis_url,
        '{"type": "order.created", "payload": {"order_id": 7, "total": 9.5}}',
        '{"type": "order.created", "version": 2, "payload": {"order_id": 8}, "dedupe_key": "o-8"}',
    )
    assert code == 0
    ids = out.split()
    assert [entry_id for entry_id, _ in redis_client.xrange(STREAM)] == ids
    first, second = (fields for _, fields in redis_client.xrange(STREAM))
    assert {**first, "payload": json.loads(first["payload"])} == {
        "type": "order.created",
        "version": "1",
        "payload": {"order_id": 7, "total": 9.5},
    }
    assert second["version"] == "2"
    assert second["dedupe_key"] == "o-8"

    # A consumer's Router decodes it into its typed model.
    entry = Entry(ids[0], first, deliveries=1, stream=STREAM, group="billing")
    route, event = order_router().decode(entry)
    assert (route.event_type, event) == ("order.created", OrderCreated(order_id=7, total=9.5))


class OrderCreated(BaseModel):
    order_id: int
    total: float


def order_router() -> Router:
    router = Router()

    @router.on("order.created", version=1)
    def created(event: OrderCreated) -> None: ...

    return router


def test_json_lines_on_stdin_with_a_type(redis_url: str, redis_client: redis.Redis) -> None:
    lines = "\n".join(json.dumps({"order_id": i}) for i in range(2500)) + "\n\n"
    code, out, _ = produce(redis_url, "--type", "order.created", "-o", "json", stdin=lines)
    assert code == 0
    result = json.loads(out)
    assert (result["count"], len(result["ids"])) == (2500, 2500)
    assert redis_client.xlen(STREAM) == 2500
    last = redis_client.xrevrange(STREAM, count=1)[0][1]
    assert json.loads(last["payload"]) == {"order_id": 2499}


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        ((), '{"type": "a", "payload": 1}\nnot json\n', "stdin line 2: not JSON"),
        ((), '{"payload": 1}\n', "stdin line 1: type: Field required"),
        ((), "[1, 2]\n", "expected an event object"),
        (('{"type": "a"}',), None, "argument 1: payload: Field required"),
        ((), "\n", "no events given"),
    ],
)
def test_a_bad_event_sends_nothing_and_exits_2(
    redis_url: str, redis_client: redis.Redis, arguments: tuple[str, ...], stdin: str | None, message: str
) -> None:
    code, _, err = produce(redis_url, *arguments, stdin=stdin)
    assert code == 2
    assert message in err
    assert redis_client.exists(STREAM) == 0


def test_an_unreachable_server_is_exit_code_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = produce(f"redis://127.0.0.1:{port}/0", '{"type": "a", "payload": 1}')
    assert code == 1
    assert "cannot reach Redis" in err
