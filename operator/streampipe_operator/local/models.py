"""What a ``streampipe up`` run shows and reports: events, the live snapshot, the summary, the options,
and the :class:`View` protocol the live view (``liveview``) implements."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streampipe_operator.local.counters import WorkerCounters
from streampipe_operator.local.demo import DemoCounts
from streampipe_operator.local.embedded import Persistence

EventKind = Literal["info", "warning", "group", "scale", "trim", "consumer", "dead-letter", "worker"]


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


class PipelineIdentity(BaseModel):
    """Which pipeline on which server: the head of both the live view and the summary."""

    pipeline: str
    stream: str
    dead_letter: str
    server: str
    redis_url: str = Field(description="Password redacted")
    embedded: bool


class Snapshot(PipelineIdentity):
    """What the live view shows at one moment."""

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


class UpSummary(PipelineIdentity):
    """What ``streampipe up --output json`` prints at the end."""

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
