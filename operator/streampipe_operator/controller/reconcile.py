"""One StreamPipeline's reconcile loop: parse -> observe (Redis, Kubernetes) -> plan -> apply -> status.

Each pipeline gets a :class:`PipelineRuntime` (kept in kopf's per-object ``memo``) and one kopf daemon
that calls :meth:`PipelineRuntime.run`. A pass (:meth:`PipelineRuntime.reconcile`):

1. **parse** the body into the API models; an invalid spec (one that slipped past the CRD's schema)
   is reported as ``Ready=False``/``InvalidSpec`` and nothing else is done;
2. **conflict**: when an older StreamPipeline names the same server and stream, ``Ready=False``/
   ``Conflict`` and nothing else is done;
3. **Deployments** that exist are brought to the spec (drift reverted); they come from kopf's index;
4. **housekeeping** on Redis, the pass ``streampipe up`` runs too (``housekeeping.run_pass``: groups,
   scaling through ``/scale`` by ``scaler.DeploymentScaler``, retention, consumer cleanup); what it
   did becomes Events, logs and metrics;
5. **Deployments** that are missing are created with the decided replicas, removed groups' deleted;
6. **status**, written only when it changed (see ``kube.status.worth_writing``).

State kept in memory (the scaling history, the last positions of groups, the last status written)
only makes passes cheaper or decisions steadier; after a restart it is rebuilt from Redis, the
Deployments and the status. The one rule that needs care: an empty scaling history would allow an
immediate scale-down, so a restarted operator seeds it with the Deployment's current replicas, and a
restart can only delay a scale-down. Redis being unreachable never changes replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from streampipe_operator import api
from streampipe_operator.api import Reason
from streampipe_operator.api.validation import errors_of
from streampipe_operator.controller.connections import PipelineConnection, SharedClients
from streampipe_operator.controller.deployments import DeploymentWriter
from streampipe_operator.controller.events import post_event
from streampipe_operator.controller.metrics import ErrorKind, OperatorMetrics
from streampipe_operator.controller.ownership import PipelineRef, identity_of, owner, stream_identity
from streampipe_operator.controller.scaler import DeploymentScaler
from streampipe_operator.engine.housekeeping import (
    PassReport,
    PipelineMemory,
    run_pass,
)
from streampipe_operator.kube.client import KubeClient, KubeError, SecretMissingError
from streampipe_operator.kube.deployments import (
    LABEL_PIPELINE,
    build_deployment,
    deployment_drift,
    deployment_name,
)
from streampipe_operator.kube.policy import WorkloadPolicy
from streampipe_operator.kube.status import (
    EventType,
    Findings,
    GroupWorkload,
    build_status,
    same_status,
    status_document,
    transition_events,
    worth_writing,
)
from streampipe_operator.plan.groups import LastKnownPosition
from streampipe_operator.plan.scaling import ScalingDecision, placed_replicas
from streampipe_operator.streams.admin import (
    RedisAdminError,
    RedisAuthError,
    RedisUnreachableError,
)
from streampipe_worker.entry_ids import EntryId

log = logging.getLogger("streampipe.operator")

PipelineIndex = Mapping[str, Iterable[PipelineRef]]
DeploymentIndex = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]


class StopFlag(Protocol):
    """kopf's ``stopped`` flag of a daemon: awaiting ``wait()`` returns once it is set."""

    def wait(self) -> Awaitable[Any]: ...


# What a housekeeping pass reports that becomes an Event on the StreamPipeline (the rest is logged).
POSTED_EVENTS: frozenset[Reason] = frozenset(
    {
        Reason.GROUP_CREATED,
        Reason.GROUP_RECREATED,
        Reason.GROUP_DESTROYED,
        Reason.GROUP_ORPHANED,
        Reason.RETENTION_HELD,
        Reason.CONSUMER_REMOVED,
        Reason.LAYOUT_GROWN,
        Reason.LAYOUT_SWITCH_RETIRED,
        Reason.LAYOUT_RECORD_FAILED,
    }
)


# Operator-wide timings.
FIGURES_INTERVAL = 5.0  # at most one status write per this many seconds for figures alone
IDLE_INTERVAL = 30.0  # longest pause between passes
# Passes wake on multiples of TICK seconds of the monotonic clock: the passes of many pipelines then
# run in the same turn of the event loop and share their round trips to the server
# (``streams.round_trips``). A step runs at most one TICK after it is due.
TICK = 0.1
MAX_ERROR_DELAY = 30.0  # backoff cap after failures
SECRET_REFRESH = 60.0  # re-read credentials at least this often
REDIS_SOCKET_TIMEOUT = 5.0


