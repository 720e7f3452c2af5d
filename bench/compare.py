"""Before/after: the worker and producer code of a git revision against the working tree, same run.

    python bench/compare.py --base HEAD~1                              # throughput, batch 1..1000
    python bench/compare.py --base HEAD~1 --only latency,scale_out,producer
    python bench/compare.py --base HEAD~1 --only soak --soak-entries 3000000

``worker/`` as it is at ``--base`` (``git archive``) goes first on the PYTHONPATH of the ``base``
processes; ``head`` is the working tree (the editable install). Every measurement takes the two in
turn on one server in interleaved rounds and the best round of each counts, as in ``bench/run.py``,
so the ratio is a same-run figure that a commit message can quote. The published report is still
``make bench``: this answers "what did this change do", nothing else.

- ``throughput``: one worker, no-op handler, per batch size (bench/worker_throughput.py's method);
- ``scale_out``: ``--processes`` workers at batch 1000 in one group;
- ``latency``: XADD to handler done at fixed offered rates (bench/latency.py's method), batch 100;
- ``producer``: ``Producer.send_many`` of the example event, in a child process per variant;
- ``soak``: one worker drains ``--soak-entries`` entries; its RSS is sampled all along, so a collector
  that lets garbage pile up shows as growth. ``--soak-handler`` picks the handler (the default leaves
  a reference cycle behind per entry, the collector's worst case).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency
import machine
import redis
import worker_throughput
from harness import (
    ROOT,
    WORKER_COMMAND,
    BenchServer,
    group_progress,
    log_tail,
    progress,
    rss_bytes,
    running_server,
    spawn,
    stop,
    worker_env,
)

VARIANTS = ("base", "head")
WHAT = ("throughput", "scale_out", "latency", "producer", "soak")


@dataclass(frozen=True)
class Figure:
    """One measured value of one job."""

    name: str
    value: float
    unit: str
    higher_is_better: bool = True


@dataclass
class Row:
    """One compared figure: every round of each variant."""

    name: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def best(self, variant: str) -> float:
        pick = max if self.higher_is_better else min
        return pick(self.values[variant]) if self.values[variant] else float("nan")


@dataclass(frozen=True)
class Job:
    """One measurement: ``what`` at ``param`` (batch, workers, rate, events or entries) of a variant."""

    what: str
    variant: str
    param: int


def export_worker(revision: str, into: Path) -> Path:
    """``worker/`` at ``revision``, unpacked under ``into``; returns the directory for PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "worker"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "worker"


@contextlib.contextmanager
def code_of(variant: str, base_path: Path) -> Iterator[None]:
    """Children started inside import the worker of ``variant`` (PYTHONPATH wins over the editable
    install, whose finder comes last on sys.meta_path)."""
    before = os.environ.get("PYTHONPATH")
    if variant == "base":
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(base_path), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def send_many_rate(url: str, count: int) -> float:
    """Run in a child (``--send-many``), so the producer code comes from that child's PYTHONPATH."""
    import producer_throughput

    events = producer_throughput._events(count)
    stream = f"bench:compare:{secrets.token_hex(3)}"
    return producer_throughput._timed_send_many(url, stream, events, validated=False)


