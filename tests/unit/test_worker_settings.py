"""The worker's env contract: parsing, one message for every bad variable, rendering for the operator."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from streampipe_worker.connection import parse_url
from streampipe_worker.keys import cluster_key_problem, hash_tag
from streampipe_worker.settings import (
    SettingsError,
    WorkerSettings,
    format_duration,
    load_settings,
    parse_duration,
    render_env,
)

BASE = {
    "STREAMPIPE_STREAM": "{orders}:events",
    "STREAMPIPE_GROUP": "billing",
    "STREAMPIPE_HANDLER": "shop.billing:router",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1s", 1), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5), ("0s", 0)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1s2", "-1s", "1 s", "ms"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["250ms", "1s", "5m", "1h", "90s", "1500ms", "0ms"])
def test_format_duration_round_trips(text: str) -> None:
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


def test_defaults_and_derived_values() -> None:
    settings = load_settings(BASE)
    assert settings.redis_mode == "standalone"
    assert settings.dead_letter == "{orders}:events:dlq"
    assert settings.block == timedelta(seconds=2)
    assert settings.claim_idle == timedelta(minutes=1)
    assert settings.dedupe_ttl is None
    assert settings.consumer  # the host name (the pod name in Kubernetes)


def test_metrics_server_binds_all_addresses_unless_told_otherwise() -> None:
    assert load_settings(BASE).metrics_host == "0.0.0.0"  # the kubelet probes the pod IP
    assert load_settings({**BASE, "STREAMPIPE_METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"


def test_every_bad_variable_is_named_in_one_message() -> None:
    env = {
        "STREAMPIPE_GROUP": "billing",
        "STREAMPIPE_HANDLER": "not-a-handler",
        "STREAMPIPE_BATCH_SIZE": "lots",
        "STREAMPIPE_BLOCK": "5",
        "STREAMPIPE_REDIS_MODE": "sharded",
        "STREAMPIPE_REDIS_PASSWORD": "hunter2",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    names = {name for name, _ in caught.value.problems}
    assert names == {
        "STREAMPIPE_STREAM",
        "STREAMPIPE_HANDLER",
        "STREAMPIPE_BATCH_SIZE",
        "STREAMPIPE_BLOCK",
        "STREAMPIPE_REDIS_MODE",
    }
    message = str(caught.value)
    assert "STREAMPIPE_STREAM: required, not set" in message
    assert "'lots'" in message
    assert "hunter2" not in message


def test_cross_field_rules() -> None:
    env = {
        **BASE,
        "STREAMPIPE_STREAM": "orders",
        "STREAMPIPE_REDIS_MODE": "cluster",
        "STREAMPIPE_BACKOFF_INITIAL": "10s",
        "STREAMPIPE_BACKOFF_MAX": "1s",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    problems = dict(caught.value.problems)
    assert "no hash tag" in problems["STREAMPIPE_STREAM"]
    assert "below STREAMPIPE_BACKOFF_INITIAL=10s" in problems["STREAMPIPE_BACKOFF_MAX"]
    with pytest.raises(SettingsError, match="STREAMPIPE_SENTINEL_MASTER"):
        load_settings({**BASE, "STREAMPIPE_REDIS_MODE": "sentinel"})


def test_cluster_needs_one_hash_slot_for_stream_and_dead_letters() -> None:
    assert hash_tag("{orders}:events") == "orders"
    assert hash_tag("orders") is None
    assert hash_tag("{}x") is None
    assert cluster_key_problem("{orders}:events", "{orders}:dead") is None
    problem = cluster_key_problem("{orders}:events", "dead-letters")
    assert problem is not None
    assert "same hash slot" in problem
    with pytest.raises(SettingsError, match="same hash slot"):
        load_settings({**BASE, "STREAMPIPE_REDIS_MODE": "cluster", "STREAMPIPE_DEAD_LETTER_STREAM": "dlq"})


def test_render_env_round_trips_through_the_model() -> None:
    values = {
        "stream": "{orders}:events",
        "group": "billing",
        "handler": "shop.billing:router",
        "batch_size": 200,
        "block": timedelta(milliseconds=250),
        "backoff_max": "5m",
        "tls_insecure_skip_verify": True,
        "dedupe_ttl": None,
    }
    env = render_env(values)
    assert env == {
        "STREAMPIPE_STREAM": "{orders}:events",
        "STREAMPIPE_GROUP": "billing",
        "STREAMPIPE_HANDLER": "shop.billing:router",
        "STREAMPIPE_BATCH_SIZE": "200",
        "STREAMPIPE_BLOCK": "250ms",
        "STREAMPIPE_BACKOFF_MAX": "5m",
        "STREAMPIPE_TLS_INSECURE_SKIP_VERIFY": "true",
    }
    settings = load_settings(env)
    assert settings.block == timedelta(milliseconds=250)
    assert settings.tls_insecure_skip_verify is True
    assert WorkerSettings.env_name("redis_password") == "STREAMPIPE_REDIS_PASSWORD"


def test_render_env_refuses_what_the_worker_would_refuse() -> None:
    with pytest.raises(SettingsError) as caught:
        render_env({"batch_size": 0, "block": "soon", "colour": "blue"})
    names = {name for name, _ in caught.value.problems}
    assert names == {"STREAMPIPE_BATCH_SIZE", "STREAMPIPE_BLOCK", "colour"}


def test_every_field_has_a_description_for_the_docs() -> None:
    for name, field in WorkerSettings.model_fields.items():
        assert field.description, name


def test_bad_settings_exit_2_with_one_message_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    env.update({"STREAMPIPE_GROUP": "g", "STREAMPIPE_HANDLER": "x:y", "STREAMPIPE_CONCURRENCY": "-1"})
    done = subprocess.run(
        [sys.executable, "-m", "streampipe_worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "STREAMPIPE_STREAM: required, not set" in done.stderr
    assert "STREAMPIPE_CONCURRENCY: '-1'" in done.stderr


def test_urls_with_several_hosts_and_credentials() -> None:
    parsed = parse_url("rediss://app:s%3Acret@10.0.0.1:26379,10.0.0.2,[::1]:26380/2", default_port=26379)
    assert parsed.tls
    assert parsed.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    assert parsed.db == 2
    assert (parsed.username, parsed.password) == ("app", "s:cret")
    with pytest.raises(ValueError, match="redis://"):
        parse_url("http://x")
