"""``streampipe up``: a StreamPipeline on one machine, with worker processes instead of pods.

The decisions are the operator's own: every tick (half a second) runs its housekeeping pass
(``housekeeping.run_pass``: groups, scaling on lag + pending, protected retention, consumer cleanup),
with this pipeline as the workload backend: replica counts go to a
:class:`~streampipe_operator.local.ReplicaSet` of ``python -m streampipe_worker`` processes instead of
a Deployment's ``/scale``, consumers of running workers are known by name, and what the pass did goes
to a live view instead of Events and status. Then the tick reads the workers' own counters from their
``/metrics`` (retries are counted nowhere else) and the dead letters added since the last tick.

The run ends after ``--duration`` or on Ctrl-C: the demo producer stops, the loop keeps scaling until
every group's backlog is zero (at most ``--drain-timeout``; a second Ctrl-C skips the wait), then the
workers get SIGTERM and finish or hand back their in-flight entries.

**The summary, and where each figure comes from** (all measured, none assumed):

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
import contextlib
import http.client
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streampipe_operator.api import GroupSpec, StreamPipeline
from streampipe_operator.engine.housekeeping import EventReason, PassReport, PipelineMemory, run_pass
from streampipe_operator.engine.spec_mapping import (
    DEFAULT_TERMINATION_GRACE,
    template_env,
    worker_settings_values,
)
from streampipe_operator.local.demo import DemoCounts, DemoProducer
from streampipe_operator.local.embedded import EmbeddedServerError, EmbeddedValkey, Persistence
from streampipe_operator.local.processes import LocalRuntime, ReplicaSet, ReplicaSpec
from streampipe_operator.plan.backlog import group_backlog
from streampipe_operator.plan.entry_ids import EntryId
from streampipe_operator.plan.observed import StreamObservation
from streampipe_operator.plan.scaling import ScalingDecision
from streampipe_operator.streams.admin import RedisAdmin, RedisAdminError
from streampipe_operator.streams.targets import CommandError, UsageError, load_pipeline, redact_url
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.settings import ENV_PREFIX, render_env

TICK = 0.5
COMPLETIONS_SUFFIX = ":done"
READY_TIMEOUT = 90.0
RATE_WINDOW = 3.0
EVENTS_KEPT = 200

EventKind = Literal["info", "warning", "group", "scale", "trim", "consumer", "dead-letter", "worker"]
# How the live view shows what a housekeeping pass reports (reasons absent here are not shown).
_EVENT_KINDS: dict[EventReason, EventKind] = {
    "GroupCreated": "group",
    "GroupRecreated": "warning",
    "GroupDestroyed": "group",
    "GroupOrphaned": "info",
    "RetentionHeld": "trim",
    "Trimmed": "trim",
    "RetentionFailed": "warning",
    "ConsumerRemoved": "consumer",
    "ConsumerCleanupFailed": "warning",
}


class LogEvent(BaseModel):
    """Something worth a line in the live view (and in --no-ui output)."""

    at: float = Field(description="Seconds since the workers were ready")
    kind: EventKind
    text: str


class ScaleEvent(BaseModel):
    at: float = Field(description="Seconds since the workers were ready")
    group: str
    from_replicas: int
    to_replicas: int
    reason: str


class WorkerCounters(BaseModel):
    """Sums of the workers' own Prometheus counters for one group."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    handed_back: int = 0


class GroupView(BaseModel):
    name: str
    lag: int | None
    lag_estimated: bool
    pending: int
    backlog: int | None
    desired: int
    running: int
    ready: int
    max_replicas: int
    throughput: float | None = Field(description="Entries settled per second, over the last 3 s")
    workers: WorkerCounters
    restarts: int


class Snapshot(BaseModel):
    """What the live view shows at one moment."""

    pipeline: str
    stream: str
    dead_letter: str
    server: str
    redis_url: str
    embedded: bool
    persistence: str | None
    phase: str
    elapsed: float
    duration: float | None
    stream_length: int
    produced: int
    produce_rate: float | None
    dead_letters: int = Field(description="Length of the dead-letter stream")
    trimmed: int
    groups: list[GroupView]
    events: list[LogEvent]
    demo: DemoCounts | None = None
    demo_phase: str | None = None


