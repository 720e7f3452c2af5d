"""The layout record's format (``streampipe_worker.epochs``): what ``{B}:layout`` holds, read back as
written, and a record that does not fit its own count refused with the shape it should have."""

from __future__ import annotations

import json

import pytest

from streampipe_worker.epochs import LayoutRecord, Switch
from streampipe_worker.partitions import layout_key


def test_the_record_is_the_json_the_docs_describe() -> None:
    record = LayoutRecord(8, (Switch(2, ("5-0", "0-0")), Switch(4, ("9-1", "7-0", "0-0", "8-3"))))
    assert json.loads(record.to_json()) == {
        "count": 8,
        "switches": [
            {"from": 2, "cutoffs": ["5-0", "0-0"]},
            {"from": 4, "cutoffs": ["9-1", "7-0", "0-0", "8-3"]},
        ],
    }
    assert LayoutRecord.from_json(record.to_json()) == record
    assert LayoutRecord.from_json('{"count": 3}') == LayoutRecord(3)
    assert layout_key("shop.orders") == "{shop.orders}:layout"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "is not {'count': N"),
        ('{"switches": []}', "is not {'count': N"),
        ('{"count": 4, "switches": [{"from": 2, "cutoffs": ["x"]}]}', "is not {'count': N"),
        ('{"count": 4, "switches": [{"from": 2, "cutoffs": ["1-0"]}]}', "switch from 2 does not fit count 4"),
        ('{"count": 4, "switches": [{"from": 4, "cutoffs": ["1-0", "1-0", "1-0", "1-0"]}]}', "does not fit"),
    ],
)
def test_a_record_that_does_not_fit_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="the layout record") as refused:
        LayoutRecord.from_json(text)
    assert problem in str(refused.value)
