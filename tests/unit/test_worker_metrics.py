"""The handler-duration histogram: batch observations, per-entry semantics."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from streampipe_worker.metrics import DURATION_BUCKETS, DurationHistogram

NAME = "streampipe_worker_handler_duration_seconds"


def exposition(durations_per_batch: list[list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(bucket -> count, sum/count) from DurationHistogram fed per batch and from prometheus_client's
    own Histogram fed one value at a time, the reference for what per-entry observation means."""
    ours = DurationHistogram(NAME, "doc", {"stream": "s", "group": "g"}, DURATION_BUCKETS)
    registry = CollectorRegistry()
    reference = Histogram(NAME, "doc", ["stream", "group"], buckets=DURATION_BUCKETS, registry=registry)
    for batch in durations_per_batch:
        ours.observe_many(batch)
        for value in batch:
            reference.labels(stream="s", group="g").observe(value)
    found: list[dict[str, float]] = []
    for families in (list(ours.collect()), list(registry.collect())):
        samples = {}
        for sample in families[0].samples:
            key = sample.name.removeprefix(NAME) + str(sample.labels.get("le", ""))
            if key != "_created":
                samples[key] = sample.value
        found.append(samples)
    return found[0], found[1]


@pytest.mark.parametrize(
    "batches",
    [
        [[0.0000003] * 1000],  # a no-op handler: one bucket, the fast path
        [[0.001] * 10, [0.0005] * 3],  # values on a bucket's bound belong to it (le)
        [[0.0004, 0.0006, 0.003, 40.0, 0.0004]],  # spread over buckets, +Inf included
        [[random.Random(seed).expovariate(200) for _ in range(500)] for seed in range(4)],
    ],
    ids=["one-bucket", "on-bounds", "spread", "random"],
)
def test_batch_observations_expose_what_one_by_one_would(batches: list[list[float]]) -> None:
    ours, reference = exposition(batches)
    assert {k: v for k, v in ours.items() if k != "_sum"} == {
        k: v for k, v in reference.items() if k != "_sum"
    }
    assert ours["_sum"] == pytest.approx(reference["_sum"])
