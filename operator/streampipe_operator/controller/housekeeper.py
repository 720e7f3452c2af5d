"""``streampipe housekeep``: the operator's Redis-side job for pipelines that run without Kubernetes.

Workers under systemd, Nomad or ECS still need what the operator does on the server: groups created
and repaired, protected retention, idle consumers removed, and the figures. This runs
``engine.housekeeping.run_pass`` for each StreamPipeline file in a loop, with:

- **one leader per pipeline** (``streams.leader``): a lease key next to the stream. Several replicas
  may run; the others stand by and take over within the lease time when the leader stops (at once
  when it shuts down cleanly and releases the lease);
- **scaling as advice only**: it scales nothing. What the operator would set is logged when it
  changes and exported as ``streampipe_operator_group_desired_replicas``;
- **the operator's metrics** (same names, so the dashboard and the alerts apply), with ``namespace``
  from the manifest (``default`` when it has none), plus ``streampipe_operator_housekeeper_leader``;
- an unreachable server is a log line, ``redis_up 0`` and a retry, never an exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis.exceptions
from pydantic import BaseModel, Field

from streampipe_operator import api
from streampipe_operator.controller.metrics import ErrorKind, OperatorMetrics
from streampipe_operator.engine.housekeeping import PassReport, PipelineMemory, run_pass
from streampipe_operator.kube.status import Findings, build_status
from streampipe_operator.plan.scaling import ScalingDecision
from streampipe_operator.streams.admin import (
    RedisAdmin,
    RedisAdminError,
    RedisAuthError,
    RedisUnreachableError,
    translate_error,
)
from streampipe_operator.streams.leader import LeaderLease, lease_key
from streampipe_operator.streams.targets import Target, resolve_target
from streampipe_worker.connection import create_async_client

log = logging.getLogger("streampipe.housekeep")

IDLE_TICK = 1.0  # the longest sleep between two looks at a pipeline (lease renewals come first)


class HousekeepOptions(BaseModel):
    files: list[Path] = Field(min_length=1)
    redis_url: str | None = Field(default=None, description="Overrides every file's spec.redis.url")
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_seconds: float = Field(default=15.0, gt=0.5, le=3600)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"


class GroupAdvice(BaseModel):
    name: str
    lag: int | None
    pending: int
    backlog: int | None
    advised_replicas: int | None = Field(description="What the operator would set; nothing is scaled")
    reason: str | None = None


class PipelineOutcome(BaseModel):
    """One pipeline after one look (``--once`` prints these)."""

    pipeline: str
    stream: str
    leader: bool
    holder: str | None = Field(default=None, description="The lease holder's identity")
    server: str | None = None
    groups: list[GroupAdvice] = Field(default_factory=list)
    trimmed: dict[str, int] | None = None
    events: list[dict[str, str]] = Field(default_factory=list)
    error: str | None = None


@dataclass
class AdvisoryBackend:
    """``engine.housekeeping.WorkloadBackend`` that scales nothing: it remembers and logs the advice."""

    label: str
    advised: dict[str, int] = field(default_factory=dict)

    def current_replicas(self, group: str) -> int | None:
        return self.advised.get(group)

    async def set_replicas(self, group: str, decision: ScalingDecision, current: int) -> None:
        self.advise(group, decision, current)

    def live_consumers(self) -> None:
        return None  # the workers' names are unknown here: idle time alone decides

    def advise(self, group: str, decision: ScalingDecision, current: int | None) -> None:
        self.advised[group] = decision.desired_replicas
        before = "?" if current is None else str(current)
        log.info(
            "%s: scaling advice for group %s: %s -> %d replicas (%s)",
            self.label,
            group,
            before,
            decision.desired_replicas,
            decision.reason,
        )


@dataclass
class KeptPipeline:
    """One pipeline this process looks after."""

    pipeline: api.StreamPipeline
    target: Target
    admin: RedisAdmin
    lease: LeaderLease
    backend: AdvisoryBackend
    memory: PipelineMemory = field(default_factory=PipelineMemory)
    status: api.StreamPipelineStatus | None = None

    @property
    def name(self) -> str:
        return self.pipeline.metadata.name or self.target.stream

    @property
    def namespace(self) -> str:
        return self.pipeline.metadata.namespace or "default"


def load(options: HousekeepOptions) -> list[KeptPipeline]:
    """Every file's pipeline with its client and lease; ``UsageError`` (exit 2) for a bad file."""
    kept: list[KeptPipeline] = []
    for path in options.files:
        target = resolve_target(path, redis_url=options.redis_url, stream=None)
        assert target.pipeline is not None
        client = create_async_client(target.connection_settings("streampipe-housekeep"))
        label = f"{target.pipeline.metadata.name} ({target.stream})"
        kept.append(
            KeptPipeline(
                pipeline=target.pipeline,
                target=target,
                admin=RedisAdmin(client),
                lease=LeaderLease(client, lease_key(target.stream), options.identity, options.lease_seconds),
                backend=AdvisoryBackend(label),
            )
        )
    return kept


