"""Stream entry IDs (``streampipe_worker.entry_ids``): parsing, order, neighbours, wire form."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from streampipe_worker.entry_ids import ZERO, EntryId

U64_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000000-5", EntryId(1700000000000, 5)),
        ("0-0", ZERO),
        ("5", EntryId(5, 0)),  # a bare number means <ms>-0, as the server reads it
        (b"12-3", EntryId(12, 3)),  # redis-py without decode_responses hands out bytes
        (" 7-1 ", EntryId(7, 1)),
        (f"{U64_MAX}-{U64_MAX}", EntryId(U64_MAX, U64_MAX)),
    ],
)
def test_parse(text: str | bytes, expected: EntryId) -> None:
    assert EntryId.parse(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1-x", "-1", "1-2-3", f"{2**64}-0"])
def test_parse_refuses_what_is_not_an_id(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a stream entry ID"):
        EntryId.parse(text)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("9-0", "10-0"),  # string order would get this one wrong
        ("5-9", "5-10"),
        ("5-99", "6-0"),
        ("0-0", "0-1"),
    ],
)
def test_orders_as_the_server_does(lower: str, higher: str) -> None:
    assert EntryId.parse(lower) < EntryId.parse(higher)
    assert max(EntryId.parse(higher), EntryId.parse(lower)) == EntryId.parse(higher)


@pytest.mark.parametrize(
    ("entry_id", "successor", "predecessor"),
    [
        (EntryId(5, 3), EntryId(5, 4), EntryId(5, 2)),
        (EntryId(5, U64_MAX), EntryId(6, 0), EntryId(5, U64_MAX - 1)),
        (EntryId(6, 0), EntryId(6, 1), EntryId(5, U64_MAX)),
    ],
)
def test_neighbours(entry_id: EntryId, successor: EntryId, predecessor: EntryId) -> None:
    assert entry_id.successor() == successor
    assert entry_id.predecessor() == predecessor


def test_zero_has_no_predecessor() -> None:
    with pytest.raises(ValueError, match="smallest"):
        ZERO.predecessor()


def test_time_and_wire_form() -> None:
    assert EntryId.at_time(1700000000.5) == EntryId(1700000000500, 0)
    assert EntryId(1700000000500, 2).unix_seconds == 1700000000.5
    assert str(EntryId(12, 3)) == "12-3"


def test_in_a_model_it_reads_and_writes_the_wire_form() -> None:
    class Position(BaseModel):
        last: EntryId

    position = Position.model_validate({"last": "12-3"})
    assert position.last == EntryId(12, 3)
    assert position.model_dump(mode="json") == {"last": "12-3"}
