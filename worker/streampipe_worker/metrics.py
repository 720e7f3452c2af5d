"""Prometheus metrics and the ``/metrics`` ``/healthz`` ``/readyz`` endpoints (one port).

Metric names (labels ``stream``, ``group``; the chart's alert rules use these):

- ``streampipe_worker_processed_total``: entries handled successfully and acked
- ``streampipe_worker_failed_total``: failed handler attempts (each one)
- ``streampipe_worker_retried_total``: failed entries handed back for another attempt
- ``streampipe_worker_dead_lettered_total{reason}``: moved to the DLQ; reason ``max_deliveries`` or
  ``rejected`` (PermanentError, invalid event)
- ``streampipe_worker_reclaimed_total``: entries taken with XAUTOCLAIM (due retries, crashed peers)
- ``streampipe_worker_trimmed_before_processing_total``: pending entries found deleted (trimmed)
- ``streampipe_worker_deduplicated_total``: redeliveries skipped because their marker existed
- ``streampipe_worker_lease_lost_total``: held entries another consumer took or acked
- ``streampipe_worker_handed_back_total``: entries handed back at shutdown
- ``streampipe_worker_connection_errors_total``: Redis connection failures (each reconnect attempt)
- ``streampipe_worker_handler_duration_seconds``: histogram, one observation per entry
- ``streampipe_worker_batch_size``: histogram of entries per batch handled
- ``streampipe_worker_in_flight``: gauge, entries delivered to this worker and not yet settled

With ``ordering: PerKey`` (labels ``stream`` = the base name, ``group``; :class:`OwnershipMetrics`):

- ``streampipe_worker_partitions_owned``: gauge, partitions whose lease this worker holds
- ``streampipe_worker_partition_leases_lost_total``: leases lost while working (not renewed in time,
  or refused by the server's fence); the partition's unacked entries go to the next owner
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class DurationHistogram(Collector):
    """Handler durations, observed a batch at a time.

    prometheus_client's Histogram takes a lock per observation; at 150K entries/s that alone would cost
    more than the no-op handler, so the hot path adds whole batches here and the collector reports
    them at scrape time. Updates come from the event loop thread only.
    """

    def __init__(
        self, name: str, documentation: str, labels: dict[str, str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, durations: Sequence[float]) -> None:
        """One observation per value, exactly as ``observe`` of each would count them."""
        if not durations:
            return
        bounds = self.bounds
        total = sum(durations)
        lowest = bisect.bisect_left(bounds, min(durations))
        if lowest == bisect.bisect_left(bounds, max(durations)):
            # The usual batch: every call of a steady handler falls into one bucket. Three passes in C
            # instead of a bisect per value (a third of the cost at 1000 entries).
            with self._lock:
                self.counts[lowest] += len(durations)
                self.total += total
            return
        local = [0] * len(self.counts)
        for value in durations:
            local[bisect.bisect_left(bounds, value)] += 1
        with self._lock:
            for i, count in enumerate(local):
                self.counts[i] += count
            self.total += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = list(self.counts)
            total = self.total
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(list(self.labels.values()), buckets, total)
        yield family


@dataclass
class Stats:
    """Counts kept in memory for tests, the demo and the benchmark (metrics have the same numbers)."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    trimmed: int = 0
    handed_back: int = 0
    deduplicated: int = 0