def soak(
    server: BenchServer, handler: str, entries: int, batch: int, every: float = 0.5
) -> tuple[float, list[float]]:
    """One worker drains ``entries`` of the filled stream; returns (entries/s, RSS samples in MiB)."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    stream = worker_throughput.STREAM
    group = f"soak-{secrets.token_hex(3)}"
    client.xgroup_create(stream, group, id="0")
    env = worker_env(server.url, stream, group, consumer="soak1", handler=handler, batch_size=batch)
    rss: list[float] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client.close)
        cleanup.callback(client.xgroup_destroy, stream, group)
        log = cleanup.enter_context(tempfile.TemporaryFile(mode="w+b"))
        proc = spawn(WORKER_COMMAND, env, log)
        cleanup.callback(stop, proc)
        started = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"soak worker exited with {proc.returncode}: {log_tail(log)}")
            acked = group_progress(client, stream, group)[1]
            rss.append(rss_bytes(proc.pid) / 2**20)
            if acked >= entries:
                break
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"soak: only {acked:,} of {entries:,} acked after 900 s")
            time.sleep(every)
        seconds = time.perf_counter() - started
    return entries / seconds, rss


def run_job(job: Job, server: BenchServer, args: argparse.Namespace) -> list[Figure]:
    """Measure one job with the current PYTHONPATH (see ``code_of``)."""
    stream = worker_throughput.STREAM
    if job.what in ("throughput", "scale_out"):
        batch, processes = (job.param, 1) if job.what == "throughput" else (1000, job.param)
        found = worker_throughput.measure(
            "streampipe", batch, server, server.url, stream, processes=processes, window=args.window
        )
        label = f"batch {batch}" if processes == 1 else f"{processes} workers, batch {batch}"
        return [
            Figure(f"throughput, {label}", found.rate, "entries/s"),
            Figure(f"worker CPU per entry, {label}", found.consumer_cpu_us, "µs", False),
        ]
    if job.what == "latency":
        lat = latency.measure("streampipe", server, server.url, job.param, args.latency_seconds)
        at = f"at {job.param:,}/s"
        return [
            Figure(f"latency p50 {at}", lat.p50_ms, "ms", False),
            Figure(f"latency p99 {at}", lat.p99_ms, "ms", False),
            Figure(f"latency p99.9 {at}", lat.p999_ms, "ms", False),
        ]
    if job.what == "producer":
        bench_dir = str(Path(__file__).resolve().parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([bench_dir, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--send-many", server.url, str(job.param)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"send_many ({job.variant}) failed: {done.stderr[-3000:]}")
        rate = float(done.stdout.strip().splitlines()[-1])
        return [Figure(f"Producer.send_many, {job.param:,} example events", rate, "entries/s")]
    rate, rss = soak(server, args.soak_handler, job.param, args.soak_batch)
    what = f"soak, {job.param:,} entries"
    return [
        Figure(f"{what}: rate", rate, "entries/s"),
        Figure(f"{what}: RSS after 0.5 s", rss[min(1, len(rss) - 1)], "MiB", False),
        Figure(f"{what}: RSS peak", max(rss), "MiB", False),
        Figure(f"{what}: RSS at the end", rss[-1], "MiB", False),
    ]


def plan(args: argparse.Namespace, what: Sequence[str]) -> list[Job]:
    """One round: every job of every variant, base and head next to each other."""
    params: dict[str, list[int]] = {
        "throughput": [int(b) for b in args.batches.split(",") if b],
        "scale_out": [args.processes],
        "latency": [int(r) for r in args.rates.split(",") if r],
        "producer": [args.producer_events],
        "soak": [args.soak_entries],
    }
    return [Job(name, variant, param) for name in what for param in params[name] for variant in VARIANTS]


def table(rows: Sequence[Row], base: str) -> str:
    lines = [
        f"| figure (best round) | base {base} | head | head / base |",
        "| :--- | ---: | ---: | ---: |",
    ]
    for row in rows:
        old, new = row.best("base"), row.best("head")
        ratio = new / old if old else float("nan")
        note = "" if row.higher_is_better else " (lower is better)"
        lines.append(f"| {row.name} | {old:,.2f} {row.unit} | {new:,.2f} {row.unit} | {ratio:.2f}x{note} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="HEAD", help="git revision whose worker/ is the 'before'")
    parser.add_argument("--only", default="throughput", help=f"comma-separated subset of: {', '.join(WHAT)}")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best of each counts)")
    parser.add_argument("--window", type=float, default=1.5, help="seconds measured per throughput sample")
    parser.add_argument("--batches", default="1,10,100,1000", help="throughput batch sizes")
    parser.add_argument("--processes", type=int, default=4, help="workers in the scale-out comparison")
    parser.add_argument("--rates", default="1000,10000,50000", help="latency offered rates")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--producer-events", type=int, default=200_000)
    parser.add_argument("--stream-entries", type=int, default=1_000_000, help="the pre-filled stream")
    parser.add_argument("--soak-entries", type=int, default=3_000_000)
    parser.add_argument("--soak-handler", default="probe_handlers:cyclic_garbage")
    parser.add_argument("--soak-batch", type=int, default=1000)
    parser.add_argument(
        "--max-load", type=float, default=1.5, help="wait for the load average to drop to this"
    )
    parser.add_argument("--max-wait", type=float, default=300)
    parser.add_argument("--send-many", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.send_many:
        print(send_many_rate(args.send_many[0], int(args.send_many[1])))
        return 0
    what = [name for name in args.only.split(",") if name]
    unknown = sorted(set(what) - set(WHAT))
    if unknown:
        raise SystemExit(f"bench/compare.py: unknown {unknown}; choose from {', '.join(WHAT)}")
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    machine.wait_for_quiet(args.max_load, args.max_wait)
    load_start = os.getloadavg()[0]
    rows: dict[str, Row] = {}
    jobs = plan(args, what)
    with contextlib.ExitStack() as stack:
        base_path = export_worker(revision, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        server = stack.enter_context(running_server("valkey9"))
        version = server.version()
        if {"throughput", "scale_out", "soak"} & set(what):
            entries = max(args.stream_entries, args.soak_entries if "soak" in what else 0)
            progress(f"compare: filling {worker_throughput.STREAM} with {entries:,} example events")
            stack.enter_context(worker_throughput.prepared_stream(server.url, entries))
        for round_no in range(1, args.rounds + 1):
            for job in jobs:
                with code_of(job.variant, base_path):
                    figures = run_job(job, server, args)
                for figure in figures:
                    row = rows.setdefault(figure.name, Row(figure.name, figure.unit, figure.higher_is_better))
                    row.values[job.variant].append(figure.value)
                shown = ", ".join(f"{f.name} {f.value:,.2f} {f.unit}" for f in figures)
                progress(f"compare: round {round_no}/{args.rounds}: {job.variant}: {shown}")
    load_end = os.getloadavg()[0]
    print(table(list(rows.values()), revision))
    print(
        f"\n{args.rounds} interleaved round(s) on one server ({version}); load average "
        f"{load_start:.2f} at the start, {load_end:.2f} at the end."
        + (f" Soak: {args.soak_handler}, batch {args.soak_batch}." if "soak" in what else "")
    )
    for row in rows.values():
        old, new = statistics.median(row.values["base"]), statistics.median(row.values["head"])
        print(f"- median of the rounds, {row.name}: {old:,.2f} -> {new:,.2f} {row.unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
