"""``Producer.send_many``'s XADD packing: byte for byte what hiredis packs for the fields of
``encode_event``, for every shape of event (the fast prefix path and the general one)."""

from __future__ import annotations

from itertools import chain
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from redis.connection import Encoder

from streampipe_worker.connection import pack_command
from streampipe_worker.producer import Event, EventEncoder, _XaddPacker
from streampipe_worker.router import InvalidEventError, Router

ODD = b"\xff\xfeok".decode("utf-8", "surrogateescape")  # read with surrogateescape, sent back


class Order(BaseModel):
    order_id: int
    total: float = 0.0


router = Router()


@router.on("order.created", version=1)
def _created(event: Order) -> None:
    pass


@router.on("order.created", version=2)
def _created_v2(event: Order) -> None:
    pass


EVENTS = [
    Event(type="order.created", payload={"order_id": 1, "total": 1.5}),
    Event(type="order.created", payload={"order_id": "2"}),  # validation coerces it
    Event(type="order.created", payload=Order(order_id=3), version=2),
    Event(type="order.created", payload={"order_id": 4}, dedupe_key="pay-4"),
    Event(type="order.created", payload={"order_id": 5}, fields={"source": "test", "type": "ignored"}),
    Event(type="order.created", payload={"order_id": 6}, fields={"raw": ODD}),
    Event(type="order.created", payload={"order_id": 7, "total": 2.0}),  # the cached prefix again
    Event(type="order.created", payload={"order_id": 8}, dedupe_key="Zoë ✓"),
]
UNROUTED = [
    *EVENTS,
    Event(type="plain", payload={"n": float("nan"), "when": "x" * 300}),
    Event(type="model", payload=Order(order_id=9)),
]


@pytest.mark.parametrize(
    ("head", "with_router"),
    [
        (("XADD", "s", "*"), False),
        (("XADD", "s", "*"), True),
        (("XADD", "{orders}:events", "MAXLEN", "~", 1000, "*"), False),
        (("XADD", "s", "MAXLEN", 10, "*"), True),
        (("XADD", f"s-{ODD}", "*"), False),
    ],
    ids=["plain", "validated", "maxlen-approximate", "maxlen-exact", "stream-not-utf-8"],
)
def test_the_packed_xadds_are_the_commands_of_the_encoded_fields(
    head: tuple[Any, ...], with_router: bool
) -> None:
    events = EVENTS if with_router else UNROUTED
    encoder = EventEncoder(router if with_router else None)
    connection = SimpleNamespace(encoder=Encoder("utf-8", "surrogateescape", decode_responses=True))
    expected = b"".join(
        pack_command((*head, *chain.from_iterable(encoder(event).items())), connection.encoder)
        for event in events
    )
    assert _XaddPacker(head).packed(connection, events, [encoder.body(event) for event in events]) == expected


@pytest.mark.parametrize("with_router", [False, True], ids=["plain", "validated"])
def test_the_bodies_of_many_events_are_each_events_body(with_router: bool) -> None:
    events = [*EVENTS, Event(type="order.created", payload={"order_id": 10}, version=2), EVENTS[0]]
    encoder = EventEncoder(router if with_router else None)
    assert encoder.bodies(events) == [encoder.body(event) for event in events]


@pytest.mark.parametrize(
    "bad",
    [
        Event(type="order.created", payload={"order_id": "x"}),  # invalid payload
        Event(type="order.paid", payload={}),  # no route
        Event(type="order.created", payload={"order_id": 1, "note": object()}, version=9),  # no route
    ],
    ids=["invalid", "unrouted", "unrouted-version"],
)
def test_many_events_fail_on_the_first_bad_one_as_it_fails_alone(bad: Event) -> None:
    encoder = EventEncoder(router)
    with pytest.raises(InvalidEventError) as alone:
        encoder.body(bad)
    with pytest.raises(InvalidEventError) as among:
        encoder.bodies([*EVENTS, bad, *EVENTS])
    assert str(among.value) == str(alone.value)


def test_a_payload_json_cannot_encode_fails_as_it_fails_alone() -> None:
    bad = Event(type="anything", payload={"text": ODD})  # pydantic-core's JSON is strict UTF-8
    encoder = EventEncoder(None)
    with pytest.raises(PydanticSerializationError) as alone:
        encoder.body(bad)
    with pytest.raises(PydanticSerializationError) as among:
        encoder.bodies([*UNROUTED, bad])
    assert (type(among.value), str(among.value)) == (type(alone.value), str(alone.value))
