"""The fault suite's oracle: every produced entry is processed or dead-lettered; duplicates are counted.

Inputs it trusts: the producer's own ledger (sequence number -> entry ID, kept in the test process), the
handler's per-process record files (see ``recorder.py`` for what survives which fault), and the
dead-letter stream read back at the end through the worker's own envelope parser.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streampipe_worker.deadletter import DeadLetterEnvelope


@dataclass(frozen=True)
class Call:
    """One handler call, as a worker recorded it."""

    n: int
    entry_id: str
    deliveries: int
    outcome: str  # ok | fail | permanent | timeout | hold (see recorder.py)
    source: str  # the record file (consumer name and PID)
    started: int = 0  # CLOCK_MONOTONIC ns when the call began (one clock for all processes)


def read_calls(directory: Path) -> list[Call]:
    """Every recorded call, from every worker process that wrote into ``directory``."""
    calls: list[Call] = []
    for path in sorted(directory.glob("*.log")):
        text = path.read_text()
        lines = text.split("\n")
        # A line is written by one write(2); a missing final newline can only mean a torn last write.
        for line in lines[:-1]:
            n, entry_id, deliveries, started, outcome = line.split(" ")
            calls.append(Call(int(n), entry_id, int(deliveries), outcome, path.stem, int(started)))
    return calls


def dead_letters(client: Any, dead_letter: str) -> list[DeadLetterEnvelope]:
    """The dead-letter stream's envelopes, parsed by the worker's own model."""
    found: list[DeadLetterEnvelope] = []
    low = "-"
    while True:
        page = client.xrange(dead_letter, min=low, max="+", count=1000)
        found.extend(DeadLetterEnvelope.from_fields(fields) for _, fields in page)
        if len(page) < 1000:
            return found
        low = f"({page[-1][0]}"


@dataclass
class Verdict:
    """What happened to the produced entries."""

    produced: int
    processed: int  # distinct entries with at least one successful handler call
    dead_lettered: int  # distinct entries in the dead-letter stream
    lost: list[int] = field(default_factory=list)  # neither processed nor dead-lettered
    duplicates: int = 0  # successful calls beyond the first, over all entries
    duplicated_entries: int = 0  # entries with more than one successful call
    dead_twice: list[int] = field(default_factory=list)  # entries with more than one envelope
    processed_and_dead: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)  # recorded or dead-lettered, never produced

    def summary(self) -> str:
        return (
            f"produced={self.produced} processed={self.processed} dead_lettered={self.dead_lettered} "
            f"lost={len(self.lost)} duplicates={self.duplicates} dead_twice={len(self.dead_twice)} "
            f"unknown={len(self.unknown)} first lost={sorted(self.lost)[:10]}"
        )


def judge(produced: Iterable[int], calls: Iterable[Call], dead: Iterable[DeadLetterEnvelope]) -> Verdict:
    """Compare the producer's ledger with what the workers did."""
    wanted = set(produced)
    ok = Counter(call.n for call in calls if call.outcome == "ok")
    dead_counts = Counter(int(envelope.original["n"]) for envelope in dead if "n" in envelope.original)
    handled = set(ok) | set(dead_counts)
    return Verdict(
        produced=len(wanted),
        processed=len(set(ok) & wanted),
        dead_lettered=len(set(dead_counts) & wanted),
        lost=sorted(wanted - handled),
        duplicates=sum(count - 1 for count in ok.values()),
        duplicated_entries=sum(1 for count in ok.values() if count > 1),
        dead_twice=sorted(n for n, count in dead_counts.items() if count > 1),
        processed_and_dead=sorted(set(ok) & set(dead_counts)),
        unknown=sorted(handled - wanted),
    )


def key_order_violations(calls: Iterable[Call], key_of: Callable[[int], str]) -> list[tuple[str, int, int]]:
    """Per-key order: within each key, every entry is first handled after every older entry (smaller
    ``n``, produced earlier) of that key was first handled. A redelivery of an entry not yet acked may
    repeat it later; that is a repeat, not a first call, so it never counts here. Returns (key, older,
    newer) for each newer entry whose first call began before an older one's first call."""
    first: dict[int, int] = {}
    for call in calls:
        if call.outcome != "hold" and (call.n not in first or call.started < first[call.n]):
            first[call.n] = call.started
    by_key: dict[str, list[tuple[int, int]]] = {}
    for n, started in first.items():
        by_key.setdefault(key_of(n), []).append((n, started))
    violations = []
    for key, entries in by_key.items():
        entries.sort()  # by n: production order within the key
        latest_n, latest_at = entries[0]
        for n, started in entries[1:]:
            if started < latest_at:
                violations.append((key, latest_n, n))
            if started >= latest_at:
                latest_n, latest_at = n, started
    return violations
