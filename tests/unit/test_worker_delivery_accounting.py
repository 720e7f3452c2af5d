"""Delivery accounting (``retry.drop_exhausted``, ``retry.sort_failures``): what is retried, what is
dead-lettered, and why."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streampipe_worker.deadletter import DeadLetter
from streampipe_worker.handler_runner import HandlerFailure
from streampipe_worker.retry import RetryPolicy, drop_exhausted, sort_failures
from streampipe_worker.router import Entry, InvalidEventError, PermanentError

POLICY = RetryPolicy(max_deliveries=3, backoff_initial=timedelta(seconds=1), claim_idle=timedelta(seconds=60))


def entry(number: int, deliveries: int) -> Entry:
    return Entry(f"1-{number}", {}, deliveries, "s", "g")


@pytest.mark.parametrize(
    ("deliveries", "markers", "runnable", "runnable_markers", "dead"),
    [
        ([1, 2, 3], None, ["1-0", "1-1", "1-2"], None, []),
        ([4, 1, 9], None, ["1-1"], None, ["1-0", "1-2"]),
        ([1, 4, 2], ["m0", "m1", "m2"], ["1-0", "1-2"], ["m0", "m2"], ["1-1"]),
        ([5], ["m0"], [], [], ["1-0"]),
    ],
)
def test_drop_exhausted(
    deliveries: list[int],
    markers: list[str] | None,
    runnable: list[str],
    runnable_markers: list[str] | None,
    dead: list[str],
) -> None:
    found: list[DeadLetter] = []
    kept = drop_exhausted([entry(i, d) for i, d in enumerate(deliveries)], markers, 3, found)
    assert [e.id for e in kept.entries] == runnable
    assert kept.markers == runnable_markers
    assert [item.entry.id for item in found] == dead
    assert all(not item.rejected and "without a result (max 3)" in str(item.error) for item in found)


@pytest.mark.parametrize(
    ("deliveries", "error", "outcome"),
    [
        (1, ValueError("flaky"), "retry"),
        (2, ValueError("flaky"), "retry"),
        (3, ValueError("flaky"), "max_deliveries"),  # the last allowed attempt failed
        (1, PermanentError("bad order"), "rejected"),
        (1, InvalidEventError("payload"), "rejected"),  # a PermanentError: never retried
        (3, PermanentError("bad order"), "rejected"),
    ],
)
def test_sort_failures(deliveries: int, error: BaseException, outcome: str) -> None:
    dead: list[DeadLetter] = []
    entries = [entry(0, 1), entry(1, deliveries)]
    retry = sort_failures(entries, [HandlerFailure(1, error)], POLICY, dead)
    if outcome == "retry":
        assert [(f.entry.id, f.error) for f in retry] == [("1-1", error)]
        assert dead == []
    else:
        assert retry == []
        assert dead == [DeadLetter(entries[1], error, rejected=outcome == "rejected")]
