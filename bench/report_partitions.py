"""The report's partition sections: CPU per entry and the projection (8), end-to-end latency at one
offered rate (9), and the PerKey rebalance pause (10). bench/report.py puts them in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import partition_cost
import rebalance_pause
from partition_cost import lowest, lowest_p99
from report_format import rate_text, table, when_text
from results_model import Results

TARGETS = (100_000, 500_000, 1_000_000, 2_000_000)
SERVER_HEADROOM = 0.7  # a primary kept at 70 % of its core: replication, trimming, bursts


@dataclass(frozen=True)
class Projection:
    """What a target rate needs, from one machine's CPU per entry."""

    rate: int
    primaries: int
    worker_cores: int
    partitions: int


def project(rate: int, *, primary_rate: float, worker_cpu_us: float) -> Projection:
    """primaries = ceil(rate / primary_rate); worker cores = ceil(rate x worker µs per entry / 1e6);
    partitions = the smallest multiple of the primaries that is at least the worker cores (each
    primary then holds as many partitions as the next, and each worker core has one to itself)."""
    primaries = max(1, math.ceil(rate / primary_rate))
    cores = max(1, math.ceil(rate * worker_cpu_us / 1e6))
    return Projection(rate, primaries, cores, primaries * math.ceil(cores / primaries))


def primary_rate(server_cpu_us: float, ceiling: float | None) -> float:
    """What one primary takes, kept at SERVER_HEADROOM: its core over the server's CPU per entry
    with partitions, or the server's own measured ceiling (section 2) if that is lower."""
    per_core = 1e6 / server_cpu_us
    return SERVER_HEADROOM * min(per_core, ceiling) if ceiling else SERVER_HEADROOM * per_core


def _load_before(results: Results, name: str) -> str:
    """The load when benchmark ``name`` began and, if its figures come from another run (a supplement:
    bench/report.py MAIN EXTRA), which one; ``name`` is also the Results field it fills."""
    extra = results.supplement_of(name)
    samples = extra.load if extra is not None else results.load
    found = next((load for load in samples if load.label == f"before {name}"), None)
    text = f" The 1-minute load average was {found.load1:.2f} when it started." if found else ""
    if extra is not None:
        text += (
            f" Measured {when_text(extra.started_at)} in a run of its own (`{extra.source}`, "
            f"`{extra.command}`), not in the run of the rest of this page; the ratios within it are what "
            "to compare."
        )
    return text


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _layout(partitions: int, ordering: str = "None") -> str:
    what = f"{partitions} partitions" if partitions else "one stream"
    return f"{what}, {ordering}" if ordering != "None" else what


def cost_section(results: Results) -> list[str]:
    samples = results.partitions
    one = lowest(samples, 0)
    if one is None:
        return []
    counts = sorted({s.partitions for s in samples if s.ordering == "None"} - {0})
    perkey = sorted({s.partitions for s in samples if s.ordering == "PerKey"})
    rows = []
    for count, ordering in [(0, "None"), *((c, "None") for c in counts), *((c, "PerKey") for c in perkey)]:
        chosen = lowest(samples, count, ordering)
        assert chosen is not None
        rows.append(
            [
                _layout(count, ordering),
                rate_text(chosen.rate),
                f"{chosen.worker_cpu_us:.2f}",
                f"{chosen.server_cpu_us:.2f}",
                f"{chosen.cpu_us:.2f}",
                f"{chosen.cpu_us / one.cpu_us:.2f}x",
            ]
        )
    idle_rows = [
        [str(found.partitions), f"{found.cpu_percent:.2f} %", str(found.connections)]
        for found in results.partitions_idle
    ]
    at_rest = []
    if idle_rows:
        at_rest = [
            "At rest (no traffic, default settings: BLOCK 2s, claimIdle 1m), one worker's CPU over "
            f"{results.partitions_idle[0].seconds:.0f} s and its connections to the server:",
            "",
            *table(["partitions", "CPU, share of a core", "connections"], idle_rows),
        ]
    return [
        "## 8. Partitions: one worker over P partitions",
        "",
        f"One `streampipe-worker` (no-op handler, batch {partition_cost.BATCH}) reads the same entries from "
        "one stream and from P partitions (`STREAMPIPE_PARTITIONS`: one consumer per partition in its "
        "event loop). CPU per entry of the worker and the server over the middle 80 % of the run; the "
        f"round with the lowest total of {len({s.round for s in samples})} interleaved rounds."
        f"{_load_before(results, 'partitions')}",
        *(perkey_lines() if perkey else []),
        "",
        *table(
            ["layout", "entries/s", "worker µs/entry", "server µs/entry", "total µs/entry", "vs one stream"],
            rows,
        ),
        *projection_lines(results),
        *at_rest,
    ]


