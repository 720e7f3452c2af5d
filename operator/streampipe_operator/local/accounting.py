"""The summary's accounting, as a pure function: figures in, figures and verdict out, no I/O.

:func:`account` takes where the counters stood before any worker ran (:class:`Baseline`), the end
observation of the stream and its groups, the dead letters and completion records added during the
run, and what the loop knows of each group's workers (:class:`GroupFacts`). It returns the per-group
figures, whether every entry is accounted for, the notes and the exit code. Where each figure comes
from is described in :mod:`streampipe_operator.local.pipeline`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streampipe_operator.local.models import GroupSummary, LatencySummary
from streampipe_operator.plan.backlog import group_backlog
from streampipe_operator.plan.observed import StreamObservation, StreamState
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.entry_ids import EntryId

Fields = Mapping[str, str]


@dataclass(frozen=True)
class StreamPosition:
    """A stream's last-generated-id and entries-added counter (``0-0`` and 0 for a missing stream)."""

    last_id: str = "0-0"
    added: int = 0

    @classmethod
    def of(cls, state: StreamState | None) -> StreamPosition:
        if state is None:
            return cls()
        return cls(str(state.last_generated_id), entries_added(state))


def entries_added(state: StreamState) -> int:
    """Entries ever added to the stream (its length on servers that do not count them)."""
    return state.entries_added if state.entries_added is not None else state.length


@dataclass(frozen=True)
class Baseline:
    """Where the counters stood before any worker ran: the summary subtracts these."""

    stream: StreamPosition = StreamPosition()
    backlog: Mapping[str, int] = field(default_factory=dict)
    dead_letter: StreamPosition = StreamPosition()
    completions: StreamPosition = StreamPosition()

    @classmethod
    def of(
        cls, observation: StreamObservation, dead_letter: StreamPosition, completions: StreamPosition
    ) -> Baseline:
        return cls(
            stream=StreamPosition.of(observation.stream),
            backlog={group.name: group_backlog(group).total or 0 for group in observation.groups},
            dead_letter=dead_letter,
            completions=completions,
        )


@dataclass(frozen=True)
class GroupFacts:
    """What the run knows of one group's workers at the end."""

    name: str
    max_replicas: int = 0
    final_replicas: int = 0
    restarts: int = 0
    retried: int = 0


@dataclass(frozen=True)
class Accounting:
    produced: int
    dead_lettered: int
    groups: list[GroupSummary]
    settled: bool
    accounted: bool
    latency_source: str
    notes: list[str]
    exit_code: int


def backlog_settled(observation: StreamObservation, groups: Iterable[str]) -> bool:
    """Every one of ``groups`` has a known backlog of zero."""
    for name in groups:
        group = observation.group(name)
        if group is None or group_backlog(group).total != 0:
            return False
    return True


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: Sequence[float]) -> LatencySummary | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return LatencySummary(
        count=len(ordered),
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        max_ms=ordered[-1],
    )


def dead_letter_reasons(dead_letters: Sequence[Fields]) -> dict[str, Counter[str]]:
    """Per group, exception class -> dead letters; entries that are not envelopes are skipped."""
    reasons: dict[str, Counter[str]] = {}
    for fields in dead_letters:
        try:
            envelope = DeadLetterEnvelope.from_fields(dict(fields))
        except (ValueError, TypeError):
            continue
        reasons.setdefault(envelope.group, Counter())[envelope.short_exception or "error"] += 1
    return reasons


def latencies(completions: Sequence[Fields], produced_after: EntryId) -> dict[str, list[float]]:
    """Per group, milliseconds from XADD to handler done for entries produced after ``produced_after``;
    the first completion of an entry counts (a redelivery after a crash may complete it again). A
    record's ``stream`` (set when several completion streams are read: partitions) keeps entries of
    different streams with one ID apart."""
    seen: set[tuple[str, str, str]] = set()
    found: dict[str, list[float]] = {}
    for fields in completions:
        try:
            entry_id = EntryId.parse(fields["id"])
            done_ms = int(fields["done_ms"])
            group = fields["group"]
        except (KeyError, ValueError):
            continue
        key = (group, fields.get("stream", ""), str(entry_id))
        if entry_id <= produced_after or key in seen:
            continue
        seen.add(key)
        found.setdefault(group, []).append(float(max(0, done_ms - entry_id.ms)))
    return found


def account(
    baseline: Baseline,
    end: StreamObservation,
    *,
    dead_letter_end: StreamPosition,
    dead_letters: Sequence[Fields],
    completions: Sequence[Fields],
    groups: Sequence[GroupFacts],
    completions_key: str,
    notes: Sequence[str] = (),
    demo_sent: int | None = None,
) -> Accounting:
    """Per group, processed = backlog at the start + produced - backlog left - dead letters; the run
    is accounted for when every group's figures add up (and, with the demo, the stream counted every
    event it sent). A demo run that did not settle and add up exits 1."""
    produced = (entries_added(end.stream) if end.stream is not None else 0) - baseline.stream.added
    reasons = dead_letter_reasons(dead_letters)
    measured = latencies(completions, EntryId.parse(baseline.stream.last_id))
    summaries: list[GroupSummary] = []
    accounted = True
    for facts in groups:
        group = end.group(facts.name)
        left = group_backlog(group).total if group is not None else None
        group_reasons = reasons.get(facts.name, Counter())
        dead = sum(group_reasons.values())
        processed = baseline.backlog.get(facts.name, 0) + produced - (left or 0) - dead
        if left is None or processed < 0:
            accounted = False
        summaries.append(
            GroupSummary(
                name=facts.name,
                processed=max(processed, 0),
                dead_lettered=dead,
                dead_letter_reasons=dict(group_reasons),
                retried=facts.retried,
                backlog_left=left,
                max_replicas=facts.max_replicas,
                final_replicas=facts.final_replicas,
                worker_restarts=facts.restarts,
                latency=latency_summary(measured.get(facts.name, [])),
            )
        )
    settled = all(summary.backlog_left == 0 for summary in summaries)
    all_notes = list(dict.fromkeys(notes))
    if demo_sent is not None and produced != demo_sent:
        all_notes.append(f"the demo producer sent {demo_sent} events, the stream counted {produced}")
        accounted = False
    if not any(measured.values()):
        latency_source = (
            f"not measured: no handler wrote completion records to {completions_key} (see docs/quickstart.md)"
        )
    else:
        latency_source = (
            f"completion records in {completions_key}: handler finished (done_ms) minus the entry "
            "ID's timestamp (XADD accepted), for entries produced during the run"
        )
    exit_code = 0
    if demo_sent is not None and not (settled and accounted):
        exit_code = 1
        all_notes.append("the demo did not settle: some entries were neither processed nor dead-lettered")
    return Accounting(
        produced=produced,
        dead_lettered=dead_letter_end.added - baseline.dead_letter.added,
        groups=summaries,
        settled=settled,
        accounted=accounted,
        latency_source=latency_source,
        notes=all_notes,
        exit_code=exit_code,
    )
