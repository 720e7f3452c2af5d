"""The operator's gauges carry the figures of a real pipeline, read from its ``/metrics`` endpoint: stream
length, memory and entries added; per group backlog, pending, consumers and the age of the oldest
pending entry (what the chart's dashboard and its OldestPendingTooOld alert read). A group removed from
the spec, and then the deleted pipeline, leave no series behind.

The stream is made by the test with explicit IDs ten minutes in the past, so the oldest pending entry's
age is known from its ID alone (never from how long the test took).
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import redis
from tests.support.controlplane import Kubectl
from tests.support.operator_process import (
    Cluster,
    OperatorProcess,
    eventually,
    pipeline_manifest,
    worker_group,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

STREAM = "{orders}:events"
AGE = 600  # seconds: the first entry's ID is this far in the past
ENTRIES = 100
READ = 10

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorProcess, namespace: str) -> Series:
    """Every sample of the pipelines in ``namespace``: (name, labels) -> value."""
    series: Series = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace:
                series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def test_gauges_carry_the_pipelines_figures_and_go_with_it(
    kubectl: Kubectl, cluster: Cluster, redis_url: str, redis_client: redis.Redis, operator: OperatorProcess
) -> None:
    namespace = operator.namespaces[0]
    first_ms = int(time.time() * 1000) - AGE * 1000
    for n in range(ENTRIES):
        redis_client.xadd(STREAM, {"n": str(n)}, id=f"{first_ms}-{n}")
    groups = [worker_group("billing", startId="0"), worker_group("shipping", startId="0")]
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=groups))
    eventually(lambda: len(redis_client.xinfo_groups(STREAM)) == 2, what="both groups created")
    # billing: ten entries delivered to one consumer and not acknowledged; shipping: nothing read.
    redis_client.xreadgroup("billing", "tester", {STREAM: ">"}, count=READ)
    memory = redis_client.memory_usage(STREAM)
    assert memory

    pipeline = {"namespace": namespace, "pipeline": "orders"}
    billing = {**pipeline, "group": "billing"}
    shipping = {**pipeline, "group": "shipping"}

    def figures() -> Series | None:
        series = scrape(operator, namespace)
        pending = value(series, "streampipe_operator_group_pending", **billing)
        return series if pending == READ else None

    series = eventually(figures, what="billing's pending entries in the metrics")
    assert value(series, "streampipe_operator_stream_length", **pipeline) == ENTRIES
    assert value(series, "streampipe_operator_stream_entries_added", **pipeline) == ENTRIES
    assert value(series, "streampipe_operator_stream_memory_bytes", **pipeline) == memory
    assert value(series, "streampipe_operator_dead_letter_length", **pipeline) == 0
    assert value(series, "streampipe_operator_group_backlog", **billing) == ENTRIES
    assert value(series, "streampipe_operator_group_lag", **billing) == ENTRIES - READ
    assert value(series, "streampipe_operator_group_consumers", **billing) == 1
    billing_age = value(series, "streampipe_operator_group_oldest_pending_age_seconds", **billing)
    assert billing_age is not None
    assert billing_age >= AGE  # the ID says when the entry was added; the age only grows
    assert value(series, "streampipe_operator_group_backlog", **shipping) == ENTRIES
    assert value(series, "streampipe_operator_group_pending", **shipping) == 0
    assert value(series, "streampipe_operator_group_consumers", **shipping) == 0
    assert value(series, "streampipe_operator_group_oldest_pending_age_seconds", **shipping) == 0

    # Status says the same as a duration (written at most every few seconds for figures alone).
    def status_age() -> str | None:
        groups = {group.name: group for group in cluster.status(namespace, "orders").groups}
        return groups["billing"].oldest_pending_age if "billing" in groups else None

    minutes = eventually(status_age, what="oldestPendingAge in status").split("m")[0]
    assert int(minutes) >= AGE // 60

    # Acknowledged: nothing pending, the age drops to 0.
    redis_client.xack(STREAM, "billing", *[f"{first_ms}-{n}" for n in range(READ)])

    def settled() -> bool:
        series = scrape(operator, namespace)
        return value(series, "streampipe_operator_group_oldest_pending_age_seconds", **billing) == 0

    eventually(settled, what="oldest pending age 0 once all is acknowledged")

    # A group removed from the spec takes its series with it; the other group's stay.
    kubectl.apply(pipeline_manifest("orders", namespace, redis_url, groups=groups[:1]))

    def shipping_gone() -> bool:
        return not any(dict(labels).get("group") == "shipping" for _, labels in scrape(operator, namespace))

    eventually(shipping_gone, what="no series of the removed group shipping")
    series = scrape(operator, namespace)
    assert value(series, "streampipe_operator_group_backlog", **billing) == ENTRIES - READ

    # The deleted pipeline leaves nothing behind: gauges and counters alike.
    cluster.delete_pipeline(namespace, "orders")
    eventually(lambda: cluster.pipeline(namespace, "orders") is None, what="pipeline deleted")
    eventually(lambda: not scrape(operator, namespace), what="no series of the deleted pipeline")