class Housekeeper:
    """Looks after pipelines until stopped (see the module docstring)."""

    def __init__(self, kept: Sequence[KeptPipeline], metrics: OperatorMetrics) -> None:
        self.kept = list(kept)
        self.metrics = metrics
        self.stopping = asyncio.Event()

    async def look(self, kept: KeptPipeline) -> PipelineOutcome:
        """Renew or take the lease, and as leader run one pass; a server problem is an outcome."""
        outcome = PipelineOutcome(pipeline=kept.name, stream=kept.target.stream, leader=False)
        labels = (kept.namespace, kept.name)
        try:
            outcome.leader = await self._hold(kept)
            self.metrics.leader.labels(*labels).set(1 if outcome.leader else 0)
            if not outcome.leader:
                outcome.holder = await kept.lease.holder()
                return outcome
            outcome.holder = kept.lease.identity
            report = await run_pass(kept.pipeline.spec, kept.admin, kept.backend, kept.memory)
        except RedisAdminError as exc:
            outcome.error = str(exc)
            self.metrics.redis_up.labels(*labels).set(0)
            self.metrics.leader.labels(*labels).set(1 if kept.lease.leading else 0)
            kind: ErrorKind = (
                "redis_auth"
                if isinstance(exc, RedisAuthError)
                else "redis_unreachable"
                if isinstance(exc, RedisUnreachableError)
                else "redis_command"
            )
            self.metrics.count_error(*labels, kind)
            return outcome
        self.metrics.redis_up.labels(*labels).set(1)
        self._publish(kept, report, outcome)
        return outcome

    async def _hold(self, kept: KeptPipeline) -> bool:
        try:
            return await kept.lease.hold()
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise translate_error(
                exc, doing="holding the housekeeping lease", where=kept.admin.where
            ) from exc

    def _publish(self, kept: KeptPipeline, report: PassReport, outcome: PipelineOutcome) -> None:
        spec = kept.pipeline.spec
        label = kept.backend.label
        self.metrics.record_pass(kept.namespace, kept.name, report)
        for event in report.events:
            log.log(logging.WARNING if event.warning else logging.INFO, "%s: %s", label, event.message)
            outcome.events.append({"reason": str(event.reason), "message": event.message})
        for name, first in report.decisions.items():
            if kept.backend.advised.get(name) is None:
                kept.backend.advise(name, first, None)  # the first advice, before any change
        findings = Findings(
            group_names=[group.name for group in spec.groups],
            retention_configured=spec.retention is not None,
            dead_letter_stream=spec.dead_letter_stream if spec.partitions is None else None,
            partition_layout=spec.partition_layout,
        )
        findings.take_pass(report, kept.admin.where)
        kept.status = build_status(findings, kept.status, now=datetime.now(UTC))
        self.metrics.track_groups(kept.namespace, kept.name, findings.group_names)
        self.metrics.export_status(kept.namespace, kept.name, findings, kept.status, now=time.time())
        labels = (kept.namespace, kept.name)
        for group in kept.status.groups:
            advised = kept.backend.advised.get(group.name)
            self.metrics.put(self.metrics.desired_replicas, advised, *labels, group.name)
            decision = report.decisions.get(group.name)
            outcome.groups.append(
                GroupAdvice(
                    name=group.name,
                    lag=group.lag,
                    pending=group.pending,
                    backlog=group.backlog,
                    advised_replicas=advised,
                    reason=decision.reason if decision is not None else None,
                )
            )
        outcome.server = report.server.describe()
        outcome.trimmed = report.trimmed

    async def keep(self, kept: KeptPipeline) -> None:
        """Look at one pipeline until stopped: as often as its steps are due, and often enough to
        renew the lease (a third of its time)."""
        last_error: str | None = None
        while not self.stopping.is_set():
            outcome = await self.look(kept)
            if outcome.error is not None and outcome.error != last_error:
                log.warning("%s: %s; retrying", kept.backend.label, outcome.error)
            elif outcome.error is None and last_error is not None:
                log.info("%s: the server answers again", kept.backend.label)
            last_error = outcome.error
            wait = min(IDLE_TICK, kept.lease.ttl / 3)
            if outcome.leader:
                wait = min(wait, max(0.05, kept.memory.next_due(kept.pipeline.spec) - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)

    async def close(self) -> None:
        """Release the leases this process holds (a standby takes over at once) and the clients."""
        for kept in self.kept:
            with contextlib.suppress(Exception):
                if await kept.lease.release():
                    log.info("%s: lease released", kept.backend.label)
            self.metrics.leader.labels(kept.namespace, kept.name).set(0)
            with contextlib.suppress(Exception):
                await kept.admin.client.aclose()


async def run_once(options: HousekeepOptions) -> list[PipelineOutcome]:
    """One look at every pipeline (a leader runs one pass), then release the leases."""
    keeper = Housekeeper(load(options), OperatorMetrics())
    try:
        return [await keeper.look(kept) for kept in keeper.kept]
    finally:
        await keeper.close()


async def run_forever(options: HousekeepOptions) -> None:
    """Until SIGTERM or SIGINT; ``/metrics`` on ``metrics_port`` when it is not 0."""
    metrics = OperatorMetrics()
    keeper = Housekeeper(load(options), metrics)
    if options.metrics_port:
        metrics.serve(options.metrics_port, options.metrics_address)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, keeper.stopping.set)
    log.info(
        "housekeeping %d pipeline(s) as %s (lease %gs)",
        len(keeper.kept),
        options.identity,
        options.lease_seconds,
    )
    try:
        await asyncio.gather(*(keeper.keep(kept) for kept in keeper.kept))
    finally:
        await keeper.close()
        log.info("stopped")
