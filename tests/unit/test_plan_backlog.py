"""When the server's lag stands, when the stream tells the exact value, when entries must be counted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streampipe_operator.plan.backlog import Backlog, counted_lag, lag_from_server
from streampipe_operator.plan.observed import Lag, StreamState
from streampipe_worker.entry_ids import EntryId


def stream(
    length: int = 10,
    first: str | None = "100-0",
    last: str | None = "109-0",
    added: int | None = 10,
    deleted: str | None = "0-0",
) -> StreamState:
    return StreamState(
        length=length,
        first_entry_id=EntryId.parse(first) if first else None,
        last_entry_id=EntryId.parse(last) if last else None,
        last_generated_id=EntryId.parse(last or "0-0"),
        entries_added=added,
        max_deleted_entry_id=EntryId.parse(deleted) if deleted else None,
    )


@pytest.mark.parametrize(
    ("reported", "last_delivered", "entries_read", "observed", "expected"),
    [
        pytest.param(7, "102-0", 3, stream(), Lag(value=7, source="server"), id="consistent-report"),
        pytest.param(None, "109-0", 10, stream(), Lag(value=0, source="derived"), id="nil-at-end-is-zero"),
        pytest.param(0, "109-0", 10, stream(), Lag(value=0, source="server"), id="zero-at-end"),
        pytest.param(None, "0-0", None, stream(), Lag(value=10, source="derived"), id="nil-from-start"),
        pytest.param(
            None,
            "50-0",
            2,
            stream(length=5, first="105-0", added=10),
            Lag(value=5, source="derived"),
            id="behind-a-trim-every-entry-unread",
        ),
        pytest.param(
            8,
            "50-0",
            2,
            stream(length=5, first="105-0", added=10),
            Lag(value=5, source="derived"),
            id="behind-a-trim-report-counts-trimmed-entries",
        ),
        pytest.param(
            3,
            "105-0",
            None,
            stream(length=0, first=None, last=None),
            Lag(value=0, source="derived"),
            id="empty-stream",
        ),
        pytest.param(None, "102-0", None, stream(deleted="105-0"), None, id="nil-after-xdel-count-it"),
        pytest.param(12, "102-0", 3, stream(), None, id="report-larger-than-stream"),
        pytest.param(
            7,
            "105-0",
            3,
            stream(length=5, first="105-0", added=10),
            None,
            id="redis7-counter-fell-behind-trim",
        ),
        pytest.param(
            4,
            "105-0",
            6,
            stream(length=5, first="105-0", added=10),
            Lag(value=4, source="server"),
            id="counter-covers-trimmed-entries",
        ),
        pytest.param(
            4,
            "105-0",
            2,
            stream(length=5, first="105-0", added=10, deleted="107-0"),
            Lag(value=4, source="server"),
            id="xdel-ahead-makes-counter-check-moot",
        ),
    ],
)
def test_lag_from_server(
    reported: int | None,
    last_delivered: str,
    entries_read: int | None,
    observed: StreamState,
    expected: Lag | None,
) -> None:
    got = lag_from_server(
        reported, last_delivered_id=EntryId.parse(last_delivered), entries_read=entries_read, stream=observed
    )
    assert got == expected


@pytest.mark.parametrize(
    ("count", "cap", "expected"),
    [
        pytest.param(0, 100, Lag(value=0, source="counted"), id="none"),
        pytest.param(99, 100, Lag(value=99, source="counted"), id="below-cap"),
        pytest.param(100, 100, Lag(value=100, source="lower_bound"), id="at-cap"),
    ],
)
def test_counted_lag(count: int, cap: int, expected: Lag) -> None:
    assert counted_lag(count, cap) == expected


@pytest.mark.parametrize(
    ("lag", "pending", "total", "text"),
    [
        pytest.param(Lag(value=3905, source="server"), 7, 3912, "3912 (lag 3905 + 7 pending)", id="server"),
        pytest.param(Lag(value=40, source="counted"), 0, 40, "40 (lag 40 (counted))", id="counted"),
        pytest.param(
            Lag(value=1000, source="lower_bound"), 5, 1005, ">=1005 (lag >=1000 + 5 pending)", id="capped"
        ),
        pytest.param(
            Lag(value=None, source="unknown"), 5, None, "unknown (lag unknown, 5 pending)", id="unknown"
        ),
    ],
)
def test_backlog_total_never_reads_unknown_as_zero(
    lag: Lag, pending: int, total: int | None, text: str
) -> None:
    backlog = Backlog(lag=lag, pending=pending)
    assert backlog.total == total
    assert str(backlog) == text
    assert lag.estimated == (lag.source != "server")


def test_lag_value_and_source_must_agree() -> None:
    with pytest.raises(ValidationError, match="unknown"):
        Lag(value=None, source="server")
    with pytest.raises(ValidationError, match="unknown"):
        Lag(value=3, source="unknown")
