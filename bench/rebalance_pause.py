"""PerKey rebalance: how long a partition that changes owner stops, next to the lease ttl.

    (in make bench: bench/run.py --only rebalance)

One PerKey pipeline (``STREAMPIPE_ORDERING=PerKey``, 16 partitions, key field ``k`` with 256 keys,
``STREAMPIPE_LEASE_TTL`` 3 s) under a steady open-loop load (bench/latency.py's producer: each entry
carries its scheduled time), read by 2 workers. Then, a phase apart:

- **join**: a third worker starts; the others hand it its share (close, ack, release);
- **leave**: a worker gets SIGTERM; it closes its partitions and releases their leases;
- **kill**: a worker gets SIGKILL; its partitions wait for their leases to run out.

Each worker's handler (``probe_handlers:record_completion``) records, per entry, when it was done,
its scheduled time and its partition into a shared memory map, which survives a SIGKILL. For each
event: the partitions whose owner differs before the event and at the end of its phase (moved), the
longest gap between two completions of a moved partition (the pause), the same for the partitions
that stayed (what a gap is without a hand-over), and the end-to-end latency of the entries scheduled
during the phase (first completion of each: a redelivery after a kill does not count twice).
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import redis
from harness import WORKER_COMMAND, BenchServer, log_tail, progress, running_server, spawn, stop, worker_env
from latency import Route, percentile, producer_stats, start_producer
from partition_cost import acked
from probe_handlers import COMPLETION
from streampipe_worker.ownership import generation_key, members_key, owner_key
from streampipe_worker.partitions import PartitionLayout

EVENTS = ("join", "leave", "kill")
PARTITIONS = 16
WORKERS = 2
KEYS = 256
KEY_FIELD = "k"
RATE = 2_000
LEASE_TTL_S = 3.0
WARMUP_S = 5.0  # before the first event; its first 2 s are start-up, not the steady state
STEADY_FROM_S = 2.0
EDGE_NS = 250_000_000  # a window's latencies are of the entries scheduled from 0.25 s before its event


class Completion(NamedTuple):
    """One handler call that finished: when (CLOCK_MONOTONIC ns), the entry's scheduled send time,
    its partition and the worker that ran it."""

    done_ns: int
    scheduled_ns: int
    partition: int
    worker: str


@dataclass
class RebalancePause:
    """One event of the PerKey rebalance benchmark."""

    event: str  # join | leave | kill
    lease_ttl_s: float
    partitions: int
    keys: int  # distinct values of the key field
    workers_before: int
    workers_after: int
    rate: int  # offered entries/s
    phase_s: float  # the window after the event
    moved: int  # partitions whose owner changed
    pause_s: float  # the longest gap between completions of a moved partition
    stayed_gap_s: float  # the longest gap of a partition that kept its owner, same window
    samples: int  # entries scheduled in the window
    p50_ms: float
    p99_ms: float
    max_ms: float
    steady_p99_ms: float  # the entries scheduled before the first event (after STEADY_FROM_S)
    round: int = 1


# --- pure: what the records say ---------------------------------------------------------------------


def read_completions(data: bytes, worker: str) -> list[Completion]:
    """The records one worker wrote (an all-zero record was never written)."""
    found = []
    for done, scheduled, partition in COMPLETION.iter_unpack(data[: len(data) - len(data) % COMPLETION.size]):
        if done:
            found.append(Completion(done, scheduled, partition, worker))
    return found


def owners_at(completions: Iterable[Completion], at_ns: int) -> dict[int, str]:
    """Per partition, the worker of its last completion before ``at_ns``."""
    last: dict[int, Completion] = {}
    for c in completions:
        if c.done_ns < at_ns and (c.partition not in last or c.done_ns > last[c.partition].done_ns):
            last[c.partition] = c
    return {partition: c.worker for partition, c in last.items()}


def moved_partitions(completions: Sequence[Completion], at_ns: int, until_ns: int) -> set[int]:
    """The partitions whose owner before ``at_ns`` differs from their owner at ``until_ns``."""
    before, after = owners_at(completions, at_ns), owners_at(completions, until_ns)
    return {p for p, worker in after.items() if p in before and before[p] != worker}


def longest_gaps(completions: Iterable[Completion], start_ns: int, end_ns: int) -> dict[int, int]:
    """Per partition, the longest time (ns) between two consecutive completions in [start, end], the
    window's bounds counted as completions (a partition that stops until the end shows that gap).
    Several workers' completions of one partition count alike: the gap is the partition's."""
    times: dict[int, list[int]] = {}
    for c in completions:
        if start_ns <= c.done_ns <= end_ns:
            times.setdefault(c.partition, []).append(c.done_ns)
    gaps = {}
    for partition, found in times.items():
        ordered = [start_ns, *sorted(found), end_ns]
        gaps[partition] = max(b - a for a, b in itertools.pairwise(ordered))
    return gaps


def window_latencies(completions: Iterable[Completion], start_ns: int, end_ns: int) -> list[int]:
    """Sorted latencies (ns, done - scheduled) of the entries scheduled in [start, end), each at its
    first completion: a redelivered entry counts once."""
    first: dict[tuple[int, int], int] = {}
    for c in completions:
        if start_ns <= c.scheduled_ns < end_ns:
            key = (c.scheduled_ns, c.partition)
            first[key] = min(first.get(key, c.done_ns), c.done_ns)
    return sorted(done - scheduled for (scheduled, _), done in first.items())


@dataclass(frozen=True)
class RebalanceSetup:
    """What one run held fixed."""

    partitions: int
    keys: int
    workers: int  # before the first event
    rate: int
    lease_ttl_s: float
    round: int = 1


WORKERS_AFTER = {"join": (0, 1), "leave": (1, 0), "kill": (0, -1)}  # (before, after) - the setup's count


def summarize(
    completions: Sequence[Completion],
    event: str,
    window: tuple[int, int],
    steady: Sequence[int],
    setup: RebalanceSetup,
) -> RebalancePause:
    """The figures of one event whose phase runs over ``window`` (ns: the event, the next one)."""
    at_ns, until_ns = window
    moved = moved_partitions(completions, at_ns, until_ns)
    gaps = longest_gaps(completions, at_ns - 500_000_000, until_ns)
    # The entries scheduled just before the event are the ones it catches in flight; those just
    # before the next event belong to that one.
    latencies = window_latencies(completions, at_ns - EDGE_NS, until_ns - EDGE_NS)
    stayed = [gap for partition, gap in gaps.items() if partition not in moved]
    before, after = (setup.workers + step for step in WORKERS_AFTER[event])
    return RebalancePause(
        event=event,
        lease_ttl_s=setup.lease_ttl_s,
        partitions=setup.partitions,
        keys=setup.keys,
        workers_before=before,
        workers_after=after,
        rate=setup.rate,
        phase_s=(until_ns - at_ns) / 1e9,
        moved=len(moved),
        pause_s=max((gaps[p] for p in moved if p in gaps), default=0) / 1e9,
        stayed_gap_s=max(stayed, default=0) / 1e9,
        samples=len(latencies),
        p50_ms=percentile(latencies, 0.50) if latencies else 0.0,
        p99_ms=percentile(latencies, 0.99) if latencies else 0.0,
        max_ms=latencies[-1] / 1e6 if latencies else 0.0,
        steady_p99_ms=percentile(steady, 0.99) if steady else 0.0,
        round=setup.round,
    )


def summarize_run(
    completions: Sequence[Completion],
    events: Sequence[tuple[str, int]],
    seconds: float,
    setup: RebalanceSetup,
) -> list[RebalancePause]:
    """Each event's figures: its phase runs to the next event, the last one's to the end of the load
    (``seconds`` after the first entry's schedule)."""
    first = min(c.scheduled_ns for c in completions)
    steady = window_latencies(completions, first + int(STEADY_FROM_S * 1e9), events[0][1] - EDGE_NS)
    ends = [at for _, at in events[1:]] + [first + int(seconds * 1e9)]
    return [
        summarize(completions, event, (at, until), steady, setup)
        for (event, at), until in zip(events, ends, strict=True)
    ]


# --- the run ----------------------------------------------------------------------------------------


def routes(layout: PartitionLayout, keys: int) -> list[Route]:
    """Key ``c-j`` to its partition, with the partition's index in field ``p`` for the recorder."""
    found: list[Route] = []
    for j in range(keys):
        key = f"c-{j}"
        partition = layout.partition_for(key)
        found.append((layout.stream(partition), {KEY_FIELD: key, "p": str(partition)}))
    return found


@dataclass
class _Worker:
    name: str
    proc: subprocess.Popen[bytes]
    records: Path
    log: IO[bytes]


def _owners(client: redis.Redis, layout: PartitionLayout) -> list[str | None]:
    values = client.mget([owner_key(layout, i) for i in range(layout.count)])
    return [value.split("|", 1)[0] if value else None for value in values]


def _wait_owned_by(
    client: redis.Redis, layout: PartitionLayout, names: set[str], workers: list[_Worker]
) -> None:
    deadline = time.monotonic() + 60
    while set(owners := _owners(client, layout)) != names:
        for worker in workers:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited: {log_tail(worker.log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the partitions were not shared by {sorted(names)} in 60 s: {owners}")
        time.sleep(0.05)


def measure(
    server: BenchServer,
    *,
    partitions: int = PARTITIONS,
    keys: int = KEYS,
    rate: int = RATE,
    lease_ttl_s: float = LEASE_TTL_S,
    phase_s: float | None = None,
    round_no: int = 1,
) -> list[RebalancePause]:
    """Join, graceful leave and SIGKILL in turn on one PerKey pipeline under a steady load."""
    # A kill's partitions wait up to ttl + ttl/3 (the expiry, then the next owner's round); then a
    # couple of seconds of settled flow, so the window ends on the new layout.
    phase = phase_s if phase_s is not None else lease_ttl_s * 4 / 3 + 2.5
    seconds = WARMUP_S + len(EVENTS) * phase
    base = f"bench-rebalance-{secrets.token_hex(3)}"
    layout = PartitionLayout(base, partitions, key=KEY_FIELD)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    for stream in layout.streams:
        client.xgroup_create(stream, "g", id="0", mkstream=True)
    workdir = Path(tempfile.mkdtemp(prefix="streampipe-bench-rebalance-"))
    capacity = int(rate * seconds * 2) + 1000  # room for redeliveries

    def start(name: str) -> _Worker:
        env = worker_env(
            server.url, base, "g", consumer=name, handler="probe_handlers:record_completion", batch_size=100,
            partitions=str(partitions), ordering="PerKey", partition_key=KEY_FIELD,
            lease_ttl=f"{round(lease_ttl_s * 1000)}ms",
        )  # fmt: skip
        records = workdir / f"{name}.bin"
        env.update({"BENCH_COMPLETIONS_FILE": str(records), "BENCH_COMPLETIONS_MAX": str(capacity)})
        log = (workdir / f"{name}.log").open("w+b")
        return _Worker(name, spawn(WORKER_COMMAND, env, log), records, log)

    workers = [start(f"w{i + 1}") for i in range(WORKERS)]
    events: list[tuple[str, int]] = []
    producer: subprocess.Popen[str] | None = None
    try:
        _wait_owned_by(client, layout, {w.name for w in workers}, workers)
        producer = start_producer(server.url, routes(layout, keys), rate, seconds)
        started = time.monotonic()
        time.sleep(WARMUP_S)
        events.append(("join", time.monotonic_ns()))
        workers.append(start(f"w{WORKERS + 1}"))
        time.sleep(phase)
        events.append(("leave", time.monotonic_ns()))
        workers[0].proc.send_signal(signal.SIGTERM)
        time.sleep(phase)
        events.append(("kill", time.monotonic_ns()))
        workers[1].proc.send_signal(signal.SIGKILL)
        stats = producer_stats(producer, seconds - (time.monotonic() - started) + 60)
        deadline = time.monotonic() + 60
        while acked(client, layout.streams, "g") < stats["sent"]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"entries left unprocessed 60 s after the load ended: {log_tail(workers[-1].log)}"
                )
            time.sleep(0.05)
    finally:
        if producer is not None and producer.poll() is None:  # a failure mid-run: stop the load too
            producer.kill()
            producer.wait()
        for worker in workers:
            stop(worker.proc)
            worker.log.close()
        client.delete(*layout.streams, *(f"{s}:dlq" for s in layout.streams), members_key(layout))
        client.delete(*(key(layout, i) for i in range(partitions) for key in (owner_key, generation_key)))
        client.close()
    completions = [c for w in workers for c in read_completions(w.records.read_bytes(), w.name)]
    shutil.rmtree(workdir, ignore_errors=True)
    setup = RebalanceSetup(
        partitions=partitions, keys=keys, workers=WORKERS, rate=rate, lease_ttl_s=lease_ttl_s, round=round_no
    )
    return summarize_run(completions, events, seconds, setup)


def describe(found: RebalancePause) -> str:
    return (
        f"round {found.round}: {found.event} ({found.workers_before} -> {found.workers_after} workers): "
        f"{found.moved} partitions moved, pause {found.pause_s:.2f} s (lease ttl {found.lease_ttl_s:g} s; "
        f"stayed {found.stayed_gap_s:.2f} s), "
        f"p99 {found.p99_ms:.1f} ms (steady {found.steady_p99_ms:.1f} ms), max {found.max_ms:.0f} ms"
    )


def main() -> None:
    with running_server("valkey9") as server:
        for found in measure(server):
            progress("  " + describe(found))


if __name__ == "__main__":
    main()
