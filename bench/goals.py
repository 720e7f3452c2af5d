"""Same-run ratios and the issue's goals, computed from one run's results."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from latency import Latency
from partition_cost import lowest, lowest_p99
from results_model import Goal, Ratio, Results
from worker_throughput import Sample, best_rates

# The share of the server's ceiling 4 worker processes should reach (issue 18; 60 % before it).
SCALE_OUT_GOAL = 0.85


def best(samples: Sequence[Sample], consumer: str, batch: int | None = None, processes: int = 1) -> float:
    rates = [
        s.rate
        for s in samples
        if s.consumer == consumer and s.processes == processes and (batch is None or s.batch == batch)
    ]
    return max(rates, default=0.0)


def best_batch(samples: Sequence[Sample], consumer: str) -> int | None:
    rates = best_rates([s for s in samples if s.processes == 1]).get(consumer, {})
    return max(rates, key=lambda b: rates[b]) if rates else None


def best_latencies(latencies: Sequence[Latency]) -> list[Latency]:
    """Per (consumer, rate), the round with the lowest p99 (rounds are interleaved, as for throughput)."""
    chosen: dict[tuple[str, int], Latency] = {}
    for latency in latencies:
        key = (latency.consumer, latency.rate)
        if key not in chosen or latency.p99_ms < chosen[key].p99_ms:
            chosen[key] = latency
    return list(chosen.values())


def _ratio(name: str, ours: float, baseline: float, unit: str, lower_is_better: bool = False) -> Ratio | None:
    if not ours or not baseline:
        return None
    return Ratio(
        name=name,
        ours=ours,
        baseline=baseline,
        ratio=ours / baseline,
        unit=unit,
        lower_is_better=lower_is_better,
    )


def ratios(results: Results) -> list[Ratio]:
    found: list[Ratio | None] = []
    if results.throughput:
        samples = results.throughput.samples
        ours = best(samples, "streampipe")
        found += [
            _ratio("worker vs the tutorial loop", ours, best(samples, "tutorial_loop"), "entries/s"),
            _ratio("worker vs FastStream batch", ours, best(samples, "faststream_batch"), "entries/s"),
            _ratio("worker vs FastStream single", ours, best(samples, "faststream_single"), "entries/s"),
            _ratio(
                "worker vs the bare redis-py loop (Python ceiling)",
                ours,
                best(samples, "bare_loop"),
                "entries/s",
            ),
        ]
        found += [
            _ratio(
                "diagnostic: worker vs worker with CPython's default collector, batch 1000",
                best(samples, "streampipe", 1000),
                best(samples, "streampipe_gc_default", 1000),
                "entries/s",
            ),
            _ratio(
                "diagnostic: worker vs worker with its sync handler kept on the thread, batch 1",
                best(samples, "streampipe", 1),
                best(samples, "streampipe_thread", 1),
                "entries/s",
            ),
            _ratio(
                "diagnostic: worker with an async handler vs sync, batch 1",
                best(samples, "streampipe_async", 1),
                best(samples, "streampipe", 1),
                "entries/s",
            ),
        ]
        # Per batch size, with the no-op handler and with the JSON-decoding one.
        for label, ours_kind, bare_kind in (
            ("", "streampipe", "bare_loop"),
            ("JSON handler, ", "streampipe_json", "bare_loop_json"),
        ):
            for batch in sorted({s.batch for s in samples if s.consumer == ours_kind}):
                found.append(
                    _ratio(
                        f"worker vs bare loop, {label}batch {batch}",
                        best(samples, ours_kind, batch),
                        best(samples, bare_kind, batch),
                        "entries/s",
                    )
                )
    if results.scale_out:
        top = max((c.rate for c in results.scale_out.ceilings), default=0.0)
        one = best(results.scale_out.samples, "streampipe", processes=1)
        for count in sorted({s.processes for s in results.scale_out.samples}):
            rate = best(results.scale_out.samples, "streampipe", processes=count)
            found.append(_ratio(f"{count} worker(s) vs the server ceiling", rate, top, "entries/s"))
            if count > 1:
                found.append(_ratio(f"{count} workers vs 1 worker", rate, one, "entries/s"))
    by_rate: dict[int, dict[str, float]] = {}
    for latency in best_latencies(results.latency):
        by_rate.setdefault(latency.rate, {})[latency.consumer] = latency.p99_ms
    for rate, p99 in sorted(by_rate.items()):
        if "streampipe" in p99 and "bare_loop" in p99:
            found.append(
                _ratio(
                    f"p99 latency at {rate:,}/s vs bare loop", p99["streampipe"], p99["bare_loop"], "ms", True
                )
            )
    if results.producer:
        p = results.producer
        found += [
            _ratio(
                "send_many vs redis-benchmark -P 1000",
                max(r.send_many for r in p),
                max(r.redis_benchmark_p1000 for r in p),
                "entries/s",
            ),
            _ratio(
                "send_many (validated) vs redis-benchmark -P 1000",
                max(r.send_many_validated for r in p),
                max(r.redis_benchmark_p1000 for r in p),
                "entries/s",
            ),
            _ratio(
                "send vs redis-benchmark -P 1",
                max(r.send for r in p),
                max(r.redis_benchmark_p1 for r in p),
                "entries/s",
            ),
        ]
    found += _partition_ratios(results)
    return [r for r in found if r is not None]


def _partition_ratios(results: Results) -> list[Ratio | None]:
    """Partitioned layouts against one stream: CPU per entry, and p99 at one offered rate."""
    found: list[Ratio | None] = []
    one = lowest(results.partitions, 0)
    for count in sorted({s.partitions for s in results.partitions if s.ordering == "None"} - {0}):
        many = lowest(results.partitions, count)
        if one is not None and many is not None:
            found.append(
                _ratio(
                    f"CPU per entry (worker + server), {count} partitions vs one stream",
                    many.cpu_us,
                    one.cpu_us,
                    "µs/entry",
                    True,
                )
            )
    # PerKey's price (fenced scripts, one entry per key a call), not part of the goal below.
    for count in sorted({s.partitions for s in results.partitions if s.ordering == "PerKey"}):
        ordered = lowest(results.partitions, count, "PerKey")
        if one is not None and ordered is not None:
            found.append(
                _ratio(
                    f"PerKey CPU per entry (worker + server), {count} partitions vs one stream",
                    ordered.cpu_us,
                    one.cpu_us,
                    "µs/entry",
                    True,
                )
            )
    one_p99 = lowest_p99(results.partition_latency, 0)
    for count in sorted({s.partitions for s in results.partition_latency} - {0}):
        many_p99 = lowest_p99(results.partition_latency, count)
        if one_p99 is not None and many_p99 is not None:
            name = f"p99 latency at {many_p99.rate:,}/s, {count} partitions vs one stream"
            found.append(_ratio(name, many_p99.p99_ms, one_p99.p99_ms, "ms", True))
    return found


def _goal(name: str, target: str, measured: float | None, unit: str, limit: float, *, at_most: bool) -> Goal:
    if measured is None:
        return Goal(name=name, target=target, measured=None, unit=unit, met=None, shortfall="not measured")
    met = measured <= limit if at_most else measured >= limit
    margin = (limit - measured) / limit if at_most else (measured - limit) / limit
    shortfall = ""
    if not met:
        gap = measured - limit if at_most else limit - measured
        shortfall = f"missed by {gap:.3g} {unit} ({abs(gap) / limit:.0%} of the target)"
    return Goal(
        name=name, target=target, measured=measured, unit=unit, met=met, margin=margin, shortfall=shortfall
    )


def goals(results: Results) -> list[Goal]:
    table = {r.name: r.ratio for r in ratios(results)}
    out = [
        _goal(
            "Worker vs the tutorial loop",
            ">= 40x",
            table.get("worker vs the tutorial loop"),
            "x",
            40,
            at_most=False,
        ),
        _goal(
            "Worker vs FastStream batch",
            ">= 2x",
            table.get("worker vs FastStream batch"),
            "x",
            2,
            at_most=False,
        ),
        _goal(
            "4 workers vs the server ceiling",
            f">= {SCALE_OUT_GOAL:.0%}",
            table["4 worker(s) vs the server ceiling"] * 100
            if "4 worker(s) vs the server ceiling" in table
            else None,
            "%",
            SCALE_OUT_GOAL * 100,
            at_most=False,
        ),
    ]
    # Issue 18: the worker's fixed cost per read (its worst batch size counts), the end-to-end tail and
    # the producer, each against its baseline in the same run.
    per_batch = [ratio for name, ratio in table.items() if name.startswith("worker vs bare loop, batch ")]
    with_json = [ratio for name, ratio in table.items() if name.startswith("worker vs bare loop, JSON ")]
    out += [
        _goal(
            "Worker vs bare loop, worst batch size",
            ">= 0.9x",
            min(per_batch) if per_batch else None,
            "x",
            0.9,
            at_most=False,
        ),
        _goal(
            "Worker vs bare loop, JSON handler, worst batch size",
            ">= 0.9x",
            min(with_json) if with_json else None,
            "x",
            0.9,
            at_most=False,
        ),
        _goal(
            "p99 latency at 50K/s vs bare loop",
            "<= 1.1x",
            table.get("p99 latency at 50,000/s vs bare loop"),
            "x",
            1.1,
            at_most=True,
        ),
        _goal(
            "send_many vs redis-benchmark -P 1000",
            ">= 0.5x",
            table.get("send_many vs redis-benchmark -P 1000"),
            "x",
            0.5,
            at_most=False,
        ),
        _goal(
            "send_many (validated) vs redis-benchmark -P 1000",
            ">= 0.5x",
            table.get("send_many (validated) vs redis-benchmark -P 1000"),
            "x",
            0.5,
            at_most=False,
        ),
    ]
    # Issue 15: a partitioned pipeline costs about what one stream does, per entry (worst count).
    partitioned = [
        ratio for name, ratio in table.items() if name.startswith("CPU per entry (worker + server), ")
    ]
    out.append(
        _goal(
            "Partitioned vs one stream, CPU per entry, worst count",
            "<= 1.15x",
            max(partitioned) if partitioned else None,
            "x",
            1.15,
            at_most=True,
        )
    )
    chosen = best_latencies(results.latency)
    p99 = next((lat.p99_ms for lat in chosen if lat.consumer == "streampipe" and lat.rate == 10_000), None)
    out.append(_goal("p99 latency at 10K/s", "<= 5 ms", p99, "ms", 5, at_most=True))
    operator = results.operator
    reaction = max(operator.reaction_s) if operator and operator.reaction_s else None
    out.append(
        _goal("Operator reaction at pollInterval 1s (worst trial)", "<= 2 s", reaction, "s", 2, at_most=True)
    )
    largest = operator.growth[-1] if operator and operator.growth else None
    at_1000 = largest if largest is not None and largest.pipelines == 1000 else None
    out += [
        _goal(
            "1000 StreamPipelines Ready",
            "<= 60 s",
            at_1000.all_ready_s if at_1000 else None,
            "s",
            60,
            at_most=True,
        ),
        _goal(
            "Operator RSS, 1000 idle pipelines",
            "<= 500 MiB",
            at_1000.idle_rss_mb if at_1000 else None,
            "MiB",
            500,
            at_most=True,
        ),
        _goal(
            "Operator CPU, 1000 idle pipelines",
            "<= 20 % of a core",
            at_1000.idle_cpu_percent if at_1000 else None,
            "%",
            20,
            at_most=True,
        ),
    ]
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
