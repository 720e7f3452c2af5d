"""Prometheus metrics of the operator, served on ``--metrics-port`` (``/metrics``).

Every name starts with ``streampipe_operator_``; docs/operator.md lists them with their labels. Series
of a pipeline are removed when the pipeline is deleted, so a long-running operator does not keep
reporting the backlog of pipelines that are gone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics import MetricWrapperBase

from streampipe_operator import api
from streampipe_operator.api import ConditionType, Reason
from streampipe_operator.engine.housekeeping import FAILURES, PassReport
from streampipe_operator.kube.status import Findings, oldest_pending_seconds, oldest_unread_seconds

PIPELINE = ("namespace", "pipeline")
# The kinds of streampipe_operator_errors_total (docs/operator.md lists them).
ErrorKind = Literal[
    "redis_unreachable",
    "redis_auth",
    "redis_command",
    "credentials",
    "kubernetes",
    "invalid_spec",
    "not_allowed",
    "conflict",
    "unexpected",
]
GROUP = ("namespace", "pipeline", "group")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    """The operator's metrics in a registry of their own (tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `*_created` series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "streampipe_operator_reconciles_total",
            "Reconcile passes of a pipeline, by result (ok, error).",
            [*PIPELINE, "result"],
            registry=r,
        )
        self.errors = Counter(
            "streampipe_operator_errors_total",
            "Failures during reconciliation, by kind (redis_unreachable, redis_auth, credentials, "
            "kubernetes, invalid_spec, conflict, unexpected).",
            [*PIPELINE, "kind"],
            registry=r,
        )
        self.duration = Histogram(
            "streampipe_operator_reconcile_duration_seconds",
            "Time one reconcile pass of a pipeline took (observe Redis and Kubernetes, plan, apply).",
            PIPELINE,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "streampipe_operator_pipeline_ready",
            "1 when the pipeline's Ready condition is True, else 0.",
            PIPELINE,
            registry=r,
        )
        self.leader = Gauge(
            "streampipe_operator_housekeeper_leader",
            "`streampipe housekeep` only: 1 while this process holds the pipeline's lease, else 0.",
            PIPELINE,
            registry=r,
        )
        self.redis_up = Gauge(
            "streampipe_operator_redis_up",
            "1 when the operator reached the pipeline's server on the last pass, else 0.",
            PIPELINE,
            registry=r,
        )
        self.backlog = Gauge(
            "streampipe_operator_group_backlog",
            "Backlog (lag + pending) of a consumer group; absent while unknown.",
            GROUP,
            registry=r,
        )
        self.lag = Gauge(
            "streampipe_operator_group_lag",
            "Entries not yet delivered to a group (estimated when the server reports none).",
            GROUP,
            registry=r,
        )
        self.pending = Gauge(
            "streampipe_operator_group_pending",
            "Entries delivered to a group and not yet acknowledged.",
            GROUP,
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "streampipe_operator_group_oldest_pending_age_seconds",
            "Age of a group's oldest pending entry (now minus its ID's timestamp); 0 when nothing is "
            "pending, absent while the group is missing.",
            GROUP,
            registry=r,
        )
        self.oldest_unread_age = Gauge(
            "streampipe_operator_group_oldest_unread_age_seconds",
            "Age of the oldest entry the group has not read yet (from its ID; 0 when nothing is unread).",
            GROUP,
            registry=r,
        )
        self.used_memory = Gauge(
            "streampipe_operator_server_used_memory_bytes",
            "The pipeline's server: INFO memory used_memory.",
            PIPELINE,
            registry=r,
        )
        self.maxmemory = Gauge(
            "streampipe_operator_server_maxmemory_bytes",
            "The pipeline's server: maxmemory (0 = no limit).",
            PIPELINE,
            registry=r,
        )
        self.evicts_streams = Gauge(
            "streampipe_operator_server_evicts_streams",
            "1 when the server's maxmemory-policy (allkeys-*) may evict the pipeline's streams.",
            PIPELINE,
            registry=r,
        )
        self.stream_memory_share = Gauge(
            "streampipe_operator_stream_memory_share",
            "The stream's MEMORY USAGE as a share of the server's used_memory (0..1).",
            PIPELINE,
            registry=r,
        )
        self.consumers = Gauge(
            "streampipe_operator_group_consumers",
            "Consumers registered in a group (running workers and ones not yet cleaned up).",
            GROUP,
            registry=r,
        )
        self.replicas = Gauge(
            "streampipe_operator_group_replicas",
            "Replicas of a group's worker Deployment (spec.replicas).",
            GROUP,
            registry=r,
        )
        self.desired_replicas = Gauge(
            "streampipe_operator_group_desired_replicas",
            "Replicas the scaling policy asks for.",
            GROUP,
            registry=r,
        )
        self.scale_changes = Counter(
            "streampipe_operator_scale_changes_total",
            "Replica changes made through /scale, by direction (up, down).",
            [*GROUP, "direction"],
            registry=r,
        )
        self.trimmed = Counter(
            "streampipe_operator_trimmed_entries_total",
            "Entries removed by retention, by key (stream, dead_letter).",
            [*PIPELINE, "target"],
            registry=r,
        )
        self.retention_held = Gauge(
            "streampipe_operator_retention_held_entries",
            "Entries the retention policy would remove that protectUnprocessed keeps (at least).",
            PIPELINE,
            registry=r,
        )
        self.stream_length = Gauge(
            "streampipe_operator_stream_length",
            "Entries in the pipeline's stream (XLEN); 0 while the stream does not exist.",
            PIPELINE,
            registry=r,
        )
        self.stream_memory = Gauge(
            "streampipe_operator_stream_memory_bytes",
            "Memory the stream key takes on the server (MEMORY USAGE); absent when not permitted.",
            PIPELINE,
            registry=r,
        )
        self.stream_entries_added = Gauge(
            "streampipe_operator_stream_entries_added",
            "Entries ever added to the stream (the server's own counter, so rate() of it is the "
            "produce rate; it restarts when the stream is recreated).",
            PIPELINE,
            registry=r,
        )
        self.dead_letter_length = Gauge(
            "streampipe_operator_dead_letter_length",
            "Entries in the pipeline's dead-letter stream.",
            PIPELINE,
            registry=r,
        )
        self.consumers_removed = Counter(
            "streampipe_operator_consumers_removed_total",
            "Idle consumers without pending entries removed from groups.",
            GROUP,
            registry=r,
        )
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], set[str]] = {}

    def track_groups(self, namespace: str, pipeline: str, groups: Iterable[str]) -> None:
        """Remember which groups a pipeline has, and drop the series of groups it no longer has."""
        wanted = set(groups)
        with self._lock:
            known = self._groups.setdefault((namespace, pipeline), set())
            gone = known - wanted
            known.clear()
            known.update(wanted)
        for group in gone:
            self._remove_series({"namespace": namespace, "pipeline": pipeline, "group": group})

    def export_status(
        self, namespace: str, name: str, findings: Findings, status: api.StreamPipelineStatus, *, now: float
    ) -> None:
        """The figures of this pass as gauges. While Redis is unreachable they keep their last values
        (as status does); a figure that became unknown loses its series."""
        metrics, pipeline = self, (namespace, name)
        ready = status.condition(ConditionType.READY)
        metrics.ready.labels(*pipeline).set(1 if ready and ready.status == "True" else 0)
        observation = findings.observation
        if observation is None:
            return
        for group in status.groups:
            labels = (*pipeline, group.name)
            state = observation.group(group.name)
            metrics.put(metrics.backlog, group.backlog, *labels)
            metrics.put(metrics.lag, group.lag, *labels)
            metrics.pending.labels(*labels).set(group.pending)
            metrics.put(metrics.consumers, group.consumers if state is not None else None, *labels)
            age = oldest_pending_seconds(state, now=now) if state is not None else None
            metrics.put(metrics.oldest_pending_age, age, *labels)
            unread = (oldest_unread_seconds(state, now=now) or 0.0) if state is not None else None
            metrics.put(metrics.oldest_unread_age, unread, *labels)
        self.export_server(namespace, name, findings)
        stream = status.stream
        metrics.stream_length.labels(*pipeline).set(stream.length if stream is not None else 0)
        metrics.put(metrics.stream_memory, stream.memory_bytes if stream is not None else None, *pipeline)
        added = stream.entries_added if stream is not None else None
        metrics.put(metrics.stream_entries_added, added, *pipeline)
        if status.dead_letter is not None:
            metrics.dead_letter_length.labels(*pipeline).set(status.dead_letter.length)

    def export_server(self, namespace: str, name: str, findings: Findings) -> None:
        """The server's memory figures of this pass (the part of :meth:`export_status` that changes
        while status does not)."""
        server, observation, pipeline = findings.server_state, findings.observation, (namespace, name)
        if server is None or observation is None:
            return
        self.put(self.used_memory, server.used_memory, *pipeline)
        self.put(self.maxmemory, server.maxmemory, *pipeline)
        evicts = None if server.maxmemory_policy is None else float(server.evicts_any_key)
        self.put(self.evicts_streams, evicts, *pipeline)
        share = None
        if server.used_memory and observation.memory_bytes is not None:
            share = min(1.0, observation.memory_bytes / server.used_memory)
        self.put(self.stream_memory_share, share, *pipeline)

    def record_pass(self, namespace: str, pipeline: str, report: PassReport) -> None:
        """What one housekeeping pass did (the operator's and ``housekeep``'s): failed steps, removed
        consumers, the entries retention holds back and the entries trimmed."""
        labels = (namespace, pipeline)
        for event in report.events:
            if event.reason in FAILURES:
                self.count_error(*labels, "redis_command")
            if event.reason == Reason.CONSUMER_REMOVED and event.group is not None:
                self.consumers_removed.labels(*labels, event.group).inc()
        held = report.retention.held if report.retention is not None else None
        self.retention_held.labels(*labels).set(held.entries.value if held is not None else 0)
        for target, removed in (report.trimmed or {}).items():
            self.trimmed.labels(*labels, target).inc(removed)

    def count_error(self, namespace: str, pipeline: str, kind: ErrorKind) -> None:
        """One failure of this kind during a pipeline's reconciliation."""
        self.errors.labels(namespace, pipeline, kind).inc()

    def forget_pipeline(self, namespace: str, pipeline: str) -> None:
        """Remove every series of a pipeline that is gone (or no longer reconciled here): gauges and
        counters alike, so that neither a stale figure nor a frozen counter stays behind."""
        with self._lock:
            self._groups.pop((namespace, pipeline), None)
        self._remove_series({"namespace": namespace, "pipeline": pipeline})

    def _remove_series(self, labels: dict[str, str]) -> None:
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase):
                with contextlib.suppress(ValueError):  # a metric without such a label has no such series
                    metric.remove_by_labels(labels)

    @staticmethod
    def put(gauge: Gauge, value: float | None, *labels: str) -> None:
        """Set a labelled gauge, or remove its series while the value is unknown (never a stale one)."""
        if value is None:
            _remove(gauge, *labels)
        else:
            gauge.labels(*labels).set(value)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside the pod
        """Serve ``/metrics`` on ``port`` from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)
