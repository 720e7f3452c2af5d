"""Entry-ID arithmetic: parsing, ordering like the server, neighbours, wire form in models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streampipe_operator.plan.frozen import Frozen
from streampipe_worker.entry_ids import ZERO, EntryId

U64_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1700000000000-3", EntryId(1700000000000, 3), id="full"),
        pytest.param("5", EntryId(5, 0), id="bare-ms"),
        pytest.param(b"7-1", EntryId(7, 1), id="bytes"),
        pytest.param("0-0", ZERO, id="zero"),
        pytest.param(f"{U64_MAX}-{U64_MAX}", EntryId(U64_MAX, U64_MAX), id="max"),
    ],
)
def test_parse(text: str | bytes, expected: EntryId) -> None:
    assert EntryId.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("$", id="dollar"),
        pytest.param("abc-1", id="letters"),
        pytest.param("-1", id="negative"),
        pytest.param(f"{2**64}-0", id="too-big"),
        pytest.param("", id="empty"),
        pytest.param("1-x", id="letters-in-sequence"),
        pytest.param("1-2-3", id="three-parts"),
    ],
)
def test_parse_refuses_non_ids(text: str) -> None:
    with pytest.raises(ValueError, match="entry ID"):
        EntryId.parse(text)


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        pytest.param("9-0", "10-0", id="numeric-not-lexical-ms"),
        pytest.param("5-9", "5-10", id="numeric-not-lexical-seq"),
        pytest.param("5-99", "6-0", id="ms-first"),
        pytest.param("0-0", "0-1", id="zero"),
    ],
)
def test_order_is_the_servers(smaller: str, larger: str) -> None:
    assert EntryId.parse(smaller) < EntryId.parse(larger)


@pytest.mark.parametrize(
    ("entry", "successor"),
    [
        pytest.param(EntryId(5, 3), EntryId(5, 4), id="seq"),
        pytest.param(EntryId(5, U64_MAX), EntryId(6, 0), id="seq-overflow"),
        pytest.param(ZERO, EntryId(0, 1), id="zero"),
    ],
)
def test_successor_and_predecessor_are_inverse(entry: EntryId, successor: EntryId) -> None:
    assert entry.successor() == successor
    assert successor.predecessor() == entry
    assert entry < successor


def test_zero_has_no_predecessor() -> None:
    with pytest.raises(ValueError, match="smallest"):
        ZERO.predecessor()


def test_at_time_is_the_smallest_id_of_that_millisecond() -> None:
    assert EntryId.at_time(1700000000.1234) == EntryId(1700000000123, 0)
    assert EntryId.at_time(-5) == ZERO
    assert EntryId(1700000000123, 9).unix_seconds == pytest.approx(1700000000.123)


class _Holder(Frozen):
    position: EntryId
    maybe: EntryId | None = None


def test_models_read_and_write_the_wire_form() -> None:
    holder = _Holder.model_validate({"position": "12-3", "maybe": b"4-0"})
    assert holder.position == EntryId(12, 3)
    assert holder.model_dump(mode="json") == {"position": "12-3", "maybe": "4-0"}
    assert _Holder.model_validate_json(holder.model_dump_json()) == holder
    assert str(EntryId(12, 3)) == "12-3"


def test_models_refuse_bad_ids() -> None:
    with pytest.raises(ValidationError, match="entry ID"):
        _Holder.model_validate({"position": "later"})
    with pytest.raises(ValidationError):
        _Holder.model_validate({"position": 12})