def perkey_lines() -> list[str]:
    return [
        "",
        f"The `PerKey` rows route the same entries by a key field ({partition_cost.PERKEY_KEYS:,} keys) "
        "and run the worker with `ordering: PerKey`: it holds every partition's fenced lease, each read, "
        "ack and reclaim is a script that checks the lease first (the server converts every entry it "
        "returns through Lua), and a handler call gets at most one entry per key. That is the price of "
        "per-key order with fencing, paid by the worker and the server alike.",
    ]


def projection_lines(results: Results) -> list[str]:
    counts = sorted({s.partitions for s in results.partitions if s.ordering == "None"} - {0})
    basis = lowest(results.partitions, counts[-1] if counts else 0)
    if basis is None:
        return []
    perkey_counts = sorted({s.partitions for s in results.partitions if s.ordering == "PerKey"})
    ordered = lowest(results.partitions, perkey_counts[-1], "PerKey") if perkey_counts else None
    ceiling = max((c.rate for c in results.scale_out.ceilings), default=0.0) if results.scale_out else 0.0
    per_primary = primary_rate(basis.server_cpu_us, ceiling or None)
    ordered_primary = primary_rate(ordered.server_cpu_us, ceiling or None) if ordered else 0.0
    rows = []
    for rate in TARGETS:
        found = project(rate, primary_rate=per_primary, worker_cpu_us=basis.worker_cpu_us)
        row = [rate_text(rate), str(found.primaries), str(found.worker_cores), str(found.partitions)]
        if ordered is not None:
            keyed = project(rate, primary_rate=ordered_primary, worker_cpu_us=ordered.worker_cpu_us)
            row += [str(keyed.primaries), str(keyed.worker_cores), str(keyed.partitions)]
        rows.append(row)
    headers = ["target entries/s", "primaries", "worker cores", "partitions, at least"]
    ordered_text = ""
    if ordered is not None:
        headers += ["PerKey: primaries", "PerKey: worker cores", "PerKey: partitions, at least"]
        ordered_text = (
            f" With `PerKey` ({_layout(ordered.partitions, 'PerKey')}: server "
            f"{ordered.server_cpu_us:.2f} µs, worker {ordered.worker_cpu_us:.2f} µs an entry) a primary "
            f"takes {rate_text(ordered_primary)}/s and a worker core "
            f"{rate_text(1e6 / ordered.worker_cpu_us)}/s; the last three columns."
        )
    ceiling_text = ""
    if ceiling:
        binds = (
            "so the CPU per entry with partitions is what binds"
            if ceiling > 1e6 / basis.server_cpu_us
            else "lower, so that ceiling is what binds"
        )
        ceiling_text = (
            f"; the server's own ceiling for the workers' commands (section 2) is {rate_text(ceiling)}/s a "
            f"core, {binds}"
        )
    what = _layout(basis.partitions)
    return [
        f"**Projection**, from this one machine's figures for {what} (not measured on a cluster): "
        f"one primary core takes 1 / {basis.server_cpu_us:.2f} µs = {rate_text(1e6 / basis.server_cpu_us)}/s"
        f"{ceiling_text}. Kept at {SERVER_HEADROOM:.0%} (replication, trimming, bursts), a primary takes "
        f"{rate_text(per_primary)}/s. A worker core moves 1 / {basis.worker_cpu_us:.2f} µs = "
        f"{rate_text(1e6 / basis.worker_cpu_us)}/s with a no-op handler.{ordered_text} So, for a target "
        "rate R:",
        "",
        f"- primaries = ceil(R / {rate_text(per_primary)});",
        f"- worker cores = ceil(R times {basis.worker_cpu_us:.2f} µs), plus your handler's own CPU per "
        "entry;",
        "- partitions = the smallest multiple of the primaries that is at least the worker cores: each "
        "primary holds as many partitions as the next (place their slots, `streampipe status` shows "
        "them), and with `PerKey` each partition has one owner, so the count caps the busy workers.",
        "",
        *table(headers, rows),
        "Not in the projection, because not measured here: network round trips between hosts, a cluster "
        "client's routing, and (`PerKey`) keys so few or so skewed that a call gets fewer entries than a "
        "batch. Treat the rows as a lower bound to size a test, not a capacity plan.",
        "",
    ]


