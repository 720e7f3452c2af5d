"""The pure parts of `streampipe up` and the data commands: mapping, filters, parsing, accounting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streampipe_operator.api import StreamPipeline
from streampipe_operator.engine.spec_mapping import (
    retention_policy,
    scaling_policy,
    shutdown_grace,
    template_env,
    worker_settings_values,
)
from streampipe_operator.local.accounting import percentile
from streampipe_operator.local.counters import CounterBook
from streampipe_operator.local.demo import DemoCounts, order_event, order_kind
from streampipe_operator.local.workers import worker_env
from streampipe_operator.streams.dlq import DeadLetterFilter
from streampipe_operator.streams.producing import parse_events
from streampipe_operator.streams.targets import UsageError, load_pipeline, resolve_target
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.settings import load_settings, render_env

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "pipeline.yaml"


def quickstart() -> StreamPipeline:
    return load_pipeline(QUICKSTART)


def test_the_quickstart_is_a_valid_pipeline_with_demo_timings() -> None:
    spec = quickstart().spec
    fulfilment = spec.group("fulfilment")
    assert fulfilment.scaling.min_replicas == 1
    assert fulfilment.scaling.max_replicas > 1
    assert fulfilment.scaling.poll_interval.total_seconds() == 1
    assert spec.retention is not None


def test_worker_env_from_the_spec_is_what_the_worker_reads_back() -> None:
    pipeline = quickstart()
    group = pipeline.spec.group("fulfilment")
    values = worker_settings_values(pipeline.spec, group, redis_url="redis://127.0.0.1:7000/0")
    settings = load_settings(render_env(values), consumer="c1")
    assert settings.redis_url == "redis://127.0.0.1:7000/0"
    assert (settings.stream, settings.group, settings.handler) == (
        "{shop}:orders",
        "fulfilment",
        "quickstart_shop.fulfilment:router",
    )
    assert settings.batch_size == group.batch_size
    assert settings.concurrency == group.concurrency
    assert settings.max_deliveries == pipeline.spec.retry.max_deliveries
    assert settings.backoff_initial == timedelta(milliseconds=200)
    assert settings.claim_idle == timedelta(seconds=5)
    assert settings.dead_letter == "{shop}:orders:dlq"
    assert settings.shutdown_grace == timedelta(seconds=5)  # terminationGracePeriodSeconds 10, half kept
    assert template_env(group) == ({"QUICKSTART_WORK_MS": "4"}, [])


def test_dedupe_ttl_reaches_the_local_workers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stale variable in the shell must not decide it: the spec does, in both directions.
    monkeypatch.setenv("STREAMPIPE_DEDUPE_TTL", "5s")
    monkeypatch.setenv("STREAMPIPE_CREATE_GROUP", "0")  # the engine creates groups under up, not workers
    document = quickstart().to_manifest()
    plain = StreamPipeline.model_validate(document).spec
    env, _ = worker_env(
        plain, plain.group("fulfilment"), redis_url="redis://127.0.0.1:7000/0", python_path=[]
    )
    assert "STREAMPIPE_DEDUPE_TTL" not in env
    assert "STREAMPIPE_CREATE_GROUP" not in env
    document["spec"]["groups"][0]["dedupe"] = {"ttl": "90m"}
    spec = StreamPipeline.model_validate(document).spec
    group = spec.groups[0]
    env, _ = worker_env(spec, group, redis_url="redis://127.0.0.1:7000/0", python_path=[])
    assert env["STREAMPIPE_DEDUPE_TTL"] == "1h30m"  # the worker's own spelling of the same duration
    assert load_settings(env).dedupe_ttl == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("grace", "expected"), [(None, 25.0), (30, 25.0), (60, 55.0), (10, 5.0), (4, 2.0), (0, 0.0)]
)
def test_shutdown_grace_ends_before_the_kill(grace: int | None, expected: float) -> None:
    assert shutdown_grace(grace).total_seconds() == expected


def test_policies_from_the_spec() -> None:
    spec = quickstart().spec
    scaling = scaling_policy(spec.group("fulfilment").scaling)
    assert (scaling.min_replicas, scaling.max_replicas, scaling.backlog_per_replica) == (1, 4, 200)
    assert scaling.scale_down_stabilization == 5.0
    assert spec.retention is not None
    retention = retention_policy(spec.retention)
    assert (retention.max_length, retention.max_age, retention.protect_unprocessed) == (1000, None, True)


def envelope(type_: str, group: str, error: BaseException) -> DeadLetterEnvelope:
    return DeadLetterEnvelope.for_failure(
        entry_id="1-1",
        fields={"type": type_, "payload": "{}"},
        stream="s",
        group=group,
        consumer="c",
        deliveries=3,
        error=error,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )


class GatewayTimeoutError(Exception):
    pass


def test_dead_letter_filters_combine_keys_and_alternate_values() -> None:
    where = DeadLetterFilter.parse(["type=a", "type=b", "exception=GatewayTimeoutError", "error=slow"])
    assert where.matches(envelope("a", "g", GatewayTimeoutError("too slow")))
    assert where.matches(envelope("b", "g", GatewayTimeoutError("slow gateway")))
    assert not where.matches(envelope("c", "g", GatewayTimeoutError("slow")))
    assert not where.matches(envelope("a", "g", ValueError("slow")))
    assert not where.matches(envelope("a", "g", GatewayTimeoutError("fast")))
    assert DeadLetterFilter.parse([]).empty
    assert DeadLetterFilter.parse(["group=billing"]).matches(envelope("x", "billing", ValueError()))


@pytest.mark.parametrize("bad", ["type", "=x", "colour=red", "type=", "error=a&error=b"])
def test_bad_filters_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        DeadLetterFilter.parse(bad.split("&"))


def test_events_parse_from_objects_or_typed_payloads() -> None:
    events = parse_events([("a", '{"type": "t", "payload": {"x": 1}, "version": 2}'), ("b", "  ")])
    assert [(e.type, e.payload, e.version) for e in events] == [("t", {"x": 1}, 2)]
    typed = parse_events([("a", "3"), ("b", '"text"')], event_type="n", version=4)
    assert [(e.type, e.payload, e.version) for e in typed] == [("n", 3, 4), ("n", "text", 4)]


def test_targets_need_a_file_or_url_and_stream(tmp_path: Path) -> None:
    target = resolve_target(None, redis_url="redis://h:1/0", stream="s")
    assert (target.stream, target.dead_letter) == ("s", "s:dlq")
    from_file = resolve_target(QUICKSTART, redis_url="redis://127.0.0.1:9/0", stream=None)
    assert (from_file.stream, from_file.dead_letter, from_file.redis_url) == (
        "{shop}:orders",
        "{shop}:orders:dlq",
        "redis://127.0.0.1:9/0",
    )
    with pytest.raises(UsageError, match="contradicts"):
        resolve_target(QUICKSTART, redis_url=None, stream="other")
    two = tmp_path / "two.yaml"
    two.write_text(QUICKSTART.read_text() + "\n---\n" + QUICKSTART.read_text())
    with pytest.raises(UsageError, match="holds 2 StreamPipelines"):
        load_pipeline(two)


def test_demo_orders_are_what_their_number_says() -> None:
    counts = DemoCounts()
    for order_id in range(1, 1001):
        counts.add(order_id)
    assert (counts.too_expensive, counts.cursed, counts.invalid) == (2, 2, 2)
    assert counts.flaky == 40  # every 25th order; none of the poison numbers is a multiple of 25
    assert counts.sent == 1000 == counts.ok + counts.flaky + counts.poison
    assert order_kind(456) == "invalid"
    assert order_event(456).payload["order_id"] == "abc"
    assert order_event(123).payload["amount"] > 10_000
    assert order_event(321).payload["item"] == "cursed-widget"


def test_counter_book_adds_up_across_a_worker_restart() -> None:
    book = CounterBook()
    book.record("g", "r1", {"processed": 10, "retried": 2})
    book.record("g", "r2", {"processed": 5, "retried": 0})
    book.record("g", "r1", {"processed": 12, "retried": 2})
    book.record("g", "r1", {"processed": 3, "retried": 1})  # restarted: counters from zero
    book.record("other", "x1", {"processed": 100})
    totals = book.totals("g")
    assert (totals["processed"], totals["retried"]) == (12 + 3 + 5, 2 + 1)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([7.0], 0.99)) == (50.0, 99.0, 7.0)
