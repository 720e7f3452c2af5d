"""The pure parts of the partition benchmarks (bench/): what the records say about a rebalance, the
percentiles, the producer's routed XADDs and the projection. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import hiredis
import pytest

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)
try:
    import latency
    from probe_handlers import COMPLETION
    from rebalance_pause import (
        Completion,
        RebalanceSetup,
        longest_gaps,
        moved_partitions,
        owners_at,
        read_completions,
        summarize,
        summarize_run,
        window_latencies,
    )
    from report_partitions import primary_rate, project
finally:
    sys.path.remove(BENCH)

MS = 1_000_000
S = 1_000


def done(at_ms: int, partition: int, worker: str, latency_ms: int = 1) -> Completion:
    """A completion at ``at_ms`` of the entry scheduled ``latency_ms`` before it."""
    return Completion(at_ms * MS, (at_ms - latency_ms) * MS, partition, worker)


def test_records_of_a_worker_skip_unwritten_slots_and_a_torn_tail() -> None:
    data = COMPLETION.pack(5, 4, 3) + COMPLETION.pack(0, 0, 0) + COMPLETION.pack(7, 6, 1) + b"\x01\x02"
    assert read_completions(data, "w1") == [Completion(5, 4, 3, "w1"), Completion(7, 6, 1, "w1")]


# Partition 0 moves from w1 to w2 at about 1 s, after a 2-second gap; partition 1 stays with w1.
HANDOVER = [
    *(done(t, 0, "w1") for t in range(0, 1000, 100)),
    *(done(t, 0, "w2") for t in range(2900, 5000, 100)),
    *(done(t, 1, "w1") for t in range(0, 5000, 100)),
]


@pytest.mark.parametrize(
    ("at_ms", "owners"),
    [
        (500, {0: "w1", 1: "w1"}),
        (2000, {0: "w1", 1: "w1"}),  # nothing of partition 0 since 0.9 s: its last owner
        (5000, {0: "w2", 1: "w1"}),
        (0, {}),
    ],
)
def test_owner_is_the_worker_of_the_last_completion_before(at_ms: int, owners: dict[int, str]) -> None:
    assert owners_at(HANDOVER, at_ms * MS) == owners


def test_moved_partitions_are_those_whose_owner_differs_at_the_end_of_the_window() -> None:
    assert moved_partitions(HANDOVER, 1000 * MS, 5000 * MS) == {0}
    assert moved_partitions(HANDOVER, 3000 * MS, 5000 * MS) == set()


def test_longest_gap_counts_the_window_bounds_and_every_worker_of_a_partition() -> None:
    gaps = longest_gaps(HANDOVER, 500 * MS, 4950 * MS)
    assert gaps[0] == 2000 * MS  # 0.9 s (w1) to 2.9 s (w2)
    assert gaps[1] == 100 * MS
    # A partition stopped until the end of the window: the gap runs to the end.
    assert longest_gaps([done(100, 2, "w1")], 0, 3000 * MS) == {2: 2900 * MS}


def test_window_latency_takes_each_entry_once_at_its_first_completion() -> None:
    first = Completion(10 * MS, 9 * MS, 0, "w1")
    redelivered = Completion(3000 * MS, 9 * MS, 0, "w2")  # its ack lost with the killed w1
    late = Completion(2500 * MS, 100 * MS, 1, "w2")
    outside = Completion(20 * MS, 5000 * MS, 1, "w2")  # scheduled after the window
    assert window_latencies([redelivered, first, late, outside], 0, 1000 * MS) == [1 * MS, 2400 * MS]


def test_summarize_reports_the_moved_partitions_pause_next_to_the_unmoved_gap() -> None:
    setup = RebalanceSetup(partitions=2, keys=2, workers=2, rate=20, lease_ttl_s=3.0, round=2)
    found = summarize(HANDOVER, "kill", (1000 * MS, 5000 * MS), [1 * MS] * 10, setup)
    assert (found.event, found.round, found.workers_before, found.workers_after) == ("kill", 2, 2, 1)
    assert found.moved == 1
    assert found.pause_s == pytest.approx(2.0)
    assert found.stayed_gap_s == pytest.approx(0.1)
    assert found.max_ms == pytest.approx(1.0)  # every entry here took 1 ms from its schedule
    assert found.steady_p99_ms == pytest.approx(1.0)
    assert found.phase_s == pytest.approx(4.0)


def test_each_events_phase_runs_to_the_next_event_and_the_last_to_the_end_of_the_load() -> None:
    setup = RebalanceSetup(partitions=2, keys=2, workers=2, rate=20, lease_ttl_s=3.0)
    found = summarize_run(HANDOVER, [("join", 500 * MS), ("leave", 3000 * MS)], 5.0, setup)
    assert [(e.event, e.workers_before, e.workers_after) for e in found] == [("join", 2, 3), ("leave", 3, 2)]
    assert [e.phase_s for e in found] == [pytest.approx(2.5), pytest.approx(1.999)]  # first entry at -1 ms
    assert [e.moved for e in found] == [1, 0]  # partition 0 went from w1 to w2 during the join's phase


@pytest.mark.parametrize(
    ("fraction", "expected_ms"),
    [(0.5, 50), (0.99, 99), (1.0, 100), (0.0, 1)],
)
def test_percentile_is_the_nearest_rank(fraction: float, expected_ms: float) -> None:
    ordered = [i * MS for i in range(1, 101)]
    assert latency.percentile(ordered, fraction) == expected_ms


def test_the_producer_writes_each_entry_to_its_route_with_the_routes_fields() -> None:
    routes: list[latency.Route] = [("{b:0}", {"k": "c-0", "p": "0"}), ("{b:1}", {})]
    stats: dict[str, float] = {}
    reader = hiredis.Reader()
    for chunk in latency._paced_chunks(routes, rate=100_000, seconds=0.00003, stats=stats):
        reader.feed(chunk)
    commands = []
    while (command := reader.gets()) is not False:
        commands.append([part.decode() for part in command])
    assert stats["sent"] == 3
    assert [c[:3] for c in commands] == [
        ["XADD", "{b:0}", "*"],
        ["XADD", "{b:1}", "*"],
        ["XADD", "{b:0}", "*"],
    ]
    fields = dict(zip(commands[0][3::2], commands[0][4::2], strict=True))
    assert set(fields) == {"k", "p", "type", "version", "payload", "t"}
    assert (fields["k"], fields["p"], fields["type"]) == ("c-0", "0", "order.created")
    assert set(dict(zip(commands[1][3::2], commands[1][4::2], strict=True))) == {
        "type",
        "version",
        "payload",
        "t",
    }


@pytest.mark.parametrize(
    ("rate", "per_primary", "worker_us", "expected"),
    [
        (100_000, 250_000.0, 3.0, (1, 1, 1)),
        (1_000_000, 250_000.0, 3.0, (4, 3, 4)),  # fewer cores than primaries: one partition per primary
        (1_000_000, 500_000.0, 5.0, (2, 5, 6)),  # 5 cores over 2 primaries: 6, three on each
        (2_000_000, 250_000.0, 3.66, (8, 8, 8)),
    ],
)
def test_projection(rate: int, per_primary: float, worker_us: float, expected: tuple[int, int, int]) -> None:
    found = project(rate, primary_rate=per_primary, worker_cpu_us=worker_us)
    assert (found.primaries, found.worker_cores, found.partitions) == expected


def test_a_primary_takes_the_lower_of_its_core_per_entry_and_the_servers_ceiling_with_headroom() -> None:
    assert primary_rate(2.0, None) == pytest.approx(0.7 * 500_000)
    assert primary_rate(2.0, 600_000.0) == pytest.approx(0.7 * 500_000)
    assert primary_rate(2.0, 400_000.0) == pytest.approx(0.7 * 400_000)
