"""The summary's accounting of ``streampipe up``: every produced entry is processed, dead-lettered or
still in a backlog, per group; the figures come only from the inputs (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from streampipe_operator.local.accounting import (
    Baseline,
    GroupFacts,
    StreamPosition,
    account,
    backlog_settled,
    latencies,
)
from streampipe_operator.plan.observed import GroupState, Lag, StreamObservation, StreamState
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.entry_ids import EntryId

START_ID = "1000-0"


def _observation(added: int, backlogs: dict[str, tuple[int | None, int]]) -> StreamObservation:
    return StreamObservation(
        stream_key="s",
        exists=True,
        stream=StreamState(length=added, last_generated_id=EntryId(5000), entries_added=added),
        groups=tuple(
            GroupState(
                name=name,
                last_delivered_id=EntryId(0),
                lag=Lag(value=lag, source="server" if lag is not None else "unknown"),
                pending=pending,
            )
            for name, (lag, pending) in backlogs.items()
        ),
    )


def _dead_letter(group: str, exception: str) -> dict[str, str]:
    return DeadLetterEnvelope(
        original_id="1500-0",
        original_stream="s",
        error="boom",
        group=group,
        consumer="c",
        deliveries=3,
        failed_at=datetime(2026, 12, 1, tzinfo=UTC),
        exception=exception,
    ).to_fields()


@dataclass(frozen=True)
class Case:
    name: str
    backlog_start: dict[str, int]
    added_end: int
    backlog_end: dict[str, tuple[int | None, int]]
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    demo_sent: int | None = None
    processed: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    accounted: bool = True
    settled: bool = True
    exit_code: int = 0


CASES = [
    Case("all processed", {"a": 0}, 110, {"a": (0, 0)}, processed={"a": 10}, dead={"a": 0}),
    Case(
        "dead letters are taken off the settled entries of their group only",
        {"a": 0, "b": 0},
        110,
        {"a": (0, 0), "b": (0, 0)},
        dead_letters=[_dead_letter("a", "shop.PermanentError"), _dead_letter("a", "KeyError")],
        processed={"a": 8, "b": 10},
        dead={"a": 2, "b": 0},
    ),
    Case(
        "a backlog at the start is settled too",
        {"a": 5},
        110,
        {"a": (0, 0)},
        processed={"a": 15},
    ),
    Case(
        "entries left in the backlog are not processed, and the run is not settled",
        {"a": 0},
        110,
        {"a": (3, 2)},
        processed={"a": 5},
        settled=False,
    ),
    Case(
        "an unknown lag means the figures cannot be accounted for",
        {"a": 0},
        110,
        {"a": (None, 0)},
        processed={"a": 10},
        accounted=False,
        settled=False,
    ),
    Case(
        "a group missing at the end cannot be accounted for",
        {"a": 0},
        110,
        {},
        processed={"a": 10},
        accounted=False,
        settled=False,
    ),
    Case(
        "the demo's sent count must match what the stream counted; a demo that does not add up exits 1",
        {"a": 0},
        110,
        {"a": (0, 0)},
        demo_sent=11,
        processed={"a": 10},
        accounted=False,
        exit_code=1,
    ),
    Case("a demo that settles and adds up exits 0", {"a": 0}, 110, {"a": (0, 0)}, demo_sent=10),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_accounting(case: Case) -> None:
    baseline = Baseline(
        stream=StreamPosition(START_ID, 100),
        backlog=case.backlog_start,
        dead_letter=StreamPosition("0-0", 4),
    )
    result = account(
        baseline,
        _observation(case.added_end, case.backlog_end),
        dead_letter_end=StreamPosition("2000-0", 4 + len(case.dead_letters)),
        dead_letters=case.dead_letters,
        completions=[],
        groups=[GroupFacts(name=name) for name in case.backlog_start],
        completions_key="s:done",
        demo_sent=case.demo_sent,
    )
    assert result.produced == case.added_end - 100
    assert result.dead_lettered == len(case.dead_letters)
    for name, processed in case.processed.items():
        assert next(g for g in result.groups if g.name == name).processed == processed
    for name, dead in case.dead.items():
        assert next(g for g in result.groups if g.name == name).dead_lettered == dead
    assert (result.accounted, result.settled, result.exit_code) == (
        case.accounted,
        case.settled,
        case.exit_code,
    )


def test_dead_letter_reasons_use_the_short_exception_name() -> None:
    result = account(
        Baseline(),
        _observation(0, {"a": (0, 0)}),
        dead_letter_end=StreamPosition(),
        dead_letters=[_dead_letter("a", "shop.errors.PermanentError"), {"not": "an envelope"}],
        completions=[],
        groups=[GroupFacts(name="a")],
        completions_key="s:done",
    )
    assert result.groups[0].dead_letter_reasons == {"PermanentError": 1}


def test_latency_counts_the_first_completion_of_entries_produced_during_the_run() -> None:
    completions = [
        {"id": "900-0", "done_ms": "950", "group": "a"},  # produced before the run
        {"id": "1200-0", "done_ms": "1250", "group": "a"},
        {"id": "1200-0", "done_ms": "1900", "group": "a"},  # a redelivery completing it again
        {"id": "1300-1", "done_ms": "1310", "group": "b"},
        {"id": "garbage", "done_ms": "1", "group": "a"},
    ]
    assert latencies(completions, EntryId.parse(START_ID)) == {"a": [50.0], "b": [10.0]}


def test_backlog_settled_needs_every_group_known_and_empty() -> None:
    observation = _observation(10, {"a": (0, 0), "b": (0, 1)})
    assert backlog_settled(observation, ["a"])
    assert not backlog_settled(observation, ["a", "b"])
    assert not backlog_settled(observation, ["a", "missing"])
