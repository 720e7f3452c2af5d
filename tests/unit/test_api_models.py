"""The StreamPipeline models: defaults, round trips, durations, hash tags, conditions, status summary."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streampipe_operator import api
from streampipe_operator.api.durations import (
    DURATION_PATTERN,
    Duration,
    DurationError,
    DurationRange,
    format_duration,
    parse_duration,
)
from tests.support.invalid_specs import minimal_manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Written out in full on purpose: changing a default is an API change and must show up in review.
MINIMAL_SPEC_WITH_DEFAULTS = {
    "redis": {"url": "redis://redis.shop.svc:6379/0", "mode": "standalone"},
    "stream": "{orders}:events",
    "retry": {
        "maxDeliveries": 3,
        "backoff": {"initial": "1s", "multiplier": 2.0, "max": "5m"},
        "claimIdle": "60s",
    },
    "deadLetter": {"maxLength": 100000},
    "deletionPolicy": "Retain",
    "groups": [
        {
            "name": "billing",
            "startId": "$",
            "handler": "shop.billing:handle",
            "image": "registry.example.com/billing:1.0",
            "imagePullPolicy": "IfNotPresent",
            "batchSize": 100,
            "concurrency": 1,
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 10,
                "backlogPerReplica": 1000,
                "activationBacklog": 0,
                "pollInterval": "5s",
                "scaleDownStabilization": "5m",
                "mode": "native",
            },
        }
    ],
}


def pipeline_documents(path: Path) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == api.KIND]


def test_minimal_manifest_gets_every_default() -> None:
    pipeline = api.StreamPipeline.model_validate(minimal_manifest())
    assert pipeline.to_manifest()["spec"] == MINIMAL_SPEC_WITH_DEFAULTS


def test_typed_access_to_defaults() -> None:
    spec = api.StreamPipeline.model_validate(minimal_manifest()).spec
    assert spec.retry.claim_idle.delta == timedelta(seconds=60)
    assert spec.retry.backoff.max.milliseconds == 300_000
    assert spec.groups[0].scaling.poll_interval.total_seconds() == 5.0
    assert spec.dead_letter_stream == "{orders}:events:dlq"
    assert spec.group("billing").batch_size == 100
    with pytest.raises(KeyError, match="groups: billing"):
        spec.group("shipping")


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_round_trip(example: Path) -> None:
    for document in pipeline_documents(example):
        pipeline = api.StreamPipeline.model_validate(document)
        manifest = pipeline.to_manifest()
        # What the user wrote survives unchanged (durations keep their spelling) ...
        assert _contains(manifest, document), f"{example.name}: a written value changed on the way through"
        # ... and the manifest with defaults reads back into the same model.
        assert api.StreamPipeline.model_validate(manifest) == pipeline
        assert api.StreamPipeline.model_validate_json(pipeline.model_dump_json(by_alias=True)) == pipeline


def _contains(whole: object, part: object) -> bool:
    """``part`` is ``whole`` with some mapping keys left out (defaults), lists item by item."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _contains(whole[k], v) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and len(whole) == len(part) and all(map(_contains, whole, part))
    return bool(whole == part)


