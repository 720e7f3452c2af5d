"""``streampipe up``: a StreamPipeline on one machine, with worker processes instead of pods.

The decisions are the operator's own: every tick (half a second) runs its housekeeping pass
(``housekeeping.run_pass``: groups, scaling on lag + pending, protected retention, consumer cleanup),
with this pipeline as the workload backend: replica counts go to a
:class:`~streampipe_operator.local.processes.ReplicaSet` of ``python -m streampipe_worker`` processes
instead of a Deployment's ``/scale``, consumers of running workers are known by name, and what the pass
did goes to a live view instead of Events and status. Then the tick reads the workers' own counters
from their ``/metrics`` (retries are counted nowhere else) and the dead letters added since the last tick.

The run (``run``) ends after ``--duration`` or on Ctrl-C: the demo producer stops, the loop keeps
scaling until every group's backlog is zero (at most ``--drain-timeout``; a second Ctrl-C skips the
wait), then the workers get SIGTERM and finish or hand back their in-flight entries.

**The summary, and where each figure comes from** (all measured, none assumed; the arithmetic is
``accounting.account``, a pure function):

- produced: the stream's ``entries-added`` counter, end minus start (every XADD, replays included);
- dead-lettered: entries added to the dead-letter stream during the run, by group and exception class
  (read back from the envelopes);
- processed, per group: the group's settled entries (backlog at the start + produced - backlog at the
  end) minus its dead letters, i.e. entries the group acknowledged after a successful handler call;
- retried: the workers' ``streampipe_worker_retried_total`` counters, read from every replica's
  metrics endpoint each tick, right before a scale-down, every 10 ms while a worker shuts down, and
  once more after the drain. What a worker counts in its last milliseconds (settling its entry in
  flight at SIGTERM) can still go unread, so this may fall short by a few on a scaled-down worker;
- latency: from a completion record a handler writes to ``<stream>:done`` (the quickstart's do, see
  ``examples/quickstart/quickstart_shop/completions.py``): the record's ``done_ms`` minus the
  millisecond timestamp of the entry's ID. Without records, latency is reported as not measured.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streampipe_operator.api import GroupSpec, Reason, StreamPipeline
from streampipe_operator.engine.housekeeping import PassReport, PipelineMemory, run_pass
from streampipe_operator.engine.spec_mapping import (
    DEFAULT_TERMINATION_GRACE,
)
from streampipe_operator.local.accounting import (
    Baseline,
    GroupFacts,
    StreamPosition,
    account,
    backlog_settled,
)
from streampipe_operator.local.counters import CounterBook, WorkerCounters, scrape_counters
from streampipe_operator.local.demo import DemoCounts, DemoProducer
from streampipe_operator.local.embedded import EmbeddedValkey
from streampipe_operator.local.keys import PipelineKeys, together
from streampipe_operator.local.models import (
    EventKind,
    GroupView,
    LogEvent,
    PipelineIdentity,
    ScaleEvent,
    Snapshot,
    UpSummary,
)
from streampipe_operator.local.processes import LocalRuntime, ReplicaSet, ReplicaSpec
from streampipe_operator.local.workers import preflight, wait_ready, worker_env
from streampipe_operator.plan.backlog import group_backlog
from streampipe_operator.plan.observed import StreamObservation
from streampipe_operator.plan.scaling import ScalingDecision
from streampipe_operator.streams.admin import RedisAdmin, RedisAdminError
from streampipe_operator.streams.targets import CommandError, redact_url
from streampipe_worker.deadletter import DeadLetterEnvelope

READY_TIMEOUT = 90.0
RATE_WINDOW = 3.0
EVENTS_KEPT = 200

# How the live view shows what a housekeeping pass reports (reasons absent here are not shown).
_EVENT_KINDS: dict[Reason, EventKind] = {
    Reason.GROUP_CREATED: "group",
    Reason.GROUP_RECREATED: "warning",
    Reason.GROUP_DESTROYED: "group",
    Reason.GROUP_ORPHANED: "info",
    Reason.RETENTION_HELD: "trim",
    Reason.TRIMMED: "trim",
    Reason.RETENTION_FAILED: "warning",
    Reason.CONSUMER_REMOVED: "consumer",
    Reason.CONSUMER_CLEANUP_FAILED: "warning",
    Reason.LAYOUT_GROWN: "info",
    Reason.LAYOUT_SWITCH_RETIRED: "info",
    Reason.LAYOUT_RECORD_FAILED: "warning",
}


# --- the pipeline ---------------------------------------------------------------------------------


class _GroupRun:
    """What the loop keeps per group between ticks."""

    def __init__(self, spec: GroupSpec, replicas: ReplicaSet) -> None:
        self.spec = spec
        self.replicas = replicas
        self.max_replicas = 0
        self.final_replicas = 0
        self.settled_samples: deque[tuple[float, int]] = deque()


class LocalPipeline:
    """One StreamPipeline run locally: workers (the housekeeping pass's backend), accounting."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        *,
        client: Any,
        redis_url: str,
        runtime: LocalRuntime,
        python_path: list[Path],
        embedded: EmbeddedValkey | None,
    ) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.spec
        self.name = pipeline.metadata.name or "pipeline"
        self.client = client
        self.admin = RedisAdmin(client)
        self.redis_url = redis_url
        self.runtime = runtime
        self.python_path = python_path
        self.embedded = embedded
        self.stream = self.spec.stream
        self.keys = PipelineKeys(self.spec)
        self.dead_letter = self.keys.dead_letter
        self.completions = self.keys.completions
        self._completions_start: dict[str, StreamPosition] = {}
        self.server = ""
        self.groups: dict[str, _GroupRun] = {}
        self.counters = CounterBook()
        self.events: deque[LogEvent] = deque(maxlen=EVENTS_KEPT)
        self.scale_events: list[ScaleEvent] = []
        self.notes: list[str] = []
        self.trimmed = 0
        self.started_at = time.monotonic()
        self.observation: StreamObservation | None = None
        self.memory = PipelineMemory()
        self._group_problems: str | None = None
        self._unreachable = False
        self._followers: set[asyncio.Task[None]] = set()
        self.baseline = Baseline()
        self._dead_seen: dict[str, str] = dict.fromkeys(self.keys.dead_letters, "0-0")
        self._dead_start: dict[str, StreamPosition] = {}
        self._produced_samples: deque[tuple[float, int]] = deque()
        self.on_event: Callable[[LogEvent], None] | None = None

    # --- events ------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def log(self, kind: EventKind, text: str) -> None:
        event = LogEvent(at=round(self.elapsed(), 1), kind=kind, text=text)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # --- start -------------------------------------------------------------------------------------

    async def start(self, file: Path) -> list[str]:
        """Check the server, create the groups, start and wait for the first workers. What happens is
        logged as events; the lines returned are hints for the person (another terminal's commands)."""
        try:
            await self.admin.ping()
            caps = await self.admin.capabilities()
        except RedisAdminError as exc:
            raise CommandError(str(exc)) from exc
        self.server = caps.describe()
        if self.embedded is not None:
            where = f"data in {self.embedded.data_dir}, persistence {self.embedded.persistence}"
            self.log("info", f"embedded {self.server} at {self.redis_url} ({where})")
        else:
            self.log("info", f"{self.server} at {redact_url(self.redis_url)}")
        if not caps.aof_enabled:
            self.notes.append(
                "the server runs without AOF: a crash of the server loses the stream "
                "(--persistence aof for the embedded one)"
            )
        report = await self._housekeep()  # groups, and the replicas each group's workers start with
        if report.group_problems:
            raise CommandError(self._group_problems or "")
        await self._baseline()
        for group in self.spec.groups:
            await self._start_group(group, report.decisions.get(group.name))
        await wait_ready({name: run.replicas for name, run in self.groups.items()})
        counts = ", ".join(f"{name} {run.replicas.status().ready}" for name, run in self.groups.items())
        self.log("info", f"workers ready ({counts}); logs in {self.runtime.run_dir}")
        # The run's clock starts now; what happened while starting happened at 0s.
        self.started_at = time.monotonic()
        for event in self.events:
            event.at = 0.0
        for scale in self.scale_events:
            scale.at = 0.0
        target = f"--redis-url {redact_url(self.redis_url)} -f {file}"
        return [
            "in another terminal:",
            f"  streampipe status {target}",
            f"  streampipe dlq list {target}",
        ]

    async def _observe(self) -> StreamObservation:
        try:
            observation = await self.keys.observe(self.admin)
            self.observation = observation
        except RedisAdminError as exc:
            raise CommandError(str(exc)) from exc
        return self.observation

    async def _housekeep(self) -> PassReport:
        """One housekeeping pass with these workers as its backend; what it did goes to the event log."""
        try:
            report = await run_pass(self.spec, self.admin, self, self.memory)
        except RedisAdminError as exc:
            raise CommandError(str(exc)) from exc
        self.observation = report.observation
        for event in report.events:
            kind = _EVENT_KINDS.get(event.reason)
            if kind is not None:
                self.log(kind, event.message)
        if report.trimmed is not None:
            self.trimmed += report.trimmed["stream"]
        problems = "; ".join(f"group {g}: {m}" for g, m in sorted(report.group_problems.items())) or None
        if problems is not None and problems != self._group_problems:
            self.log("warning", problems)
        self._group_problems = problems
        return report

    async def _baseline(self) -> None:
        """Where the counters stand before any worker runs: the summary subtracts these."""
        observation = await self._observe()
        self._dead_start = {key: await self._stream_position(key) for key in self.keys.dead_letters}
        self.baseline = Baseline.of(
            observation,
            dead_letter=together(self._dead_start.values()),
            completions=StreamPosition(),
        )
        self._dead_seen = {key: position.last_id for key, position in self._dead_start.items()}
        self._completions_start = {key: await self._stream_position(key) for key in self.keys.completion_keys}

    async def _stream_position(self, key: str) -> StreamPosition:
        try:
            return StreamPosition.of(await self.admin.stream_state(key))
        except RedisAdminError as exc:
            raise CommandError(str(exc)) from exc

    async def _start_group(self, group: GroupSpec, decision: ScalingDecision | None) -> None:
        env, notes = worker_env(self.spec, group, redis_url=self.redis_url, python_path=self.python_path)
        self.notes += notes
        await preflight(group, env, self.python_path)
        template = group.template
        grace = (
            template.termination_grace_period_seconds
            if template is not None and template.termination_grace_period_seconds is not None
            else DEFAULT_TERMINATION_GRACE
        )
        spec = ReplicaSpec.for_worker(
            f"{self.name}-{group.name}", env, inherit_env=False, termination_grace=grace
        )
        run = _GroupRun(group, self.runtime.replica_set(spec))
        self.groups[group.name] = run
        observed = self.observation.group(group.name) if self.observation is not None else None
        if group.scaling.mode == "none":
            run.replicas.scale(group.scaling.min_replicas)
            self.log("scale", f"{group.name}: {group.scaling.min_replicas} workers (scaling.mode none)")
        elif observed is None or decision is None:  # its workers wait (not ready) until it exists
            run.replicas.scale(max(group.scaling.min_replicas, 1))
            self.log("warning", f"group {group.name} is missing on the server; starting its workers anyway")
        elif decision.desired_replicas:
            await self.set_replicas(group.name, decision, 0)

    # --- the loop ----------------------------------------------------------------------------------

    def current_replicas(self, group: str) -> int | None:
        """WorkloadBackend: the group's replica count (None before its workers are started)."""
        run = self.groups.get(group)
        return run.replicas.desired if run is not None else None

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        """WorkloadBackend: scale the group's worker processes, and record the change."""
        run = self.groups[group]
        down = decision.desired_replicas < current
        if down:
            # The workers about to get SIGTERM report their counters one last time first; what
            # they count while shutting down (their entry in flight) may still go unread.
            await self._scrape()
        run.replicas.scale(decision.desired_replicas)
        if down:
            self._followers.add(asyncio.create_task(self._follow_terminating(run)))
            self._followers = {task for task in self._followers if not task.done()}
        self.scale_events.append(
            ScaleEvent(
                at=round(self.elapsed(), 1),
                group=group,
                from_replicas=current,
                to_replicas=decision.desired_replicas,
                reason=decision.reason,
            )
        )
        self.log("scale", decision.reason)

    def live_consumers(self) -> set[str]:
        """WorkloadBackend: every worker process is a consumer named after its replica."""
        return {replica.name for run in self.groups.values() for replica in run.replicas.status().replicas}

    async def tick(self) -> None:
        """One pass of the loop (see the module docstring). While the server cannot be reached nothing
        is decided (replicas stay as they are, as the operator does) and the pass is retried."""
        try:
            report = await self._housekeep()
        except CommandError as exc:
            if not self._unreachable:
                self._unreachable = True
                self.log("warning", f"{exc}; holding the workers as they are until it answers")
            return
        if self._unreachable:
            self._unreachable = False
            self.log("info", "the server answers again")
        self._sample(report.observation, time.monotonic())
        await self._new_dead_letters()
        await self._scrape()
        for event in self.runtime.drain_events():
            if event.kind in ("exited", "killed", "failed-to-start"):
                self.log("worker", f"{event.replica}: {event.message}")

    def _sample(self, observation: StreamObservation, now: float) -> None:
        """The samples the rates come from, and each group's highest replica count."""
        for name, run in self.groups.items():
            group = observation.group(name)
            status = run.replicas.status()
            run.max_replicas = max(run.max_replicas, status.running, run.replicas.desired)
            if group is not None and group.entries_read is not None:
                run.settled_samples.append((now, group.entries_read - group.pending))
                _trim_window(run.settled_samples, now)
        stream = observation.stream
        if stream is not None and stream.entries_added is not None:
            self._produced_samples.append((now, stream.entries_added))
            _trim_window(self._produced_samples, now)

    async def _new_dead_letters(self) -> None:
        for key in self.keys.dead_letters:
            await self._new_dead_letters_in(key)

    async def _new_dead_letters_in(self, key: str) -> None:
        try:
            entries = await self.admin.entries_after(key, self._dead_seen[key], count=20)
        except RedisAdminError as exc:
            self.log("warning", str(exc))
            return
        for entry_id, fields in entries:
            self._dead_seen[key] = entry_id
            try:
                envelope = DeadLetterEnvelope.from_fields(fields)
            except (ValueError, TypeError):
                continue
            kind = envelope.short_exception or "error"
            self.log(
                "dead-letter",
                f"{envelope.group}: {envelope.original_id} after {envelope.deliveries} "
                f"deliveries: {kind}: {envelope.error[:120]}",
            )

    async def _scrape(self, *, terminating_only: bool = False) -> None:
        targets = [
            (name, replica.name, replica.port)
            for name, run in self.groups.items()
            for replica in run.replicas.status().replicas
            if replica.port is not None
            and replica.pid is not None
            and (replica.phase == "terminating" or not terminating_only)
        ]
        results = await asyncio.gather(*(asyncio.to_thread(scrape_counters, port) for _, _, port in targets))
        for (group, replica, _), values in zip(targets, results, strict=True):
            if values is not None:
                self.counters.record(group, replica, values)

    async def _follow_terminating(self, run: _GroupRun) -> None:
        """Read the counters of workers shutting down until they are gone: after SIGTERM a worker
        settles its entry in flight, and what that adds is only readable until it exits."""
        deadline = time.monotonic() + run.replicas.spec.termination_grace + 5.0
        while time.monotonic() < deadline:
            if not any(r.phase == "terminating" for r in run.replicas.status().replicas):
                return
            await self._scrape(terminating_only=True)
            await asyncio.sleep(0.01)

    def backlog_settled(self) -> bool:
        """Every group's backlog is known and zero."""
        return self.observation is not None and backlog_settled(self.observation, self.groups)

    # --- views -------------------------------------------------------------------------------------

    def identity(self) -> PipelineIdentity:
        return PipelineIdentity(
            pipeline=self.name,
            stream=self.stream,
            dead_letter=self.dead_letter,
            server=self.server,
            redis_url=redact_url(self.redis_url),
            embedded=self.embedded is not None,
        )

    def snapshot(self, phase: str, duration: float | None, demo: DemoProducer | None) -> Snapshot:
        observation = self.observation
        stream = observation.stream if observation is not None else None
        groups: list[GroupView] = []
        now = time.monotonic()
        # Rates describe a running loop; once the workers stop, an old window's rate would mislead.
        live = phase in ("running", "draining")
        for name, run in self.groups.items():
            throughput = _rate(run.settled_samples, now) if live else None
            groups.append(_group_view(name, run, observation, self.counters.totals(name), throughput))
        added = stream.entries_added if stream is not None and stream.entries_added is not None else None
        return Snapshot(
            **self.identity().model_dump(),
            persistence=self.embedded.persistence if self.embedded is not None else None,
            phase=phase,
            elapsed=self.elapsed(),
            duration=duration,
            stream_length=stream.length if stream is not None else 0,
            produced=max(0, (added if added is not None else 0) - self.baseline.stream.added),
            produce_rate=_rate(self._produced_samples, now) if live else None,
            dead_letters=(observation.dead_letter_length or 0) if observation is not None else 0,
            trimmed=self.trimmed,
            groups=groups,
            events=list(self.events)[-12:],
            demo=demo.counts.model_copy() if demo is not None else None,
            demo_phase=demo.phase if demo is not None else None,
        )

    # --- the end -----------------------------------------------------------------------------------

    async def stop_workers(self) -> None:
        await self._scrape()  # the last counts of every worker, before they go
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        for run in self.groups.values():
            run.final_replicas = run.replicas.desired
        graces = [run.replicas.spec.termination_grace for run in self.groups.values()]
        await asyncio.to_thread(self.runtime.close, max(graces, default=DEFAULT_TERMINATION_GRACE))

    async def summary(self, seconds: float, demo: DemoCounts | None) -> UpSummary:
        """Read the end state (through the admin layer) and account for every entry (``accounting``)."""
        observation = await self._observe()
        try:
            dead_letter_end = together(
                [StreamPosition.of(await self.admin.stream_state(key)) for key in self.keys.dead_letters]
            )
            dead_letters = [
                fields
                for key in self.keys.dead_letters
                async for _, fields in self.admin.scan_after(key, self._dead_start[key].last_id)
            ]
            completions = [
                {**fields, "stream": key}  # entry IDs are per stream: latencies() tells them apart
                for key in self.keys.completion_keys
                async for _, fields in self.admin.scan_after(key, self._completions_start[key].last_id)
            ]
        except RedisAdminError as exc:
            raise CommandError(str(exc)) from exc
        result = account(
            self.baseline,
            observation,
            dead_letter_end=dead_letter_end,
            dead_letters=dead_letters,
            completions=completions,
            groups=[
                GroupFacts(
                    name=name,
                    max_replicas=run.max_replicas,
                    final_replicas=run.final_replicas,
                    restarts=run.replicas.status().restarts,
                    retried=self.counters.totals(name)["retried"],
                )
                for name, run in self.groups.items()
            ],
            completions_key=self.completions,
            notes=self.notes,
            demo_sent=demo.sent if demo is not None else None,
        )
        return UpSummary(
            **self.identity().model_dump(),
            seconds=round(seconds, 1),
            produced=result.produced,
            dead_lettered=result.dead_lettered,
            trimmed=self.trimmed,
            groups=result.groups,
            scale_events=self.scale_events,
            settled=result.settled,
            accounted=result.accounted,
            demo=demo,
            latency_source=result.latency_source,
            notes=result.notes,
            exit_code=result.exit_code,
        )


def _group_view(
    name: str,
    run: _GroupRun,
    observation: StreamObservation | None,
    workers: WorkerCounters,
    throughput: float | None,
) -> GroupView:
    status = run.replicas.status()
    group = observation.group(name) if observation is not None else None
    backlog = group_backlog(group) if group is not None else None
    return GroupView(
        name=name,
        lag=backlog.lag.value if backlog is not None else None,
        lag_estimated=backlog.lag.estimated if backlog is not None else False,
        pending=group.pending if group is not None else 0,
        backlog=backlog.total if backlog is not None else None,
        desired=status.desired,
        running=status.running,
        ready=status.ready,
        max_replicas=run.max_replicas,
        throughput=throughput,
        workers=workers,
        restarts=status.restarts,
    )


def _trim_window(samples: deque[tuple[float, int]], now: float) -> None:
    while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
        samples.popleft()


def _rate(samples: deque[tuple[float, int]], now: float) -> float | None:
    if len(samples) < 2:
        return None
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    if t1 - t0 <= 0:
        return None
    return max(0.0, (v1 - v0) / (t1 - t0))
