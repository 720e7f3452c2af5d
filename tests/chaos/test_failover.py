"""6. Sentinel failover (1 primary, 2 replicas, 3 Debian redis-sentinels): the primary is SIGKILLed
while a producer writes and two workers (Sentinel mode) consume; the consumers resume on the promoted
replica. Loss is measured with and without ``WAIT``.

Replication is asynchronous: the primary acknowledges an XADD before any replica has it. On loopback a
replica is microseconds behind, so a crash loses next to nothing; a congested or cross-zone link is
another matter. To measure that window, the replicas replicate through TCP proxies
(``tests/support/tcp_proxy.py``) for the last seconds before the crash, and the replication links are
partitioned for half a second before the primary dies; what the partition held is dropped with the
connections. Without ``WAIT`` the writes the primary acknowledged in that window are gone after the
failover. With ``WAIT 1 100`` after every pipeline a chunk counts as acknowledged only once a replica
has it (the producer sends unconfirmed chunks again: duplicates, never losses), and Sentinel promotes
the replica with the largest replication offset, so nothing acknowledged is lost.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

import redis
from streampipe_worker.connection import ConnectionSettings, create_client
from tests.chaos.harness import (
    DEAD_LETTER,
    GROUP,
    STREAM,
    ResilientProducer,
    drained,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.chaos.oracle import dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record, seconds
from tests.chaos.sizes import SIZES
from tests.support.tcp_proxy import TcpProxy
from tests.support.topologies import SentinelSet, start_sentinel_set

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

LAG_WINDOW = 0.5  # seconds the replication links are partitioned before the primary dies


def successes(records: Path) -> int:
    return sum(path.read_bytes().count(b" ok\n") for path in records.glob("*.log"))


def promoted(topology: SentinelSet, old: int) -> int | None:
    """The new primary's port once the sentinels name one and it accepts writes."""
    with contextlib.suppress(redis.RedisError, StopIteration):
        port = topology.primary_port()
        if port != old:
            with topology.node(port).client() as node:
                if node.info("replication")["role"] == "master":
                    return port
    return None


@pytest.mark.parametrize("wait", [False, True], ids=["no-wait", "wait"])
@pytest.mark.parametrize("kind", SIZES.heavy_kinds)
def test_failover_consumers_resume_and_loss_is_measured(kind: str, wait: bool, tmp_path: Path) -> None:
    began = time.monotonic()
    topology = start_sentinel_set(kind, tmp_path / "topology")
    proxies: list[TcpProxy] = []
    try:
        old = topology.primary_port()
        primary = topology.node(old)
        with primary.client(socket_timeout=60) as client:
            client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            # Both replicas have synced (a full sync waits repl-diskless-sync-delay): a replica that
            # never synced would be promoted empty, which is not the loss this test measures.
            assert client.execute_command("WAIT", 2, 30_000) == 2
        replicas = [node for node in topology.data_nodes if node.port != old]
        # Sentinel re-points a replica that follows another address only after failover-timeout
        # (10 s) has passed since it saw the change: the proxies stay in the path until the crash.
        proxies.extend(TcpProxy(old).start() for _ in replicas)
        for node, proxy in zip(replicas, proxies, strict=True):
            with node.client() as client:
                client.execute_command("REPLICAOF", "127.0.0.1", str(proxy.port))
        with primary.client(socket_timeout=60) as client:
            wait_until(
                lambda: (
                    all(p.stats.bytes_down > 0 for p in proxies)
                    and client.execute_command("WAIT", 2, 1000) == 2
                ),
                60,
                "both replicas following the primary through the proxies",
            )
        records = tmp_path / "records"
        records.mkdir()
        connection = ConnectionSettings(
            url=topology.url, mode="sentinel", sentinel_master=topology.master_name
        )

        def client_factory() -> Any:
            return create_client(connection)

        env = worker_env(
            topology.url,
            records,
            redis_mode="sentinel",
            sentinel_master=topology.master_name,
            claim_idle="2s",
        )
        with worker_processes(tmp_path / "logs") as workers:
            for i in range(2):
                workers.start(f"w{i}", env)
            chunk = 50
            producer = ResilientProducer(
                topology.url,
                SIZES.failover_entries,
                chunk,
                pause=8.0 / (SIZES.failover_entries / chunk),
                client_factory=client_factory,
                wait=(1, 100) if wait else None,
            )
            producer.start()
            wait_until(lambda: successes(records) > SIZES.failover_entries // 5, 60, "work flowing")

            for proxy in proxies:
                proxy.blackhole()
            time.sleep(LAG_WINDOW)
            killed = time.monotonic()
            primary.kill()
            for proxy in proxies:
                proxy.reset_all()  # what the partition held dies with the connections
                proxy.heal()
            new: int | None = None

            def elected() -> bool:
                nonlocal new
                new = promoted(topology, old)
                return new is not None

            failover = wait_until(elected, 90, "a replica promoted by the sentinels", interval=0.1)
            assert new is not None
            mark = successes(records)
            resumed = wait_until(
                lambda: successes(records) > mark, 90, "workers consuming from the new primary"
            )
            resume_after_kill = time.monotonic() - killed
            producer.join(180)
            assert producer.error is None, producer.error
            node = topology.node(new).client()
            wait_until(lambda: drained(node), 120, "everything on the new primary processed")
        present = {int(fields["n"]) for _, fields in node.xrange(STREAM)}
        calls = read_calls(records)
        dead = dead_letters(node, DEAD_LETTER)
        everything = judge(producer.ledger, calls, dead)
        surviving = judge(set(producer.ledger) & present, calls, dead)
        missing = sorted(set(producer.ledger) - present)
        never_processed = everything.lost
        # What survived the failover is processed (consumers resumed, nothing pending, no lag).
        assert surviving.lost == [], surviving.summary()
        if wait:
            # WAIT for a replica: no acknowledged write is missing after the failover.
            assert missing == [], f"{len(missing)} acknowledged writes lost despite WAIT: {missing[:10]}"
            assert never_processed == []
        node.close()
        record(
            ChaosResult(
                item=6,
                title="sentinel failover",
                case=f"{kind}, {'WAIT 1 100' if wait else 'no WAIT'}",
                parameters=(
                    "1 primary + 2 replicas + 3 sentinels (down-after 1 s); 2 workers in Sentinel mode; "
                    f"replication links partitioned {LAG_WINDOW} s, then the primary SIGKILLed"
                ),
                entries=len(producer.ledger),
                faults="1 primary SIGKILL after a 0.5 s replication partition",
                lost=len(never_processed),
                duplicates=everything.duplicates,
                recovery=(
                    f"new primary {seconds(failover)} after the kill; workers consuming "
                    f"{seconds(resume_after_kill)} after the kill"
                ),
                figures={
                    "acknowledged_writes_missing_after_failover": len(missing),
                    "of_which_never_processed": len(never_processed),
                    "unconfirmed_chunks_resent": producer.unconfirmed_chunks,
                    "failed_chunks_resent": producer.failed_chunks,
                    "resume_after_promotion_seconds": round(resumed, 2),
                },
                not_covered=(
                    "One failover, one primary crash; no split brain (the old primary does not come "
                    "back with writes of its own), no network partition between sentinels."
                ),
            ),
            began,
        )
    finally:
        topology.stop()
        for proxy in proxies:
            proxy.stop()