class _ReadOnlyView(Mapping[str, Any]):
    """Like kopf's Body/Spec: a Mapping over nested dicts, not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return _ReadOnlyView(value) if isinstance(value, dict) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_from_body_takes_read_only_mappings() -> None:
    pipeline = api.StreamPipeline.from_body(_ReadOnlyView(minimal_manifest()))
    assert pipeline == api.StreamPipeline.model_validate(minimal_manifest())


def test_snake_case_names_and_camel_case_aliases_both_work() -> None:
    by_name = api.RetrySpec(max_deliveries=7, claim_idle=Duration("2m"))
    by_alias = api.RetrySpec.model_validate({"maxDeliveries": 7, "claimIdle": "2m"})
    assert by_name == by_alias
    assert by_name.model_dump(by_alias=True, mode="json")["claimIdle"] == "2m"


def test_spec_is_strict_like_the_api_server() -> None:
    # pydantic would coerce "5" to 5 in lax mode; the API server refuses it, so do we.
    with pytest.raises(ValidationError, match="batchSize"):
        api.GroupSpec.model_validate({"name": "a", "handler": "m:f", "image": "i", "batchSize": "5"})


def test_null_means_default_as_on_the_api_server() -> None:
    # The API server prunes `mode: null` (non-nullable) before defaulting; the models do the same.
    redis = api.RedisSpec.model_validate({"url": "redis://r:6379", "mode": None})
    assert redis.mode == "standalone"


def test_spec_models_are_frozen() -> None:
    spec = api.StreamPipeline.model_validate(minimal_manifest()).spec
    with pytest.raises(ValidationError, match="frozen"):
        spec.stream = "other"  # type: ignore[misc]


def test_status_is_lenient_and_round_trips() -> None:
    status = api.StreamPipelineStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "message": "",
                    "lastTransitionTime": "2026-11-26T21:14:00Z",
                    "observedGeneration": 3,
                }
            ],
            "server": {"family": "valkey", "version": "9.1.0"},
            "stream": {
                "length": 524387,
                "lastGeneratedId": "1764191640000-0",
                "lastTrimAt": "2026-11-26T21:13:30Z",
            },
            "groups": [
                {"name": "billing", "lag": 42, "pending": 7, "consumers": 3, "futureField": "ignored"}
            ],
            "deadLetter": {"length": 12},
        }
    )
    assert status.conditions[0].last_transition_time == datetime(2026, 11, 26, 21, 14, tzinfo=UTC)
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-11-26T21:14:00Z"
    assert dumped["stream"]["lastTrimAt"] == "2026-11-26T21:13:30Z"
    assert "futureField" not in dumped["groups"][0]
    assert api.StreamPipelineStatus.model_validate(dumped) == status


def test_timestamps_are_whole_seconds_utc() -> None:
    local = datetime(2026, 11, 26, 22, 14, 5, 987654, tzinfo=UTC).astimezone()
    condition = api.Condition(type="Ready", status="True", reason="Reconciled", last_transition_time=local)
    assert condition.model_dump(mode="json", by_alias=True)["lastTransitionTime"] == "2026-11-26T22:14:05Z"


def test_summary_sums_backlog_and_workers() -> None:
    status = api.StreamPipelineStatus(
        groups=[
            api.GroupStatus(name="a", backlog=40, ready_replicas=2, desired_replicas=3),
            api.GroupStatus(name="b", backlog=2, ready_replicas=1, desired_replicas=1),
            api.GroupStatus(name="c", backlog=None, ready_replicas=0, desired_replicas=0),
        ]
    ).summarized()
    assert status.backlog == 42
    assert status.workers == "3/4"
    empty = api.StreamPipelineStatus().summarized()
    assert empty.backlog is None
    assert empty.workers is None


# ---------------------------------------------------------------------------------------- conditions

T0 = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_is_appended_with_now() -> None:
    first = api.set_condition([], "RedisReachable", "True", "Connected", now=T0)
    both = api.set_condition(
        first, "Ready", "False", "Reconciling", "creating groups", observed_generation=2, now=T1
    )
    assert [c.type for c in both] == ["RedisReachable", "Ready"]
    assert both[1].last_transition_time == T1
    assert both[1].observed_generation == 2
    assert both[1].message == "creating groups"


def test_same_status_keeps_the_transition_time() -> None:
    before = api.set_condition([], "Ready", "False", "Reconciling", "creating groups", now=T0)
    after = api.set_condition(before, "Ready", "False", "RedisUnreachable", "connection refused", now=T1)
    assert after[0].last_transition_time == T0
    assert (after[0].reason, after[0].message) == ("RedisUnreachable", "connection refused")


def test_status_flip_moves_the_transition_time() -> None:
    before = api.set_condition([], "Ready", "False", "Reconciling", now=T0)
    after = api.set_condition(before, "Ready", "True", "Reconciled", now=T1)
    assert after[0].last_transition_time == T1
    assert after[0].status == "True"


def test_set_condition_does_not_modify_its_input_and_keeps_order() -> None:
    conditions = api.set_condition([], "Ready", "True", "Reconciled", now=T0)
    conditions = api.set_condition(conditions, "Scaling", "False", "Stable", now=T0)
    snapshot = [c.model_copy() for c in conditions]
    updated = api.set_condition(conditions, "Ready", "False", "RedisUnreachable", now=T1)
    assert conditions == snapshot
    assert [c.type for c in updated] == ["Ready", "Scaling"]
    assert updated[1] is conditions[1]
    assert api.find_condition(updated, "Ready") == updated[0]
    assert api.find_condition(updated, api.ConditionType.DURABILITY_AT_RISK) is None


def test_status_condition_lookup() -> None:
    status = api.StreamPipelineStatus(conditions=api.set_condition([], "Ready", "True", "Reconciled", now=T0))
    ready = status.condition(api.ConditionType.READY)
    assert ready is not None
    assert ready.status == "True"


# ----------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1m30s500ms", timedelta(minutes=1, seconds=30, milliseconds=500)),
        ("0s", timedelta()),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert Duration(text).delta == expected
    assert str(Duration(text)) == text


@pytest.mark.parametrize(
    "text", ["", "5", "1d", "1.5h", "-5s", "5 s", "5S", "1us", "1234567s", "1h1h1h1h1h1h1h1h1h1h1h", "s"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(DurationError, match="a duration such as 30s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(), "0s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=26, milliseconds=1), "26h1ms"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert Duration.of(delta) == text


@given(st.integers(min_value=0, max_value=1_000_000 * 3_600_000 - 1))
def test_format_then_parse_is_identity(millis: int) -> None:
    delta = timedelta(milliseconds=millis)
    text = format_duration(delta)
    assert parse_duration(text) == delta


def test_duration_range_message_and_rule_agree() -> None:
    bounds = DurationRange("1s", "24h")
    assert bounds.message == "must be between 1s and 24h"
    assert "duration(self) >= duration('1s')" in bounds.cel_rule
    assert DURATION_PATTERN in bounds.cel_rule
    assert DurationRange("0s", "1h").message == "must be at most 1h"
    with pytest.raises(ValueError, match="empty range"):
        DurationRange("2h", "1h")


# ---------------------------------------------------------------------------------------- hash tags


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{orders}:events", "orders"),
        ("shop:{orders}:events", "orders"),
        ("{orders}:{x}", "orders"),
        ("orders", None),
        ("{}:orders", None),  # an empty tag: Redis hashes the whole key
        ("a{}{b}", None),  # only the first `{` counts
        ("{orders", None),
    ],
)
def test_hash_tag_follows_redis(key: str, tag: str | None) -> None:
    assert api.hash_tag(key) == tag


def test_group_dedupe_ttl_is_optional_and_a_duration() -> None:
    group = {"name": "billing", "handler": "shop.billing:handle", "image": "reg/billing:1"}
    assert api.GroupSpec.model_validate(group).dedupe is None
    with_ttl = api.GroupSpec.model_validate({**group, "dedupe": {"ttl": "1h30m"}})
    assert with_ttl.dedupe is not None
    assert with_ttl.dedupe.ttl.delta == timedelta(hours=1, minutes=30)
    # It serializes back as written, and a manifest without it stays without it.
    assert with_ttl.model_dump(by_alias=True, mode="json", exclude_none=True)["dedupe"] == {"ttl": "1h30m"}
    assert "dedupe" not in api.GroupSpec.model_validate(group).model_dump(by_alias=True, exclude_none=True)


@pytest.mark.parametrize(
    ("ttl", "error_type"),
    [
        ("0s", "duration_range"),
        ("721h", "duration_range"),
        ("1d", "duration_syntax"),
        ("3600", "duration_syntax"),
        (3600, "string_type"),
    ],
)
def test_group_dedupe_ttl_refuses(ttl: object, error_type: str) -> None:
    group = {"name": "billing", "handler": "shop.billing:handle", "image": "reg/billing:1"}
    with pytest.raises(ValidationError) as caught:
        api.GroupSpec.model_validate({**group, "dedupe": {"ttl": ttl}})
    [error] = caught.value.errors()
    assert error["loc"] == ("dedupe", "ttl")
    assert error["type"] == error_type


def test_group_dedupe_needs_a_ttl_and_nothing_else() -> None:
    group = {"name": "billing", "handler": "shop.billing:handle", "image": "reg/billing:1"}
    with pytest.raises(ValidationError) as missing:
        api.GroupSpec.model_validate({**group, "dedupe": {}})
    assert [(e["loc"], e["type"]) for e in missing.value.errors()] == [(("dedupe", "ttl"), "missing")]
    with pytest.raises(ValidationError) as extra:
        api.GroupSpec.model_validate({**group, "dedupe": {"ttl": "1h", "maxKeys": 5}})
    assert [(e["loc"], e["type"]) for e in extra.value.errors()] == [
        (("dedupe", "maxKeys"), "extra_forbidden")
    ]