def on_tick(at: float) -> float:
    """The first multiple of :data:`TICK` at or after ``at`` (a monotonic time)."""
    return math.ceil(at / TICK) * TICK


def error_delay(failures: int, base: float, cap: float) -> float:
    """Exponential backoff: base, 2 base, 4 base ... at most ``cap``."""
    return min(cap, base * 2.0 ** max(0, failures - 1))


class OperatorContext:
    """What every pipeline's loop shares: the Kubernetes adapter, metrics, the live runtimes."""

    def __init__(self, kube: KubeClient, metrics: OperatorMetrics, policy: WorkloadPolicy | None = None):
        self.kube = kube
        self.metrics = metrics
        self.policy = policy or WorkloadPolicy()
        self.runtimes: dict[str, PipelineRuntime] = {}
        self.clients = SharedClients()  # one Redis client per server (and credentials), not per pipeline

    def runtime_for(self, memo: Any, body: Mapping[str, Any]) -> PipelineRuntime:
        """The runtime of this object (kept in its kopf memo), created on first use."""
        meta = body["metadata"]
        runtime = getattr(memo, "runtime", None)
        if not isinstance(runtime, PipelineRuntime) or runtime.uid != meta["uid"]:
            runtime = PipelineRuntime(self, meta["namespace"], meta["name"], meta["uid"])
            memo.runtime = runtime
        self.runtimes[runtime.uid] = runtime
        return runtime

    def pipeline_changed(self, body: Mapping[str, Any], event: str | None) -> None:
        """A watch event of a StreamPipeline: wake its loop when the spec changed, and the loops of
        pipelines on the same stream when one appears or goes (ownership may move)."""
        meta = body.get("metadata") or {}
        runtime = self.runtimes.get(meta.get("uid", ""))
        if runtime is not None and meta.get("generation") != runtime.generation:
            runtime.poke()
        if event in ("ADDED", "DELETED") or meta.get("deletionTimestamp"):
            identity = identity_of(body)
            for other in self.runtimes.values():
                if other is not runtime and identity is not None and other.identity == identity:
                    other.poke()

    def deployment_changed(self, body: Mapping[str, Any], event: str | None) -> None:
        """A watch event of a worker Deployment: wake its pipeline when it drifted or was deleted."""
        meta = body.get("metadata") or {}
        pipeline = (meta.get("labels") or {}).get(LABEL_PIPELINE)
        for runtime in self.runtimes.values():
            if runtime.namespace == meta.get("namespace") and runtime.name == pipeline:
                desired = runtime.desired_deployments.get(meta.get("name", ""))
                if event == "DELETED" or (desired is not None and deployment_drift(body, desired)):
                    runtime.poke()


@dataclass
class _Pass:
    """Per-pass scratch: the parsed pipeline and what was found."""

    pipeline: api.StreamPipeline
    findings: Findings
    decisions: dict[str, ScalingDecision] = field(default_factory=dict)
    spec_changed: bool = False  # this generation was not acted on before (status's observedGeneration)


@dataclass(frozen=True)
class _LastStatus:
    """The status the last pass built, and from what."""

    previous: api.StreamPipelineStatus | None
    findings: Findings
    status: api.StreamPipelineStatus
    document: dict[str, Any]


@dataclass
class _Reuse:
    """What the passes of an unchanged pipeline take from the last one instead of working it out again
    (each was a share of an idle pass's CPU)."""

    status: _LastStatus | None = None
    # The last documents found not worth writing (new, written) and whether figures were compared.
    not_written: tuple[dict[str, Any], Mapping[str, Any] | None, bool] | None = None
    positions: tuple[api.StreamPipeline, dict[str, LastKnownPosition]] | None = None

    def known_positions(self, pipeline: api.StreamPipeline) -> dict[str, LastKnownPosition]:
        """The group positions in ``pipeline``'s status, read again only for another parse of it."""
        if self.positions is None or self.positions[0] is not pipeline:
            self.positions = (pipeline, _positions_in(pipeline.status))
        return self.positions[1]

    def last_status(
        self, previous: api.StreamPipelineStatus | None, findings: Findings
    ) -> _LastStatus | None:
        """The last pass's status when this pass's findings over the same previous status give it."""
        last = self.status
        if last is not None and last.previous is previous and same_status(findings, last.findings):
            return last
        return None

    def judged_not_worth(
        self, document: dict[str, Any], before: Mapping[str, Any] | None, figures: bool
    ) -> bool:
        """These documents were found not worth writing before, figures compared too if due now."""
        judged = self.not_written
        return judged is not None and judged[0] is document and judged[1] is before and judged[2] >= figures


