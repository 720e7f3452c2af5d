"""`streampipe status` on real servers (valkey9, redis7, redis8): figures, missing things, bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app

pytestmark = pytest.mark.timeout(60)

STREAM = "{cli}:events"
GROUP = "billing"
runner = CliRunner()


def pipeline_file(tmp_path: Path, groups: list[str], **spec: object) -> Path:
    manifest: dict[str, Any] = {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "cli"},
        "spec": {
            "redis": {"url": "redis://redis.example.svc:6379/0"},
            "stream": STREAM,
            "groups": [
                {"name": name, "handler": "shop.mod:handle", "image": "example/worker:1"} for name in groups
            ],
            **spec,
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_reports_stream_groups_pending_and_dead_letters(
    redis_url: str, redis_client: redis.Redis
) -> None:
    for i in range(10):
        redis_client.xadd(STREAM, {"n": str(i)})
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "worker-1", {STREAM: ">"}, count=4)
    redis_client.xadd(f"{STREAM}:dlq", {"original_id": "1-1", "original_stream": STREAM, "error": "boom"})

    done = runner.invoke(
        app, ["status", "--redis-url", redis_url, "--stream", STREAM, "-o", "json", "--consumers"]
    )

    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["stream"]["length"] == 10
    assert report["stream"]["entries_added"] == 10
    (group,) = report["groups"]
    assert (group["name"], group["lag"], group["pending"], group["backlog"]) == (GROUP, 6, 4, 10)
    assert group["oldest_pending"]["deliveries"] == 1
    assert group["oldest_pending"]["age_seconds"] >= 0
    assert group["oldest_unread_age_seconds"] >= 0  # 6 entries not read yet
    assert [c["name"] for c in group["consumer_details"]] == ["worker-1"]
    assert report["dead_letter"] == {"key": f"{STREAM}:dlq", "length": 1}

    text = runner.invoke(app, ["status", "--redis-url", redis_url, "--stream", STREAM])
    assert text.exit_code == 0
    assert GROUP in text.stdout
    assert "dead letters" in text.stdout


@pytest.mark.parametrize("approximate", [True, False])
def test_status_names_the_servers_stream_commands_and_the_trim_path(
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    approximate: bool,
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    retention = {"maxLength": 1000, "approximate": approximate}
    path = pipeline_file(tmp_path, [GROUP], retention=retention)

    done = runner.invoke(app, ["status", "-f", str(path), "--redis-url", redis_url, "-o", "json"])

    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    redis8 = request.node.callspec.params["shared_server"] == "redis8"
    expected = ["XAUTOCLAIM", "XTRIM ACKED", "XACKDEL", "XDELEX"] if redis8 else ["XAUTOCLAIM"]
    assert report["stream_commands"] == expected
    # Only exact trims go through the server's ACKED (an approximate ACKED trim removes nothing).
    assert report["protected_trim"] == ("ServerAcked" if redis8 and not approximate else "Planned")


def test_status_from_a_file_names_groups_that_are_missing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    path = pipeline_file(tmp_path, [GROUP, "audit"])

    done = runner.invoke(app, ["status", "-f", str(path), "--redis-url", redis_url, "-o", "json"])

    assert done.exit_code == 1
    report = json.loads(done.stdout)
    assert report["missing_groups"] == ["audit"]
    assert report["pipeline"] == "cli"
    assert [g["in_spec"] for g in report["groups"]] == [True]


def test_status_of_a_missing_stream_says_so_with_exit_code_1(redis_url: str) -> None:
    done = runner.invoke(app, ["status", "--redis-url", redis_url, "--stream", "{cli}:nothing"])
    assert done.exit_code == 1
    assert "does not exist yet" in done.stdout


def test_status_with_an_unreachable_server_is_exit_code_1_with_the_address() -> None:
    url = f"redis://127.0.0.1:{unused_port()}/0"
    done = runner.invoke(app, ["status", "--redis-url", url, "--stream", STREAM])
    assert done.exit_code == 1
    assert "cannot reach Redis at 127.0.0.1" in done.stderr
    assert "Traceback" not in done.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["status"], "name the pipeline with -f pipeline.yaml, or give --redis-url and --stream"),
        (["status", "--stream", STREAM], "give --redis-url"),
        (["status", "--redis-url", "http://x", "--stream", STREAM], "--redis-url"),
        (["status", "-f", "/nonexistent/pipeline.yaml"], "cannot read"),
    ],
)
def test_status_refuses_bad_input_with_exit_code_2(arguments: list[str], message: str) -> None:
    done = runner.invoke(app, arguments)
    assert done.exit_code == 2
    assert message in done.stderr


def test_status_refuses_an_invalid_file_with_the_validators_words(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "streampipe.dev/v1alpha1",
                "kind": "StreamPipeline",
                "metadata": {"name": "bad"},
                "spec": {"redis": {"url": "redis://x:6379/0"}, "stream": STREAM, "groups": []},
            }
        )
    )
    done = runner.invoke(app, ["status", "-f", str(path)])
    assert done.exit_code == 2
    assert "spec.groups" in done.stderr