class LatencySummary(BaseModel):
    count: int = Field(description="Completion records of entries produced during the run")
    p50_ms: float
    p99_ms: float
    max_ms: float


class GroupSummary(BaseModel):
    name: str
    processed: int = Field(description="Acknowledged after a successful handler call")
    dead_lettered: int
    dead_letter_reasons: dict[str, int] = Field(description="Exception class -> entries")
    retried: int = Field(description="From the workers' retried counters")
    backlog_left: int | None = Field(description="lag + pending when the workers had stopped")
    max_replicas: int
    final_replicas: int
    worker_restarts: int
    latency: LatencySummary | None


class UpSummary(BaseModel):
    """What ``streampipe up --output json`` prints at the end."""

    pipeline: str
    stream: str
    dead_letter: str
    server: str
    redis_url: str
    embedded: bool
    seconds: float = Field(description="From workers ready to workers stopped")
    produced: int
    dead_lettered: int
    trimmed: int
    groups: list[GroupSummary]
    scale_events: list[ScaleEvent]
    settled: bool = Field(description="Every group's backlog was zero at the end")
    accounted: bool = Field(
        description="Per group, processed + dead-lettered + left = produced + backlog at start"
    )
    demo: DemoCounts | None = None
    latency_source: str
    notes: list[str] = Field(default_factory=list)
    exit_code: int


class UpOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: Path
    redis_url: str | None = None
    duration: float | None = Field(default=None, description="Seconds; None runs until Ctrl-C")
    drain_timeout: float = 30.0
    demo: bool = False
    data_dir: Path | None = None
    persistence: Persistence = "none"
    python_path: tuple[Path, ...] = ()


class View:
    """Where progress goes (the rich live view, or plain lines; see ``liveview``). Does nothing itself."""

    def started(self, lines: list[str]) -> None:
        """The pipeline is up; ``lines`` say what was started and created."""

    def event(self, event: LogEvent) -> None:
        """Something happened (a scale, a trim, a dead letter...)."""

    def update(self, snapshot: Snapshot) -> None:
        """The state after a tick."""

    def finish(self, summary: UpSummary) -> None:
        """The run is over."""

    def close(self) -> None:
        """Leave the terminal as it was (also after an error)."""


# --- worker counters ------------------------------------------------------------------------------

_COUNTERS = {
    "streampipe_worker_processed_total": "processed",
    "streampipe_worker_failed_total": "failed",
    "streampipe_worker_retried_total": "retried",
    "streampipe_worker_dead_lettered_total": "dead_lettered",
    "streampipe_worker_reclaimed_total": "reclaimed",
    "streampipe_worker_handed_back_total": "handed_back",
}


def scrape_counters(port: int, timeout: float = 0.5) -> dict[str, float] | None:
    """One worker's counters from ``http://127.0.0.1:<port>/metrics``; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
            text = reply.read().decode()
    except (OSError, ValueError, http.client.HTTPException):  # e.g. a worker exiting mid-answer
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = _COUNTERS.get(sample.name)
            if field is not None:
                values[field] = values.get(field, 0.0) + sample.value
    return values


class CounterBook:
    """Counter totals per replica; a replica keeps its name across restarts, and a restart resets its
    counters, so a value below the last one starts a new run whose values add to the previous."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, float]] = {}
        self._carried: dict[str, dict[str, float]] = {}
        self._group_of: dict[str, str] = {}

    def record(self, group: str, replica: str, values: dict[str, float]) -> None:
        self._group_of[replica] = group
        last = self._last.get(replica, {})
        if any(values.get(name, 0.0) < last.get(name, 0.0) for name in last):
            carried = self._carried.setdefault(replica, {})
            for name, value in last.items():
                carried[name] = carried.get(name, 0.0) + value
        self._last[replica] = values

    def totals(self, group: str) -> WorkerCounters:
        sums: Counter[str] = Counter()
        for replica, values in self._last.items():
            if self._group_of.get(replica) != group:
                continue
            for name, value in values.items():
                sums[name] += int(value)
            for name, value in self._carried.get(replica, {}).items():
                sums[name] += int(value)
        return WorkerCounters(**sums)