class PipelineRuntime:
    """The reconcile loop of one StreamPipeline and the little state it keeps between passes."""

    def __init__(self, context: OperatorContext, namespace: str, name: str, uid: str) -> None:
        self.context = context
        self.kube = context.kube
        self.metrics = context.metrics
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.generation: int | None = None
        self.identity: str | None = None
        self.connection = PipelineConnection(
            context.kube,
            namespace,
            uid,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            secret_refresh=SECRET_REFRESH,
            shared=context.clients,
        )
        self.wake = asyncio.Event()
        self.failures = 0
        self.memory = PipelineMemory()
        self.desired_deployments: dict[str, dict[str, Any]] = {}
        self.writer = DeploymentWriter(context.kube, self.ref, context.metrics)
        self.trimmed_total: int | None = None
        self.last_trim_at: datetime | None = None
        self.written: dict[str, Any] | None = None
        self.written_status: api.StreamPipelineStatus | None = None  # ``written`` as a model
        self.reuse = _Reuse()
        self.figures_written_at = 0.0
        self.stopping = False
        self._parsed: tuple[str, api.StreamPipeline] | None = None
        # Per worker Deployment: the (pipeline, Deployment, replicas) versions last compared for drift.
        self._drift_checked: dict[str, tuple[str | None, str | None, int]] = {}

    # --- the loop ------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> PipelineRef:
        return PipelineRef(namespace=self.namespace, name=self.name, uid=self.uid)

    def poke(self) -> None:
        """Run the next pass now (the spec changed, a Deployment drifted, ownership may have moved)."""
        self.wake.set()

    async def run(
        self,
        body: Mapping[str, Any],
        pipelines: PipelineIndex,
        deployments: DeploymentIndex,
        stopped: StopFlag | None = None,
    ) -> None:
        """Reconcile until ``stopped`` is set (kopf sets it when the pipeline is deleted or the operator
        stops; it cancels the daemon if that takes too long). ``body`` is kopf's live view."""
        log.info("%s: reconciling", self.label)
        relay = asyncio.create_task(self._relay(stopped)) if stopped is not None else None
        try:
            while not self.stopping:
                delay = await self.reconcile(body, pipelines, deployments)
                # asyncio.timeout, not wait_for: no task per wait (a tenth of an idle pass's CPU).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            if relay is not None:
                relay.cancel()
            self.context.runtimes.pop(self.uid, None)
            # Figures are only true while this loop runs (deleted, or another replica took over).
            self.metrics.forget_pipeline(self.namespace, self.name)
            await self.connection.close()
            log.info("%s: stopped reconciling", self.label)

    async def _relay(self, stopped: StopFlag) -> None:
        await stopped.wait()
        self.stopping = True
        self.wake.set()

    async def reconcile(
        self, body: Mapping[str, Any], pipelines: PipelineIndex, deployments: DeploymentIndex
    ) -> float:
        """One pass; returns the seconds until the next one is due. Never raises (but cancellation)."""
        started = time.monotonic()
        result = "ok"
        try:
            delay = await self._reconcile(body, pipelines, deployments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an API failure nobody foresaw: report it, back off, keep the loop alive.
            log.exception("%s: reconcile failed: %s", self.label, exc)
            self._error("unexpected")
            self.failures += 1
            result = "error"
            delay = error_delay(self.failures, 1.0, MAX_ERROR_DELAY)
        self.metrics.reconciles.labels(self.namespace, self.name, result).inc()
        self.metrics.duration.labels(self.namespace, self.name).observe(time.monotonic() - started)
        return delay

    async def _reconcile(
        self, body: Mapping[str, Any], pipelines: PipelineIndex, deployments: DeploymentIndex
    ) -> float:
        meta = body.get("metadata") or {}
        self.generation = meta.get("generation")
        findings = Findings(generation=self.generation)
        try:
            pipeline = self._parse(body)
        except ValidationError as exc:
            findings.invalid = [str(error) for error in errors_of(exc)]
            self._error("invalid_spec")
            await self._finish(findings, body, pipeline=None)
            return IDLE_INTERVAL
        spec = pipeline.spec
        self.identity = stream_identity(spec)
        findings.group_names = [group.name for group in spec.groups]
        refused = self.context.policy.refusals(spec)
        if refused:
            # Nothing is created or changed for it (Redis included) until the spec is allowed.
            findings.not_allowed = refused
            self._error("not_allowed")
            await self._finish(findings, body, pipeline)
            return IDLE_INTERVAL
        # Partitioned: each partition has its own dead-letter stream (status.partitions).
        findings.dead_letter_stream = spec.dead_letter_stream if spec.partitions is None else None
        findings.partition_layout = spec.partition_layout
        findings.retention_configured = spec.retention is not None
        poll = min(group.scaling.poll_interval.total_seconds() for group in spec.groups)

        first = owner(pipelines.get(self.identity, ()))
        if first is not None and first.uid != self.uid:
            findings.conflict_with = (
                f"StreamPipeline {first.label} already uses stream {spec.stream} on {spec.redis.url}; this "
                f"pipeline changes nothing until that one is deleted or this one names another stream"
            )
            self._error("conflict")
            await self._finish(findings, body, pipeline)
            return max(poll, 1.0)

        acted = (self.written or _document_of(body) or {}).get("observedGeneration")
        work = _Pass(pipeline=pipeline, findings=findings, spec_changed=acted != self.generation)
        actual = {
            deployment["metadata"]["name"]: deployment
            for deployment in deployments.get((self.namespace, self.name), ())
        }
        scaler = DeploymentScaler(
            self.writer,
            failed=self.workload_failed,
            pipeline=self.name,
            groups=work.pipeline.spec.groups,
            actual=actual,
            findings=work.findings,
        )
        await self._update_deployments(work, actual)
        await self._housekeeping(work, scaler)
        await self._place_deployments(work, actual, scaler)
        await self._finish(findings, body, pipeline)

        if findings.redis_problem is not None:
            self.failures += 1
            return error_delay(self.failures, poll, MAX_ERROR_DELAY)
        self.failures = 0
        until = on_tick(self.memory.next_due(spec)) - time.monotonic()
        return min(max(until, 0.05), IDLE_INTERVAL)

    # --- Redis: the housekeeping pass ----------------------------------------------------------------

    async def _housekeeping(self, work: _Pass, scaler: DeploymentScaler) -> None:
        """Groups, scaling, retention and consumer cleanup (``housekeeping.run_pass``), and what they
        did as Events, logs, metrics and findings; a server that cannot be used becomes a finding."""
        spec = work.pipeline.spec
        findings = work.findings
        try:
            admin = await self.connection.admin(spec.redis)
            async with self.connection.turn():
                report = await run_pass(
                    spec,
                    admin,
                    scaler,
                    self.memory,
                    known_positions=self.reuse.known_positions(work.pipeline),
                )
        except SecretMissingError as exc:
            findings.redis_problem = (Reason.CREDENTIALS_MISSING, str(exc))
            self._error("credentials")
        except KubeError as exc:
            findings.redis_problem = (Reason.CREDENTIALS_MISSING, f"cannot read the credentials: {exc}")
            self._error("kubernetes")
        except RedisAuthError as exc:
            findings.redis_problem = (Reason.REDIS_AUTH_FAILED, str(exc))
            self._error("redis_auth")
        except RedisUnreachableError as exc:
            findings.redis_problem = (Reason.REDIS_UNREACHABLE, str(exc))
            self._error("redis_unreachable")
        except RedisAdminError as exc:
            # Reachable, but the stream cannot be used as it is (WRONGTYPE, a refused command).
            findings.group_problems = {name: str(exc) for name in findings.group_names}
            self._error("redis_command")
        else:
            work.decisions = report.decisions
            findings.take_pass(report, admin.where)
            self.metrics.redis_up.labels(self.namespace, self.name).set(1)
            await self._publish(work, report)
            return
        self.metrics.redis_up.labels(self.namespace, self.name).set(0)
        log.warning("%s: %s", self.label, findings.redis_problem[1] if findings.redis_problem else "")
        await self.connection.reset()

    async def _publish(self, work: _Pass, report: PassReport) -> None:
        """A pass's events as logs, Events and metrics; its trims in the totals status reports."""
        self.metrics.record_pass(self.namespace, self.name, report)
        for event in report.events:
            log.log(logging.WARNING if event.warning else logging.INFO, "%s: %s", self.label, event.message)
            if event.reason in POSTED_EVENTS:
                await self._event("Warning" if event.warning else "Normal", event.reason, event.message)
        if report.trimmed is not None and report.trimmed["stream"]:
            if self.trimmed_total is None:
                self.trimmed_total = self._trimmed_so_far(work.pipeline)
            self.trimmed_total += report.trimmed["stream"]
            self.last_trim_at = datetime.now(UTC)
        work.findings.trimmed_total = self.trimmed_total
        work.findings.last_trim_at = self.last_trim_at

    @property
    def _parsed_version(self) -> str | None:
        return self._parsed[0] if self._parsed is not None else None

    def _parse(self, body: Mapping[str, Any]) -> api.StreamPipeline:
        """The body as a model; parsed again only when its resourceVersion moved (validation, with
        the CEL rules, was a fifth of an idle pass's CPU, and an idle pipeline's body never changes)."""
        version = (body.get("metadata") or {}).get("resourceVersion")
        if version is not None and self._parsed is not None and self._parsed[0] == version:
            return self._parsed[1]
        pipeline = api.StreamPipeline.from_body(body)
        self._parsed = (version, pipeline) if version is not None else None
        return pipeline

    def _trimmed_so_far(self, pipeline: api.StreamPipeline) -> int:
        if self.written is not None:
            return int((self.written.get("stream") or {}).get("trimmedTotal", 0))
        stream = pipeline.status.stream if pipeline.status is not None else None
        return stream.trimmed_total if stream is not None else 0

    # --- Kubernetes: worker Deployments --------------------------------------------------------------

    async def _update_deployments(self, work: _Pass, actual: Mapping[str, Mapping[str, Any]]) -> None:
        """Bring existing worker Deployments to the spec (drift, or a changed spec) before scaling
        touches them; replicas are not part of that."""
        for group in work.pipeline.spec.groups:
            name = deployment_name(self.name, group.name)
            deployment = actual.get(name)
            if deployment is None:
                continue
            replicas = int((deployment.get("spec") or {}).get("replicas", 1))
            # The same pipeline and Deployment versions were compared already: nothing can differ.
            seen = (self._parsed_version, deployment["metadata"].get("resourceVersion"), replicas)
            if None not in seen and self._drift_checked.get(name) == seen:
                continue
            desired = build_deployment(work.pipeline, group, replicas=replicas)
            self.desired_deployments[name] = desired
            try:
                checked = await self.writer.revert_drift(
                    name, deployment, desired, spec_changed=work.spec_changed
                )
            except KubeError as exc:
                self.workload_failed(work.findings, group.name, exc)
                checked = False
            if checked:
                self._drift_checked[name] = seen
            else:
                self._drift_checked.pop(name, None)

    async def _place_deployments(
        self, work: _Pass, actual: Mapping[str, Mapping[str, Any]], scaler: DeploymentScaler
    ) -> None:
        """Create missing worker Deployments with the decided replicas, report every group's, and
        delete the Deployments of groups no longer in the spec."""
        pipeline = work.pipeline
        report: dict[str, GroupWorkload] = {}
        wanted: set[str] = set()
        for group in pipeline.spec.groups:
            name = deployment_name(self.name, group.name)
            wanted.add(name)
            deployment = actual.get(name)
            current = scaler.current_replicas(group.name)
            decision = work.decisions.get(group.name)
            replicas = placed_replicas(
                group.scaling.mode,
                group.scaling.min_replicas,
                current,
                decision.desired_replicas if decision is not None else None,
            )
            workload = GroupWorkload(
                replicas=scaler.scaled.get(group.name, current if current is not None else 0),
                ready_replicas=int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0),
                desired_replicas=replicas,
                mode=group.scaling.mode,
                backlog_unknown=decision is not None and decision.outcome == "BacklogUnknown",
                last_scale_time=self.writer.last_scale_time.get(group.name),
            )
            report[group.name] = workload
            if deployment is None:
                desired = build_deployment(pipeline, group, replicas=replicas)
                self.desired_deployments[name] = desired
                try:
                    await self.writer.create(name, desired, group.name, workload)
                except KubeError as exc:
                    self.workload_failed(work.findings, group.name, exc)
            self.metrics.replicas.labels(self.namespace, self.name, group.name).set(workload.replicas)
            self.metrics.desired_replicas.labels(self.namespace, self.name, group.name).set(replicas)
        work.findings.workloads = report
        self.metrics.track_groups(self.namespace, self.name, [group.name for group in pipeline.spec.groups])
        for name, deployment in actual.items():
            if name not in wanted and self._is_ours(deployment):
                try:
                    await self.kube.delete_deployment(self.namespace, name)
                except KubeError as exc:
                    log.warning("%s: %s", self.label, exc)
                    continue
                self.desired_deployments.pop(name, None)
                self._drift_checked.pop(name, None)
                await self._event(
                    "Normal",
                    Reason.DEPLOYMENT_DELETED,
                    f"deleted Deployment {name}: its group is no longer in the spec",
                )

    def workload_failed(self, findings: Findings, group: str, exc: KubeError) -> None:
        """ScaleTarget: a write to the group's Deployment failed; status reports it."""
        log.warning("%s: %s", self.label, exc)
        self._error("kubernetes")
        findings.workload_problems = {**findings.workload_problems, group: str(exc)}

    def _is_ours(self, deployment: Mapping[str, Any]) -> bool:
        refs = (deployment.get("metadata") or {}).get("ownerReferences") or []
        return any(ref.get("uid") == self.uid and ref.get("controller") for ref in refs)

    # --- status and events ---------------------------------------------------------------------------

    async def _finish(
        self, findings: Findings, body: Mapping[str, Any], pipeline: api.StreamPipeline | None
    ) -> None:
        previous = self.written_status
        if previous is None:
            previous = pipeline.status if pipeline is not None else _status_of(body)
        last = self.reuse.last_status(previous, findings)
        if last is not None:
            # The same findings over the same status give the same status and figures (an idle
            # pipeline, pass after pass): building and exporting them again was a third of its CPU.
            status, document = last.status, last.document
            if findings.server_state != last.findings.server_state:
                self.metrics.export_server(self.namespace, self.name, findings)
        else:
            now = datetime.now(UTC).replace(microsecond=0)
            status = build_status(findings, previous, now=now)
            document = status_document(status)
            self.metrics.export_status(self.namespace, self.name, findings, status, now=now.timestamp())
            self.reuse.status = _LastStatus(previous, findings, status, document)
        if self.stopping or (body.get("metadata") or {}).get("deletionTimestamp"):
            # Being deleted: the teardown (the finalizer) owns Ready now, e.g. DeletionBlocked; a pass
            # that was under way must not put its Reconciled back over it.
            return
        before = self.written if self.written is not None else _document_of(body)
        figures_due = time.monotonic() - self.figures_written_at >= FIGURES_INTERVAL
        if self.reuse.judged_not_worth(document, before, figures_due):
            return
        if not worth_writing(document, before, figures_due=figures_due):
            self.reuse.not_written = (document, before, figures_due)
            return
        try:
            await self.kube.patch_pipeline_status(self.namespace, self.name, document)
        except KubeError as exc:
            if exc.not_found:
                return  # deleted meanwhile
            log.warning("%s: %s", self.label, exc)
            self._error("kubernetes")
            return
        self.written, self.written_status = document, status
        self.figures_written_at = time.monotonic()
        await self._transition_events(before, status)

    async def _transition_events(
        self, before: Mapping[str, Any] | None, status: api.StreamPipelineStatus
    ) -> None:
        for type_, reason, message in transition_events(before, status):
            await self._event(type_, reason, message)

    def _error(self, kind: ErrorKind) -> None:
        self.metrics.count_error(self.namespace, self.name, kind)

    async def _event(self, type_: EventType, reason: str, message: str) -> None:
        await post_event(self.kube, self.ref, type_, reason, message)


def _positions_in(status: api.StreamPipelineStatus | None) -> dict[str, LastKnownPosition]:
    """Where status last saw each group (a group deleted by hand is recreated there)."""
    known: dict[str, LastKnownPosition] = {}
    for group in status.groups if status is not None else []:
        if group.last_delivered_id is None:
            continue
        try:
            known[group.name] = LastKnownPosition(
                last_delivered_id=EntryId.parse(group.last_delivered_id),
                entries_read=group.entries_read,
                oldest_pending_id=EntryId.parse(group.oldest_pending_id) if group.oldest_pending_id else None,
            )
        except ValueError:
            continue  # a status someone edited by hand: no position rather than a wrong one
    return known


def _status_of(body: Mapping[str, Any]) -> api.StreamPipelineStatus | None:
    document = _document_of(body)
    if document is None:
        return None
    try:
        return api.StreamPipelineStatus.model_validate(document)
    except ValidationError:
        return None


def _document_of(body: Mapping[str, Any]) -> dict[str, Any] | None:
    status = body.get("status")
    if not status:
        return None
    document: dict[str, Any] = api.plain(status)
    return document