class WorkerMetrics:
    """All of one worker's metrics, in their own registry (several workers can share a process)."""

    def __init__(self, stream: str, group: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"stream": stream, "group": group}
        names = list(labels)

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Any:
            return Counter(f"streampipe_worker_{name}", doc, [*names, *extra], registry=self.registry)

        self.processed = counter("processed", "Entries handled successfully and acked").labels(**labels)
        self.failed = counter("failed", "Failed handler attempts").labels(**labels)
        self.retried = counter("retried", "Failed entries handed back for another attempt").labels(**labels)
        dead = counter("dead_lettered", "Entries moved to the dead-letter stream", ["reason"])
        self.dead_max_deliveries = dead.labels(**labels, reason="max_deliveries")
        self.dead_rejected = dead.labels(**labels, reason="rejected")
        self.reclaimed = counter("reclaimed", "Entries taken with XAUTOCLAIM").labels(**labels)
        self.trimmed = counter(
            "trimmed_before_processing", "Pending entries deleted (trimmed) before they were processed"
        ).labels(**labels)
        self.deduplicated = counter("deduplicated", "Redeliveries skipped: marker present").labels(**labels)
        self.lease_lost = counter("lease_lost", "Held entries another consumer took or acked").labels(
            **labels
        )
        self.handed_back = counter("handed_back", "Entries handed back at shutdown").labels(**labels)
        self.connection_errors = counter("connection_errors", "Redis connection failures").labels(**labels)
        self.batch_size = Histogram(
            "streampipe_worker_batch_size",
            "Entries per handled batch",
            names,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.in_flight = Gauge(
            "streampipe_worker_in_flight",
            "Entries delivered and not yet settled",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.handler_duration = DurationHistogram(
            "streampipe_worker_handler_duration_seconds",
            "Handler run time per entry",
            labels,
            DURATION_BUCKETS,
        )
        self.registry.register(self.handler_duration)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class OwnershipMetrics:
    """A per-key ordering worker's partition ownership, in its own registry."""

    def __init__(self, base: str, group: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"stream": base, "group": group}
        self.partitions_owned = Gauge(
            "streampipe_worker_partitions_owned",
            "Partitions whose lease this worker holds",
            list(labels),
            registry=self.registry,
        ).labels(**labels)
        self.leases_lost = Counter(
            "streampipe_worker_partition_leases_lost",
            "Partition leases lost while working (not renewed in time, or fenced)",
            list(labels),
            registry=self.registry,
        ).labels(**labels)


class Registered(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class Rendered(Protocol):
    def render(self) -> bytes: ...


class HealthView(Protocol):
    @property
    def ready(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def alive(self) -> bool: ...


class MergedMetrics:
    """The metrics of several consumers in one process (one per partition) as one exposition: each
    metric once, with every consumer's samples (they differ in their ``stream`` label)."""

    def __init__(self, parts: Sequence[Registered]) -> None:
        self.parts: list[Registered] = list(parts)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for part in self.parts:
            for family in part.registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type)
                into.samples.extend(family.samples)
        yield from merged.values()

    def render(self) -> bytes:
        return generate_latest(self)  # anything with collect() will do


class Health:
    """Liveness and readiness as the consumer reports them."""

    def __init__(self, stale_after: float = 60.0) -> None:
        self.ready = False
        self.reason = "starting"
        self.stale_after = stale_after
        self._beat = time.monotonic()

    def beat(self) -> None:
        """The event loop is turning (called by a periodic task)."""
        self._beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.ready = ready
        self.reason = reason

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after


class AllHealth:
    """Several consumers' health as one: ready when all are, alive when all are."""

    def __init__(self, parts: dict[str, Health]) -> None:
        self.parts = parts

    @property
    def ready(self) -> bool:
        return all(part.ready for part in self.parts.values())

    @property
    def reason(self) -> str:
        waiting = [f"{name}: {part.reason}" for name, part in self.parts.items() if not part.ready]
        shown = "; ".join(waiting[:3])
        return shown + (f" (and {len(waiting) - 3} more)" if len(waiting) > 3 else "")

    @property
    def alive(self) -> bool:
        return all(part.alive for part in self.parts.values())


class MetricsServer:
    """``/metrics``, ``/healthz`` (event loop alive) and ``/readyz`` (connected, group present)."""

    def __init__(self, metrics: Rendered, health: HealthView, port: int, host: str) -> None:
        self.metrics = metrics
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    self._reply(200, outer.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    ok = outer.health.alive
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
                elif path == "/readyz":
                    ok = outer.health.ready
                    body = b"ready\n" if ok else f"not ready: {outer.health.reason}\n".encode()
                    self._reply(200 if ok else 503, body)
                else:
                    self._reply(404, b"not found\n")

            def _reply(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds would drown the worker's own log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
