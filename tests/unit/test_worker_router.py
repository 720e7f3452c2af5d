"""Handler API, dead-letter envelope and retry policy: pure behaviour, no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.producer import Event, encode_event
from streampipe_worker.retry import RetryPolicy
from streampipe_worker.router import (
    Entry,
    HandlerLoadError,
    InvalidEventError,
    Router,
    batch,
    classify_handler,
    load_handler,
)


class OrderCreated(BaseModel):
    order_id: int
    total: float


def entry(**fields: str) -> Entry:
    return Entry("1-0", dict(fields), 1, "s", "g")


def test_router_dispatches_typed_events_by_type_and_version() -> None:
    router = Router()
    got: list[object] = []

    @router.on("order.created", version=1)
    def v1(event: OrderCreated) -> None:
        got.append(("v1", event.order_id))

    @router.on("order.created", version=2, model=OrderCreated)
    def v2(event: OrderCreated, raw: Entry) -> None:
        got.append(("v2", event.order_id, raw.id))

    router(entry(type="order.created", version="1", payload='{"order_id": 3, "total": 1}'))
    router(entry(type="order.created", version="2", payload='{"order_id": 4, "total": 1}'))
    router(entry(type="order.created", payload='{"order_id": 5, "total": 1}'))  # version defaults to 1
    assert got == [("v1", 3), ("v2", 4, "1-0"), ("v1", 5)]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload": "{}"}, "no 'type' field"),
        ({"type": "order.created", "version": "x", "payload": "{}"}, "not an integer"),
        ({"type": "order.paid", "payload": "{}"}, "no route for type 'order.paid'"),
        ({"type": "order.created"}, "no 'payload' field"),
        ({"type": "order.created", "payload": "{not json"}, "does not match OrderCreated"),
        ({"type": "order.created", "payload": '{"order_id": 1}'}, "total: Field required"),
    ],
)
def test_undecodable_entries_are_permanent_failures(fields: dict[str, str], reason: str) -> None:
    router = Router()

    @router.on("order.created", model=OrderCreated)
    def handle(event: OrderCreated) -> None:
        raise AssertionError("must not be called")

    with pytest.raises(InvalidEventError, match=reason):
        router(entry(**fields))


def test_duplicate_routes_and_unannotated_handlers_are_refused() -> None:
    router = Router()
    router.on("a")(lambda_handler)
    with pytest.raises(ValueError, match="already registered"):
        router.on("a")(lambda_handler)

    def untyped(event) -> None:  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(TypeError, match="annotate the first parameter"):
        router.on("b")(untyped)


def lambda_handler(event: OrderCreated) -> None:
    return None


def test_handler_kinds_are_classified() -> None:
    async def async_entry(e: Entry) -> None:
        return None

    @batch
    def sync_batch(entries: list[Entry]) -> None:
        return None

    router = Router()
    router.on("a")(lambda_handler)
    assert not classify_handler(lambda e: None).is_async
    assert classify_handler(async_entry).is_async
    assert classify_handler(sync_batch).is_batch
    assert not classify_handler(router).is_async


def test_load_handler_errors_say_what_to_fix() -> None:
    with pytest.raises(HandlerLoadError, match="cannot import 'no_such_module'"):
        load_handler("no_such_module:handle")
    with pytest.raises(HandlerLoadError, match="has no attribute 'nope'"):
        load_handler("json:nope")
    with pytest.raises(HandlerLoadError, match="not a function"):
        load_handler("json:__name__")
    assert load_handler("json:dumps").target is json.dumps


def test_producer_validates_with_the_routers_models() -> None:
    router = Router()
    router.on("order.created")(lambda_handler)
    fields = encode_event(Event(type="order.created", payload={"order_id": "7", "total": 2}), router)
    assert fields == {"type": "order.created", "version": "1", "payload": '{"order_id":7,"total":2.0}'}
    with pytest.raises(InvalidEventError):
        encode_event(Event(type="order.created", payload={"order_id": "x"}), router)
    with pytest.raises(InvalidEventError, match="no route"):
        encode_event(Event(type="order.paid", payload={}), router)


def test_producer_writes_plain_payloads_as_compact_json_as_documented() -> None:
    # docs/handlers.md: compact JSON, ISO 8601 datetimes, str() for what JSON has no type for,
    # NaN and infinities as Python's json writes them.
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    payload = {
        "order_id": 1,
        "total": 9.5,
        "at": datetime(2026, 12, 3, 10, 0, tzinfo=UTC),
        "ref": Opaque(),
        "inf": float("inf"),
        "name": "café",
    }
    fields = encode_event(Event(type="order.created", payload=payload))
    assert fields["payload"] == (
        '{"order_id":1,"total":9.5,"at":"2026-12-03T10:00:00Z","ref":"opaque","inf":Infinity,"name":"café"}'
    )


field_names = st.sampled_from(
    [
        "type",
        "payload",
        "error",
        "group",
        "original_id",
        "original.x",
        "original.error",
        "n",
        "a.b",
        "deliveries",
    ]
)


@given(st.dictionaries(field_names, st.text(max_size=5), max_size=8))
def test_envelope_keeps_every_original_field_exactly(original: dict[str, str]) -> None:
    envelope = DeadLetterEnvelope.for_failure(
        entry_id="1-1",
        fields=original,
        stream="s",
        group="g",
        consumer="c",
        deliveries=3,
        error=ValueError("boom"),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    fields = envelope.to_fields()
    assert fields["error"] == "boom"
    assert fields["exception"] == "ValueError"
    assert fields["original_id"] == "1-1"
    back = DeadLetterEnvelope.from_fields(fields)
    assert back.original == original
    assert list(back.original) == list(original)


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(
        max_deliveries=10,
        backoff_initial=timedelta(seconds=1),
        backoff_multiplier=2,
        backoff_max=timedelta(seconds=5),
        claim_idle=timedelta(seconds=3),
    )
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert policy.backoff(10_000) == 5
    assert policy.exhausted(10)
    assert not policy.exhausted(9)
    # A wait that fits into claimIdle is written into Redis as idle time ...
    assert policy.hand_back_idle(1.0) == 2000
    assert policy.hand_back_idle(0) == 3000
    # ... a longer one stays under the worker's lease.
    assert policy.hand_back_idle(4.0) is None