# --- the pipeline ---------------------------------------------------------------------------------


class _GroupRun:
    """What the loop keeps per group between ticks."""

    def __init__(self, spec: GroupSpec, replicas: ReplicaSet) -> None:
        self.spec = spec
        self.replicas = replicas
        self.max_replicas = 0
        self.backlog_start = 0
        self.final_replicas = 0
        self.settled_samples: deque[tuple[float, int]] = deque()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


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
        self.dead_letter = self.spec.dead_letter_stream
        self.completions = self.stream + COMPLETIONS_SUFFIX
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
        self._backlog_start: dict[str, int] = {}
        self._group_problems: str | None = None
        self._unreachable = False
        self._followers: set[asyncio.Task[None]] = set()
        self._added_start = 0
        self._stream_start_id = EntryId(0)
        self._dead_start_id = "0-0"
        self._dead_added_start = 0
        self._dead_seen_id = "0-0"
        self._completions_start_id = "0-0"
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
        await self._wait_ready()
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
            self.observation = await self.admin.observe_stream(self.stream, dead_letter=self.dead_letter)
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
        stream = observation.stream
        if stream is not None:
            self._added_start = stream.entries_added if stream.entries_added is not None else stream.length
            self._stream_start_id = stream.last_generated_id
        for group in observation.groups:
            backlog = group_backlog(group).total
            self._backlog_start[group.name] = backlog or 0
        self._dead_start_id, self._dead_added_start = await self._stream_position(self.dead_letter)
        self._dead_seen_id = self._dead_start_id
        self._completions_start_id, _ = await self._stream_position(self.completions)

    async def _stream_position(self, key: str) -> tuple[str, int]:
        """(last-generated-id, entries-added) of a stream; ("0-0", 0) when it does not exist."""
        try:
            info = await self.client.xinfo_stream(key)
        except Exception as exc:
            if "no such key" in str(exc).lower():
                return "0-0", 0
            raise CommandError(f"reading XINFO STREAM {key}: {exc}") from exc
        added = info.get("entries-added")
        return str(info["last-generated-id"]), int(added if added is not None else info["length"])

    def _worker_env(self, group: GroupSpec) -> dict[str, str]:
        values = worker_settings_values(self.spec, group, redis_url=self.redis_url)
        env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
        literal, from_objects = template_env(group)
        for name in from_objects:
            self.notes.append(
                f"group {group.name}: template.env {name} comes from a Secret/ConfigMap/field on "
                "Kubernetes; locally the workers see it only if your shell exports it"
            )
        env.update(literal)
        env.update(render_env(values))
        paths = [str(path) for path in self.python_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    async def _start_group(self, group: GroupSpec, decision: ScalingDecision | None) -> None:
        env = self._worker_env(group)
        await self._preflight(group, env)
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
        run.backlog_start = self._backlog_start.get(group.name, 0)
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

    async def _preflight(self, group: GroupSpec, env: dict[str, str]) -> None:
        """``streampipe-worker --check``: bad settings or a handler that does not import fail here,
        once, with the worker's own message, instead of as a crash loop."""
        command = [sys.executable, "-m", "streampipe_worker", "--check"]
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip()
            hint = ""
            if "cannot import" in why:
                places = ", ".join(str(path) for path in self.python_path)
                hint = f" (handler modules are looked up in {places}; --python-path adds places)"
            raise UsageError(f"group {group.name}: the worker refuses to start: {why}{hint}")

    async def _wait_ready(self) -> None:
        """Until every group's first workers answer /readyz (polled, so Ctrl-C can interrupt it)."""
        deadline = time.monotonic() + READY_TIMEOUT
        for name, run in self.groups.items():
            while True:
                status = run.replicas.status()
                if status.ready >= status.desired:
                    break
                if time.monotonic() > deadline:
                    tails = []
                    for replica in status.replicas:
                        with contextlib.suppress(OSError, IndexError):
                            text = replica.log_path.read_text(errors="replace")
                            tails.append(f"{replica.name}: {text.strip().splitlines()[-1]}")
                    raise CommandError(
                        f"group {name}: workers not ready after {READY_TIMEOUT:g}s; last log lines: "
                        + (" | ".join(tails) or "none")
                    )
                await asyncio.sleep(0.1)
        counts = ", ".join(f"{name} {run.replicas.status().ready}" for name, run in self.groups.items())
        self.log("info", f"workers ready ({counts}); logs in {self.runtime.run_dir}")

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
        try:
            entries = await self.client.xrange(
                self.dead_letter, min=f"({self._dead_seen_id}", max="+", count=20
            )
        except Exception as exc:
            self.log("warning", f"reading {self.dead_letter}: {exc}")
            return
        for entry_id, fields in entries:
            self._dead_seen_id = entry_id
            try:
                envelope = DeadLetterEnvelope.from_fields(fields)
            except (ValueError, TypeError):
                continue
            kind = envelope.exception.rsplit(".", 1)[-1] or "error"
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
        observation = self.observation
        if observation is None:
            return False
        for name in self.groups:
            group = observation.group(name)
            if group is None or group_backlog(group).total != 0:
                return False
        return True

    # --- views -------------------------------------------------------------------------------------

    def snapshot(self, phase: str, duration: float | None, demo: DemoProducer | None) -> Snapshot:
        observation = self.observation
        stream = observation.stream if observation is not None else None
        groups: list[GroupView] = []
        now = time.monotonic()
        # Rates describe a running loop; once the workers stop, an old window's rate would mislead.
        live = phase in ("running", "draining")
        for name, run in self.groups.items():
            status = run.replicas.status()
            group = observation.group(name) if observation is not None else None
            backlog = group_backlog(group) if group is not None else None
            groups.append(
                GroupView(
                    name=name,
                    lag=backlog.lag.value if backlog is not None else None,
                    lag_estimated=backlog.lag.estimated if backlog is not None else False,
                    pending=group.pending if group is not None else 0,
                    backlog=backlog.total if backlog is not None else None,
                    desired=status.desired,
                    running=status.running,
                    ready=status.ready,
                    max_replicas=run.max_replicas,
                    throughput=_rate(run.settled_samples, now) if live else None,
                    workers=self.counters.totals(name),
                    restarts=status.restarts,
                )
            )
        added = stream.entries_added if stream is not None and stream.entries_added is not None else None
        return Snapshot(
            pipeline=self.name,
            stream=self.stream,
            dead_letter=self.dead_letter,
            server=self.server,
            redis_url=redact_url(self.redis_url),
            embedded=self.embedded is not None,
            persistence=self.embedded.persistence if self.embedded is not None else None,
            phase=phase,
            elapsed=self.elapsed(),
            duration=duration,
            stream_length=stream.length if stream is not None else 0,
            produced=max(0, (added if added is not None else 0) - self._added_start),
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
        observation = await self._observe()
        stream = observation.stream
        added_end = 0
        if stream is not None:
            added_end = stream.entries_added if stream.entries_added is not None else stream.length
        produced = added_end - self._added_start
        _, dead_added_end = await self._stream_position(self.dead_letter)
        reasons: dict[str, Counter[str]] = {}
        async for fields in self._entries_after(self.dead_letter, self._dead_start_id):
            try:
                envelope = DeadLetterEnvelope.from_fields(fields)
            except (ValueError, TypeError):
                continue
            exception = envelope.exception.rsplit(".", 1)[-1] or "error"
            reasons.setdefault(envelope.group, Counter())[exception] += 1
        latencies = await self._latencies()
        groups: list[GroupSummary] = []
        accounted = True
        for name, run in self.groups.items():
            group = observation.group(name)
            left = group_backlog(group).total if group is not None else None
            dead = sum(reasons.get(name, Counter()).values())
            settled = run.backlog_start + produced - (left or 0)
            processed = settled - dead
            if left is None or processed < 0:
                accounted = False
            status = run.replicas.status()
            values = sorted(latencies.get(name, []))
            latency = (
                LatencySummary(
                    count=len(values),
                    p50_ms=percentile(values, 0.50),
                    p99_ms=percentile(values, 0.99),
                    max_ms=values[-1],
                )
                if values
                else None
            )
            groups.append(
                GroupSummary(
                    name=name,
                    processed=max(processed, 0),
                    dead_lettered=dead,
                    dead_letter_reasons=dict(reasons.get(name, Counter())),
                    retried=self.counters.totals(name).retried,
                    backlog_left=left,
                    max_replicas=run.max_replicas,
                    final_replicas=run.final_replicas,
                    worker_restarts=status.restarts,
                    latency=latency,
                )
            )
        settled_all = all(g.backlog_left == 0 for g in groups)
        dead_total = dead_added_end - self._dead_added_start
        notes = list(dict.fromkeys(self.notes))
        if demo is not None and produced != demo.sent:
            notes.append(f"the demo producer sent {demo.sent} events, the stream counted {produced}")
            accounted = False
        if not any(latencies.values()):
            latency_source = (
                f"not measured: no handler wrote completion records to {self.completions} "
                "(see docs/quickstart.md)"
            )
        else:
            latency_source = (
                f"completion records in {self.completions}: handler finished (done_ms) minus the entry "
                "ID's timestamp (XADD accepted), for entries produced during the run"
            )
        exit_code = 0
        if demo is not None and not (settled_all and accounted):
            exit_code = 1
            notes.append("the demo did not settle: some entries were neither processed nor dead-lettered")
        return UpSummary(
            pipeline=self.name,
            stream=self.stream,
            dead_letter=self.dead_letter,
            server=self.server,
            redis_url=redact_url(self.redis_url),
            embedded=self.embedded is not None,
            seconds=round(seconds, 1),
            produced=produced,
            dead_lettered=dead_total,
            trimmed=self.trimmed,
            groups=groups,
            scale_events=self.scale_events,
            settled=settled_all,
            accounted=accounted,
            demo=demo,
            latency_source=latency_source,
            notes=notes,
            exit_code=exit_code,
        )

    async def _entries_after(self, key: str, after: str) -> Any:
        low = f"({after}"
        while True:
            page = await self.client.xrange(key, min=low, max="+", count=1000)
            for _, fields in page:
                yield fields
            if len(page) < 1000:
                return
            low = f"({page[-1][0]}"

    async def _latencies(self) -> dict[str, list[float]]:
        """Per group, milliseconds from XADD to handler done for entries produced during the run; the
        first completion of an entry counts (a redelivery after a crash may complete it again)."""
        seen: set[tuple[str, str]] = set()
        found: dict[str, list[float]] = {}
        async for fields in self._entries_after(self.completions, self._completions_start_id):
            try:
                entry_id = EntryId.parse(fields["id"])
                done_ms = int(fields["done_ms"])
                group = fields["group"]
            except (KeyError, ValueError):
                continue
            if entry_id <= self._stream_start_id or (group, str(entry_id)) in seen:
                continue
            seen.add((group, str(entry_id)))
            found.setdefault(group, []).append(float(max(0, done_ms - entry_id.ms)))
        return found


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


# --- running it -----------------------------------------------------------------------------------


class _Stop:
    """Ctrl-C once: stop producing, drain, stop. Twice (or SIGTERM): stop the workers now."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.requested.is_set():
            self.now.set()
        self.requested.set()

    def terminate(self) -> None:
        self.requested.set()
        self.now.set()


async def run_up(options: UpOptions, view: View) -> UpSummary:
    """Run the pipeline until the duration ends or Ctrl-C; the summary at the end."""
    pipeline = load_pipeline(options.file)
    embedded: EmbeddedValkey | None = None
    if options.redis_url is None:
        embedded = EmbeddedValkey(options.data_dir, persistence=options.persistence)
        try:
            await asyncio.to_thread(embedded.start)
        except EmbeddedServerError as exc:
            raise CommandError(str(exc)) from exc
    run_dir = (
        options.data_dir / "workers"
        if options.data_dir is not None
        else Path(tempfile.mkdtemp(prefix="streampipe-up-workers-"))
    )
    try:
        summary = await _run(pipeline, options, view, embedded, run_dir)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if options.data_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    view.finish(summary)
    return summary


async def _run(
    pipeline: StreamPipeline, options: UpOptions, view: View, embedded: EmbeddedValkey | None, run_dir: Path
) -> UpSummary:
    spec = pipeline.spec
    redis_url = options.redis_url or (embedded.url if embedded is not None else "")
    settings = ConnectionSettings(
        url=redis_url,
        mode="standalone" if embedded is not None else spec.redis.mode,
        sentinel_master=spec.redis.sentinel.master_name if spec.redis.sentinel is not None else None,
        client_name="streampipe-up",
        socket_timeout=5.0,  # as the operator's: a stalled server freezes the loop for 5 s at most
    )
    client: Any = create_async_client(settings)
    runtime = LocalRuntime(run_dir)
    local = LocalPipeline(
        pipeline,
        client=client,
        redis_url=redis_url,
        runtime=runtime,
        python_path=[options.file.resolve().parent, *(p.resolve() for p in options.python_path), Path.cwd()],
        embedded=embedded,
    )
    local.on_event = view.event
    loop = asyncio.get_running_loop()
    stop = _Stop()
    loop.add_signal_handler(signal.SIGINT, stop.interrupt)
    loop.add_signal_handler(signal.SIGTERM, stop.terminate)
    demo: DemoProducer | None = None
    demo_task: asyncio.Task[DemoCounts] | None = None
    try:
        starting = asyncio.create_task(local.start(options.file))
        await asyncio.wait(
            [starting, asyncio.create_task(stop.requested.wait())], return_when="FIRST_COMPLETED"
        )
        if not starting.done():
            starting.cancel()
            raise CommandError("interrupted while starting; nothing was produced")
        view.started(starting.result())
        if options.demo:
            demo = DemoProducer(client, spec.stream, duration=options.duration)
            demo_task = asyncio.create_task(demo.run(), name="demo-producer")
        await _loop(local, view, options, stop, demo)
        if demo is not None and demo_task is not None:
            demo.stop()
            await demo_task
        view.update(local.snapshot("stopping workers", options.duration, demo))
        await local.stop_workers()
        summary = await local.summary(local.elapsed(), demo.counts if demo is not None else None)
        view.update(local.snapshot("stopped", options.duration, demo))
        return summary
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        if demo_task is not None and not demo_task.done():
            demo_task.cancel()
        await asyncio.to_thread(runtime.close, 5.0)
        with contextlib.suppress(Exception):
            await client.aclose()


async def _loop(
    local: LocalPipeline, view: View, options: UpOptions, stop: _Stop, demo: DemoProducer | None
) -> None:
    phase = "running"
    drain_until = 0.0
    while True:
        elapsed = local.elapsed()
        if phase == "running" and (
            stop.requested.is_set() or (options.duration is not None and elapsed >= options.duration)
        ):
            phase = "draining"
            drain_until = time.monotonic() + options.drain_timeout
            if demo is not None:
                demo.stop()
            local.log(
                "info", "draining: waiting until every group's backlog is zero (Ctrl-C again: stop now)"
            )
        await local.tick()
        if phase == "draining":
            if local.backlog_settled():
                local.log("info", "drained: every group's backlog is zero")
                break
            if stop.now.is_set():
                local.log("warning", "stopping before the backlog drained")
                break
            if time.monotonic() >= drain_until:
                local.log("warning", f"backlog not drained within --drain-timeout {options.drain_timeout:g}s")
                break
        view.update(local.snapshot(phase, options.duration, demo))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.now.wait() if phase == "draining" else stop.requested.wait(), TICK)
