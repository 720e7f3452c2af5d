"""`make bench`: every benchmark against same-run baselines, then the report.

    python bench/run.py                 # the published run: bench/results/<date>.json + docs/benchmarks.md
    python bench/run.py --quick         # tiny sizes, to check the suite itself (seconds, not minutes)
    python bench/run.py --only throughput,latency --no-docs

It waits (up to --max-wait) for the machine's 1-minute load average to drop to --max-load before it
starts, since other work on a 2-core machine skews absolute figures; ratios come from interleaved
rounds on the same server, so they hold better. The load is recorded at the start, between the
benchmarks and at the end, and the report states it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import goals
import latency
import machine
import memory_footprint
import operator_scaling
import partition_cost
import producer_throughput
import rebalance_pause
import scale_out
import server_paths
import worker_profile
import worker_throughput
from harness import ROOT, BenchServer, progress, running_server
from results_model import Memory, Results, ScaleOut, Settings, Throughput

BENCHMARKS = (
    "memory",
    "throughput",
    "scale_out",
    "latency",
    "producer",
    "partitions",
    "partition_latency",
    "rebalance",
    "profile",
    "operator",
    "server_paths",
)
RESULTS_DIR = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def settings_from(args: argparse.Namespace) -> Settings:
    only = [name for name in (args.only.split(",") if args.only else BENCHMARKS) if name]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"bench/run.py: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.quick:
        return Settings(
            quick=True,
            rounds=1,
            window_s=0.3,
            stream_entries=500_000,  # at ~450K/s a smaller stream is read before the window ends
            batch_sizes=[100],
            latency_rates=[1_000],
            latency_seconds=1.5,
            pipelines=3,
            pipeline_sizes=[2, 3],
            only=only,
        )
    return Settings(
        quick=False,
        rounds=args.rounds,
        window_s=args.window,
        stream_entries=1_000_000,
        batch_sizes=list(worker_throughput.BATCH_SIZES),
        latency_rates=list(latency.RATES),
        latency_seconds=6.0,
        pipelines=1000,
        pipeline_sizes=[10, 100, 1000],
        only=only,
    )


def measure_memory(results: Results, valkey: BenchServer) -> None:
    idle = memory_footprint.worker_idle_rss_mb(valkey)
    entries = 20_000 if results.settings.quick else 200_000
    per_server = [memory_footprint.server_memory(kind, entries) for kind in results.machine.servers]
    results.memory = Memory(worker_idle_rss_mb=idle, servers=per_server)
    for found in per_server:
        progress(f"  {found.server}: {found.mb_per_million:.0f} MiB per million example events")
    progress(f"  worker idle RSS {idle:.1f} MiB")


def measure_throughput(results: Results, valkey: BenchServer) -> None:
    settings = results.settings
    jobs = len(worker_throughput.plan(settings.batch_sizes)) * settings.rounds

    def report(round_no: int, index: int, total: int, sample: worker_throughput.Sample) -> None:
        done = (round_no - 1) * total + index
        what = f"{sample.consumer} batch {sample.batch}"
        progress(f"  [{done}/{jobs}] round {round_no}: {what}: {sample.rate:,.0f}/s")

    samples = worker_throughput.sweep(
        valkey,
        valkey.url,
        batch_sizes=settings.batch_sizes,
        rounds=settings.rounds,
        window=settings.window_s,
        on_sample=report,
    )
    results.throughput = Throughput(server=valkey.version(), samples=samples)


def measure_scale_out(results: Results, valkey: BenchServer) -> None:
    settings = results.settings
    samples, ceilings = scale_out.sweep(
        valkey,
        valkey.url,
        counts=(1, 2) if settings.quick else scale_out.PROCESS_COUNTS,
        rounds=settings.rounds,
        window=settings.window_s,
        ceiling_entries=settings.stream_entries,
    )
    results.scale_out = ScaleOut(server=valkey.version(), batch=1000, samples=samples, ceilings=ceilings)


def measure_latency(results: Results, valkey: BenchServer) -> None:
    """Interleaved rounds of every rate and consumer; the report takes each one's lowest p99 (three
    rounds: a stall of the 2-core machine in one 5-second window moves a p99 by milliseconds)."""
    rounds = 1 if results.settings.quick else 3
    runs = itertools.product(range(1, rounds + 1), results.settings.latency_rates, latency.CONSUMERS)
    for round_no, rate, consumer in runs:
        found = latency.measure(consumer, valkey, valkey.url, rate, results.settings.latency_seconds)
        results.latency.append(found)
        progress(
            f"  round {round_no}/{rounds}: {consumer} at {rate:,}/s: p50 {found.p50_ms:.2f} ms, "
            f"p99 {found.p99_ms:.2f} ms, p99.9 {found.p999_ms:.2f} ms "
            f"(producer lag max {found.producer_max_lag_ms:.1f} ms)"
        )


def measure_producer(results: Results, valkey: BenchServer) -> None:
    count, single = (10_000, 1_000) if results.settings.quick else (200_000, 20_000)
    results.producer = producer_throughput.sweep(
        valkey, count=count, single=single, rounds=results.settings.rounds
    )


def measure_partitions(results: Results, valkey: BenchServer) -> None:
    quick = results.settings.quick
    results.partitions = partition_cost.sweep(
        valkey,
        counts=(4,) if quick else partition_cost.COUNTS,
        perkey_counts=(4,) if quick else partition_cost.COUNTS,
        entries=30_000 if quick else 300_000,
        rounds=results.settings.rounds,
        on_sample=lambda sample: progress("  " + partition_cost.describe(sample)),
    )
    for count in (4,) if quick else partition_cost.IDLE_COUNTS:
        found = partition_cost.idle(valkey, count, seconds=1.0 if quick else 10.0)
        results.partitions_idle.append(found)
        progress(
            f"  idle, {count} partitions: CPU {found.cpu_percent:.2f} % of a core, "
            f"{found.connections} connections"
        )


def measure_partition_latency(results: Results, valkey: BenchServer) -> None:
    quick = results.settings.quick
    results.partition_latency = partition_cost.latency_sweep(
        valkey,
        counts=(4,) if quick else partition_cost.COUNTS,
        seconds=1.5 if quick else partition_cost.LATENCY_SECONDS,
        rounds=results.settings.rounds,
        on_sample=lambda sample: progress("  " + partition_cost.describe_latency(sample)),
    )


def measure_rebalance(results: Results, valkey: BenchServer) -> None:
    """The whole join / leave / kill sequence once per round (a pause depends on where the owners'
    rounds fall, so one sequence is one draw)."""
    for round_no in range(1, results.settings.rounds + 1):
        if results.settings.quick:
            found = rebalance_pause.measure(
                valkey, partitions=4, keys=32, rate=500, lease_ttl_s=1.0, phase_s=2.0, round_no=round_no
            )
        else:
            found = rebalance_pause.measure(valkey, round_no=round_no)
        results.rebalance += found
        for event in found:
            progress("  " + rebalance_pause.describe(event))


def measure_profile(results: Results, valkey: BenchServer) -> None:
    if worker_profile.py_spy() is None:
        results.skipped["profile"] = "py-spy is not installed (it is in the dev extra)"
        return
    # Shorter than the stream lasts at full speed: the worker must be busy for all of the window.
    seconds = 1.0 if results.settings.quick else 2.0
    results.profile = worker_profile.profile(valkey, valkey.url, seconds=seconds)


def measure_operator(results: Results, valkey: BenchServer) -> None:
    why = operator_scaling.available()
    if why:
        results.skipped["operator"] = why
        progress(f"  skipped: {why}")
        return
    quick = results.settings.quick
    results.operator = operator_scaling.run(
        valkey,
        trials=2 if quick else 8,
        sizes=tuple(results.settings.pipeline_sizes or [results.settings.pipelines]),
        idle_window=2.0 if quick else 30.0,
    )


def measure_server_paths(results: Results, valkey: BenchServer) -> None:
    """On a Redis 8.2 server of its own (the other benchmarks use Valkey)."""
    with running_server("redis8") as redis8:
        results.machine.servers["redis8"] = redis8.version()
        results.server_paths = server_paths.measure(redis8, quick=results.settings.quick)


STEPS: dict[str, Callable[[Results, BenchServer], None]] = {
    "memory": measure_memory,
    "throughput": measure_throughput,
    "scale_out": measure_scale_out,
    "latency": measure_latency,
    "producer": measure_producer,
    "partitions": measure_partitions,
    "partition_latency": measure_partition_latency,
    "rebalance": measure_rebalance,
    "profile": measure_profile,
    "operator": measure_operator,
    "server_paths": measure_server_paths,
}
NEEDS_FILLED_STREAM = {"throughput", "scale_out", "profile"}


def run(args: argparse.Namespace) -> Results:
    settings = settings_from(args)
    started = time.time()
    waited = 0.0 if settings.quick else machine.wait_for_quiet(args.max_load, args.max_wait)
    start = machine.load_now("start")
    progress(f"bench: load average {start.load1:.2f} at the start; running {', '.join(settings.only)}")
    with contextlib.ExitStack() as stack:
        valkey = stack.enter_context(running_server("valkey9"))
        servers = {"valkey9": valkey.version()}
        with contextlib.suppress(Exception), running_server("redis7") as redis7:
            servers["redis7"] = redis7.version()
        results = Results(
            date=datetime.date.today().isoformat(),
            started_at=started,
            finished_at=started,
            command=" ".join(shlex.quote(a) for a in ["python", "bench/run.py", *sys.argv[1:]]),
            settings=settings,
            machine=machine.describe(servers),
            load=[start],
            waited_for_quiet_s=waited,
        )
        filled = False
        for name in BENCHMARKS:
            if name not in settings.only:
                continue
            if name in NEEDS_FILLED_STREAM and not filled:
                entries = settings.stream_entries
                progress(f"bench: filling {worker_throughput.STREAM} with {entries:,} example events")
                stack.enter_context(worker_throughput.prepared_stream(valkey.url, entries))
                filled = True
            load = machine.load_now(f"before {name}", (valkey.pid,))
            results.load.append(load)
            progress(f"bench: {name} (load average {load.load1:.2f})")
            try:
                STEPS[name](results, valkey)
            except Exception as exc:
                # One broken benchmark must not cost the other figures of a long run: record it,
                # go on, and fail the run at the end.
                results.failed[name] = f"{type(exc).__name__}: {exc}"
                progress(f"bench: {name} FAILED: {results.failed[name]}")
        results.load.append(machine.load_now("end", (valkey.pid,)))
    results.finished_at = time.time()
    results.ratios = goals.ratios(results)
    results.goals = goals.goals(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite, not the product")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best of each counts)")
    parser.add_argument("--window", type=float, default=1.5, help="seconds measured per throughput sample")
    parser.add_argument(
        "--max-load", type=float, default=1.5, help="wait for the 1-min load average to drop to this"
    )
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for that, at most")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <date>.json goes")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the report to regenerate")
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    results = run(args)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    output = args.results_dir / f"{results.date}{'-quick' if results.settings.quick else ''}.json"
    output.write_text(results.model_dump_json(indent=1) + "\n", encoding="utf-8")
    progress(f"bench: wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    if not args.no_docs:
        import report

        report.write(results, args.docs, output)
        progress(f"bench: wrote {args.docs} and {args.docs.with_suffix('.png')}")
    for goal in results.goals:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal.met]
        measured = "-" if goal.measured is None else f"{goal.measured:.3g} {goal.unit}"
        progress(f"goal {goal.name} {goal.target}: {measured} -> {verdict} {goal.shortfall}")
    progress(f"bench: done in {results.finished_at - results.started_at:.0f}s")
    if results.failed:
        progress(f"bench: {len(results.failed)} benchmark(s) failed: {', '.join(results.failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