def latency_section(results: Results) -> list[str]:
    samples = results.partition_latency
    one = lowest_p99(samples, 0)
    if one is None:
        return []
    rows = []
    for count in sorted({s.partitions for s in samples}):
        lat = lowest_p99(samples, count)
        assert lat is not None
        rows.append(
            [
                _layout(count),
                f"{lat.p50_ms:.2f}",
                f"{lat.p90_ms:.2f}",
                f"**{lat.p99_ms:.2f}**",
                f"{lat.p999_ms:.2f}",
                f"{lat.max_ms:.2f}",
                f"{lat.samples:,}",
                f"{lat.achieved_rate:,.0f}",
                f"{lat.p99_ms / one.p99_ms:.2f}x",
            ]
        )
    rounds = len([s for s in samples if s.partitions == 0])
    return [
        "## 9. Partitions: end-to-end latency at the same load",
        "",
        f"One `streampipe-worker` (no-op handler, batch 100, `ordering: None`) at {one.rate:,} entries/s "
        f"offered open loop for {one.seconds:g} s (section 3's producer and method; the first second "
        "dropped), from one stream and from P partitions, the producer taking the partitions in turn. "
        f"Milliseconds; of {rounds} interleaved round{'s' if rounds > 1 else ''}, the one with the lowest "
        f"p99 of each layout.{_load_before(results, 'partition_latency')}",
        "",
        *table(
            ["layout", "p50", "p90", "p99", "p99.9", "max", "samples", "sent/s", "p99 vs one stream"],
            rows,
        ),
        "One worker process reads every partition here, so more partitions mean more consumers sharing "
        "its event loop and smaller batches each; partitions pay off when they spread the load over "
        "primaries and workers, which one 2-core machine cannot show.",
        "",
    ]


def rebalance_section(results: Results) -> list[str]:
    events = results.rebalance
    if not events:
        return []
    first = events[0]
    order = {name: index for index, name in enumerate(rebalance_pause.EVENTS)}
    events = sorted(events, key=lambda event: (order[event.event], event.round))
    steady = " / ".join(f"{p99:.1f}" for p99 in dict.fromkeys(e.steady_p99_ms for e in results.rebalance))
    rounds = len({event.round for event in events})
    rows = [
        [
            event.event,
            str(event.round),
            f"{event.workers_before} → {event.workers_after}",
            str(event.moved),
            f"**{event.pause_s:.2f} s**",
            f"{event.lease_ttl_s:g} s",
            f"{event.pause_s / event.lease_ttl_s:.2f}",
            f"{event.stayed_gap_s:.2f} s",
            f"{event.p50_ms:.1f}",
            f"{event.p99_ms:.0f}",
            f"{event.max_ms:.0f}",
        ]
        for event in events
    ]
    return [
        "## 10. PerKey rebalance: the pause when partitions change owner",
        "",
        f"A `PerKey` pipeline of {first.partitions} partitions (key field with {first.keys} keys, "
        f"`STREAMPIPE_LEASE_TTL` {first.lease_ttl_s:g} s) at {first.rate:,} entries/s offered open loop, "
        f"read by {first.workers_before} workers; then, {first.phase_s:.1f} s apart, a third worker "
        "**joins**, a worker **leaves** on SIGTERM (it hands its partitions over and releases their "
        "leases) and a worker is **killed** (SIGKILL: its partitions wait for their leases to run out). "
        "Each worker's handler records when it finished each entry, and for which partition. *Pause* is "
        "the longest gap between two completions of a partition that changed owner; the gap column next "
        "to it is the same for the partitions that kept theirs. Latency (ms, XADD scheduled to handler "
        "done, first completion of each entry) covers the entries scheduled from 0.25 s before the event "
        f"to 0.25 s before the next. The sequence ran {_times(rounds)}; before the first event the p99 "
        f"was {steady} ms."
        f"{_load_before(results, 'rebalance')}",
        "",
        *table(
            [
                "event",
                "round",
                "workers",
                "partitions moved",
                "pause",
                "lease ttl",
                "pause / ttl",
                "longest gap, unmoved",
                "p50",
                "p99",
                "max",
            ],
            rows,
        ),
        "A join or a graceful leave costs the moved partitions a hand-over (close, ack, release; the "
        "next owner takes it on its next round, every ttl / 3); a killed worker's partitions wait for "
        "the lease to expire (a ttl after its last renewal, which was at most ttl / 3 before the kill) "
        "and then for the next owner's round, so their pause falls between 2/3 and 4/3 of the ttl. A "
        "shorter `LEASE_TTL` shortens that wait and costs more renewals (every ttl / 3 per partition).",
        "",
    ]


def partitions_sections(results: Results) -> list[str]:
    return [*cost_section(results), *latency_section(results), *rebalance_section(results)]
