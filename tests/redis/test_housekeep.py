"""`streampipe housekeep` on real servers: one pass, leader election between real processes, take-over
after a SIGKILL, and an unreachable server that is retried until it answers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import redis
from streampipe_operator.cli.app import app
from streampipe_operator.streams.leader import LeaderLease, lease_key
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.settings import WorkerSettings
from tests.support.polling import eventually, eventually_async
from tests.support.servers import SERVER_IDS, ServerProcess, free_port, start_server
from tests.support.topologies import write_acl_file

pytestmark = pytest.mark.timeout(120)

HOUSEKEEPER_ACL = Path(__file__).resolve().parents[2] / "docs" / "acl" / "housekeeper.acl"
STREAM = "{hk}:events"
LEASE = lease_key(STREAM)
runner = CliRunner()


def pipeline_file(tmp_path: Path, **spec: Any) -> Path:
    manifest = {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "hk", "namespace": "shop"},
        "spec": {
            "redis": {"url": "redis://redis.shop.svc:6379/0"},
            "stream": STREAM,
            "groups": [
                {
                    "name": "billing",
                    "handler": "shop.mod:handle",
                    "image": "example/worker:1",
                    "startId": "0",
                },
                {
                    "name": "audit",
                    "handler": "shop.mod:handle",
                    "image": "example/worker:1",
                    "startId": "0",
                    "scaling": {"backlogPerReplica": 10, "maxReplicas": 4},
                },
            ],
            **spec,
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_once_creates_groups_trims_and_advises(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ids = [redis_client.xadd(STREAM, {"n": str(i)}) for i in range(500)]
    path = pipeline_file(tmp_path, retention={"maxLength": 10, "approximate": False})

    done = runner.invoke(app, ["housekeep", str(path), "--redis-url", redis_url, "--once", "-o", "json"])

    assert done.exit_code == 0, done.output
    (outcome,) = json.loads(done.stdout)
    assert (outcome["pipeline"], outcome["leader"], outcome["error"]) == ("hk", True, None)
    groups = {g["name"]: g for g in outcome["groups"]}
    # Both groups start at 0: all 500 entries are unread, so nothing may be trimmed yet.
    assert {name: (g["lag"], g["pending"]) for name, g in groups.items()} == {
        "billing": (500, 0),
        "audit": (500, 0),
    }
    assert groups["audit"]["advised_replicas"] == 4  # ceil(500 / 10), capped at maxReplicas
    assert groups["billing"]["advised_replicas"] == 1  # the default 1000 per replica
    assert {g["name"] for g in redis_client.xinfo_groups(STREAM)} == {"billing", "audit"}
    assert redis_client.xlen(STREAM) == 500
    reasons = [event["reason"] for event in outcome["events"]]
    assert reasons.count("GroupCreated") == 2
    assert "RetentionHeld" in reasons
    assert redis_client.exists(LEASE) == 0  # released on exit

    # Once both groups processed everything, the next pass trims towards maxLength: whole nodes of
    # up to 100 entries where the plan protects, exactly where the server does (Redis 8.2's ACKED).
    for group in ("billing", "audit"):
        redis_client.xreadgroup(group, "w", {STREAM: ">"}, count=1000)
        redis_client.xack(STREAM, group, *ids)
    again = runner.invoke(app, ["housekeep", str(path), "--redis-url", redis_url, "--once", "-o", "json"])
    assert again.exit_code == 0, again.output
    (second,) = json.loads(again.stdout)
    left = redis_client.xlen(STREAM)
    assert second["trimmed"]["stream"] == 500 - left
    if request.node.callspec.params["shared_server"] == "redis8":
        assert left == 10
    else:
        assert 10 <= left <= 110


def test_once_against_an_unreachable_server_exits_1_with_the_reason(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = runner.invoke(
        app, ["housekeep", str(pipeline_file(tmp_path)), "--redis-url", url, "--once", "-o", "json"]
    )
    assert done.exit_code == 1
    (outcome,) = json.loads(done.stdout)
    assert outcome["leader"] is False
    assert outcome["error"].startswith("cannot reach Redis at 127.0.0.1:")


def test_a_bad_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: streampipe.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: x}\nspec: {}\n"
    )
    done = runner.invoke(app, ["housekeep", str(path), "--once"])
    assert done.exit_code == 2


@pytest.mark.parametrize("kind", SERVER_IDS)
def test_the_documented_acl_user_suffices(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    user = (
        HOUSEKEEPER_ACL.read_text().strip().replace(">CHANGE-ME", ">s3cret").replace("~{orders}:*", "~{hk}:*")
    )
    server = server_factory(kind, "--aclfile", str(write_acl_file(tmp_path / "users.acl", [user])))
    admin = server.client()
    ids = [admin.xadd(STREAM, {"n": str(i)}) for i in range(300)]
    admin.xgroup_create(STREAM, "billing", id="$")
    admin.xgroup_create(STREAM, "gone", id="$")
    admin.xgroup_createconsumer(STREAM, "billing", "idle-one")
    url = f"redis://streampipe-housekeeper:s3cret@127.0.0.1:{server.port}/0"
    path = pipeline_file(tmp_path, retention={"maxLength": 10, "approximate": False}, deletionPolicy="Delete")

    done = runner.invoke(app, ["housekeep", str(path), "--redis-url", url, "--once", "-o", "json"])

    assert done.exit_code == 0, done.output
    (outcome,) = json.loads(done.stdout)
    assert (outcome["leader"], outcome["error"]) == (True, None)
    reasons = {event["reason"] for event in outcome["events"]}
    assert {"GroupCreated", "GroupDestroyed"} <= reasons, reasons
    assert {g["name"] for g in admin.xinfo_groups(STREAM)} == {"billing", "audit"}
    assert ids  # billing was at $ (nothing unprocessed), audit starts at 0: nothing may be trimmed yet
    assert admin.xlen(STREAM) == 300
    assert admin.exists(LEASE) == 0

    admin.set(LEASE, "another-replica", px=60_000)
    standby = runner.invoke(app, ["housekeep", str(path), "--redis-url", url, "--once", "-o", "json"])
    assert standby.exit_code == 0, standby.output
    (second,) = json.loads(standby.stdout)
    assert (second["leader"], second["holder"]) == (False, "another-replica")
    assert admin.get(LEASE) == "another-replica"  # a standby never releases another's lease


# --- the lease ------------------------------------------------------------------------------------------


async def test_the_lease_has_one_holder_and_passes_on(redis_url: str, redis_client: redis.Redis) -> None:
    first_client = redis.asyncio.Redis.from_url(redis_url)
    second_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        # margin 0.5: the holder stops acting after 1 s, the key lives 2 s.
        first = LeaderLease(first_client, LEASE, "a", ttl=2.0, margin=0.5)
        second = LeaderLease(second_client, LEASE, "b", ttl=2.0, margin=0.5)
        assert await first.hold() is True
        assert await second.hold() is False
        assert await first.hold() is True  # renewed
        assert (await second.holder(), second.leading) == ("a", False)
        # Not renewed: the holder stops believing it leads while the key still exists on the server,
        # so nobody else can hold it yet.
        await eventually_async(lambda: not first.leading, what="the holder giving up", within=5)
        assert redis_client.pttl(LEASE) > 0
        assert await second.hold() is False
        await eventually_async(lambda: redis_client.exists(LEASE) == 0, what="the key's expiry", within=5)
        assert await second.hold() is True
        assert await first.hold() is False
        assert await first.release() is False  # not its lease: nothing deleted
        assert await second.release() is True
        assert redis_client.exists(LEASE) == 0
    finally:
        await first_client.aclose()
        await second_client.aclose()


# --- real processes -------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The process's /metrics as {name: {labels: value}}; empty while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


PIPELINE_LABELS = (("namespace", "shop"), ("pipeline", "hk"))


def leader_value(port: int) -> float | None:
    return scrape(port).get("streampipe_operator_housekeeper_leader", {}).get(PIPELINE_LABELS)


@pytest.fixture
def housekeepers(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, identity: str, path: Path) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
        command = [
            str(Path(sys.executable).parent / "streampipe"), "housekeep", str(path),
            "--redis-url", url, "--identity", identity, "--lease", "1.5", "--metrics-port", str(port),
        ]  # fmt: skip
        log = (tmp_path / f"{identity}.log").open("wb")
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_two_replicas_one_leads_and_the_other_takes_over_after_a_sigkill(
    server_factory: Callable[..., ServerProcess],
    housekeepers: Callable[..., tuple[subprocess.Popen[bytes], int]],
    tmp_path: Path,
) -> None:
    server = server_factory("valkey9")
    client = server.client()
    path = pipeline_file(tmp_path)
    procs = {name: housekeepers(server.url, name, path) for name in ("a", "b")}

    leader = eventually(lambda: client.get(LEASE), what="a lease holder", within=30)
    standby = "b" if leader == "a" else "a"
    eventually(lambda: leader_value(procs[leader][1]) == 1.0, what="the leader's gauge at 1", within=30)
    eventually(lambda: leader_value(procs[standby][1]) == 0.0, what="the standby's gauge at 0", within=30)
    eventually(lambda: len(client.xinfo_groups(STREAM)) == 2, what="both groups created", within=30)
    audit = tuple(sorted((*PIPELINE_LABELS, ("group", "audit"))))
    eventually(
        lambda: (
            scrape(procs[leader][1]).get("streampipe_operator_group_desired_replicas", {}).get(audit) == 1.0
        ),
        what="the advice for audit in /metrics",
        within=30,
    )
    assert scrape(procs[leader][1])["streampipe_operator_redis_up"][PIPELINE_LABELS] == 1.0

    procs[leader][0].send_signal(signal.SIGKILL)
    procs[leader][0].wait(10)
    client.xgroup_destroy(STREAM, "audit")  # a repair only a working leader makes
    eventually(lambda: client.get(LEASE) == standby, what="the standby holding the lease", within=30)
    eventually(
        lambda: "audit" in {g["name"] for g in client.xinfo_groups(STREAM)}, what="audit recreated", within=30
    )
    assert leader_value(procs[standby][1]) == 1.0

    procs[standby][0].send_signal(signal.SIGTERM)
    assert procs[standby][0].wait(30) == 0
    assert client.exists(LEASE) == 0  # released at shutdown: the next replica takes over at once


def test_an_unreachable_server_is_retried_until_it_answers(
    housekeepers: Callable[..., tuple[subprocess.Popen[bytes], int]], tmp_path: Path
) -> None:
    port = free_port()
    proc, metrics_port = housekeepers(f"redis://127.0.0.1:{port}/0", "a", pipeline_file(tmp_path))
    eventually(
        lambda: scrape(metrics_port).get("streampipe_operator_redis_up", {}).get(PIPELINE_LABELS) == 0.0,
        what="redis_up 0 while nothing listens",
        within=30,
    )
    assert proc.poll() is None  # still running: a retry, not a crash
    server = start_server("valkey9", tmp_path / "late", port=port)
    try:
        client = server.client()
        eventually(lambda: client.exists(STREAM) and len(client.xinfo_groups(STREAM)) == 2, within=30)
        eventually(
            lambda: scrape(metrics_port).get("streampipe_operator_redis_up", {}).get(PIPELINE_LABELS) == 1.0
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        server.stop()


# --- the systemd example --------------------------------------------------------------------------------

SYSTEMD = Path(__file__).resolve().parents[2] / "examples" / "systemd"
VENV_BIN = Path(sys.executable).parent


def unit_values(path: Path, key: str) -> list[str]:
    """Every ``key=value`` of a unit or env file (systemd allows repeated keys), comments left out."""
    values = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_systemd_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (Debian's systemd) is needed to check examples/systemd"
    for unit in ("streampipe-housekeep.service", "streampipe-worker@.service"):
        text = (SYSTEMD / unit).read_text().replace("/opt/streampipe/bin/", f"{VENV_BIN}/")
        (tmp_path / unit).write_text(text)
    checked = tmp_path / "streampipe-worker@billing.service"
    checked.symlink_to(tmp_path / "streampipe-worker@.service")
    for unit in (tmp_path / "streampipe-housekeep.service", checked):
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_the_systemd_command_lines_and_env_files_work(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The housekeeper's ExecStart as written (but --once and a local file), and the worker's env file
    (but a local server and a handler that exists here) pass a real run and a real settings check."""
    (exec_start,) = unit_values(SYSTEMD / "streampipe-housekeep.service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/opt/streampipe/bin/streampipe", "housekeep"]
    argv[0] = str(VENV_BIN / "streampipe")
    argv[2] = str(pipeline_file(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    assert set(env_file(SYSTEMD / "housekeep.env")) == {"STREAMPIPE_REDIS_URL"}
    env["STREAMPIPE_REDIS_URL"] = redis_url
    done = subprocess.run(
        [*argv, "--once", "-o", "json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    (outcome,) = json.loads(done.stdout)
    assert (outcome["leader"], outcome["error"]) == (True, None)

    worker_env = env_file(SYSTEMD / "worker-billing.env")
    fields = {f"STREAMPIPE_{name.upper()}" for name in WorkerSettings.model_fields}
    assert set(worker_env) <= fields, set(worker_env) - fields
    unit_env = dict(
        value.split("=", 1) for value in unit_values(SYSTEMD / "streampipe-worker@.service", "Environment")
    )
    assert set(unit_env) <= fields, set(unit_env) - fields
    check_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    check_env |= worker_env | unit_env
    check_env |= {
        "STREAMPIPE_REDIS_URL": redis_url,
        "STREAMPIPE_REDIS_USERNAME": "",
        "STREAMPIPE_REDIS_PASSWORD": "",
        "STREAMPIPE_HANDLER": "json:dumps",  # the example's handler package is the reader's own
        "STREAMPIPE_CONSUMER": "host-billing",
    }
    checked = subprocess.run(
        [str(VENV_BIN / "streampipe-worker"), "--check", "--ping"],
        env=check_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_once_on_a_partitioned_pipeline(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    layout = PartitionLayout("hk", 3)
    for index, count in enumerate([12, 0, 9]):
        for n in range(count):
            redis_client.xadd(layout.stream(index), {"n": str(n)})
    path = pipeline_file(tmp_path, stream="hk", partitions={"count": 3})

    done = runner.invoke(app, ["housekeep", str(path), "--redis-url", redis_url, "--once", "-o", "json"])

    assert done.exit_code == 0, done.output
    (outcome,) = json.loads(done.stdout)
    groups = {g["name"]: g for g in outcome["groups"]}
    # The groups' figures are the partitions' sums; audit is advised on the sum: ceil(21 / 10).
    assert {name: (g["lag"], g["pending"]) for name, g in groups.items()} == {
        "billing": (21, 0),
        "audit": (21, 0),
    }
    assert groups["audit"]["advised_replicas"] == 3
    for stream in layout.streams:
        assert {g["name"] for g in redis_client.xinfo_groups(stream)} == {"billing", "audit"}
    assert [event["reason"] for event in outcome["events"]].count("GroupCreated") == 2  # one per group
