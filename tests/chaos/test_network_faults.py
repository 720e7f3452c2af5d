"""5. Network faults between the workers and the server, through ``tests/support/tcp_proxy.py``:
latency, a blackhole (partition) longer and shorter than the worker's socket timeout, and connections
reset in the middle of a pipelined reply. The producer writes to the server directly. Every 50th entry
is poison, so dead-letter moves (MULTI/EXEC) cross the faulty link too: a cut EXEC reply never leads to
a second envelope (the worker checks the PEL before redoing a move). Two envelopes for one entry
happen only when a partition outlasts claimIdle and two workers both ran it (counted, not hidden).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

import redis
from tests.chaos.harness import (
    DEAD_LETTER,
    GROUP,
    STREAM,
    ResilientProducer,
    drained,
    produce,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.chaos.oracle import dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record, seconds
from tests.chaos.sizes import SIZES
from tests.support.servers import ServerProcess
from tests.support.tcp_proxy import running_proxy

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


def poison_every_50th(n: int) -> str:
    return "permanent" if n % 50 == 0 else "ok"


def successes(records: Path) -> int:
    return sum(path.read_bytes().count(b" ok\n") for path in records.glob("*.log"))


def plain_client(port: int) -> redis.Redis:
    """No client-side retries: the faults must show."""
    return redis.Redis(port=port, socket_timeout=1.0, decode_responses=True, retry=Retry(NoBackoff(), 0))


def test_the_proxy_injects_each_fault(server_factory: Callable[..., ServerProcess]) -> None:
    """The faults do what they say, seen by a plain client (the tool is tested before it is trusted)."""
    server = server_factory("valkey9")
    with running_proxy(server.port) as proxy:
        client = plain_client(proxy.port)
        assert client.ping()
        proxy.set_latency(0.1)
        began = time.monotonic()
        client.ping()
        assert time.monotonic() - began >= 0.2  # one way each: request and reply
        proxy.set_latency(0.0)
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.heal()
        client.close()
        client = plain_client(proxy.port)
        client.set("k", "x" * 500)
        assert client.ping()
        direct = server.client()
        assert len(direct.client_list()) == 2  # the direct client and the proxied one
        assert proxy.reset_all() == 1
        wait_until(lambda: len(direct.client_list()) == 1, 10, "the server to see the reset")
        connections = proxy.stats.connections
        assert client.ping()  # redis-py notices the dead pooled connection and opens a new one
        assert proxy.stats.connections == connections + 1
        pipe = client.pipeline(transaction=False)
        pipe.set("a", "1").get("k").get("k")
        proxy.cut_next_reply(min_bytes=200)
        with pytest.raises(redis.ConnectionError):
            pipe.execute()
        assert not proxy.cut_pending
        assert proxy.stats.cut_replies == 1
        assert direct.get("a") == "1"  # the server ran the commands; the replies were cut
        client.close()


@pytest.mark.parametrize("kind", SIZES.heavy_kinds)
def test_network_faults_lose_nothing(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    began = time.monotonic()
    server = server_factory(kind)
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    records = tmp_path / "records"
    records.mkdir()
    third = SIZES.network_entries // 3
    ledger: dict[int, str] = {}
    with running_proxy(server.port) as proxy, worker_processes(tmp_path / "logs") as workers:
        env = worker_env(
            f"redis://127.0.0.1:{proxy.port}/0", records, batch_size=50, claim_idle="2s", max_deliveries=5
        )
        for i in range(2):
            workers.start(f"w{i}", env)

        # Latency on every packet, both ways.
        proxy.set_latency(SIZES.network_latency)
        latency_began = time.monotonic()
        ledger |= produce(admin, 0, third, behaviour=poison_every_50th)
        latency_drain = wait_until(lambda: drained(admin), 120, "draining under latency")
        latency_rate = third / (time.monotonic() - latency_began)
        proxy.set_latency(0.0)

        # A partition while work is flowing.
        chunk = 50
        pause = (SIZES.network_blackhole_seconds + 3.0) / (third / chunk)
        producer = ResilientProducer(
            server.url, third, chunk, pause, start=third, behaviour=poison_every_50th
        )
        producer.start()
        wait_until(lambda: successes(records) > third // 2, 60, "work flowing")
        proxy.blackhole()
        time.sleep(SIZES.network_blackhole_seconds)
        mark = successes(records)
        proxy.heal()
        blackhole_recovery = wait_until(lambda: successes(records) > mark, 120, "a success after the heal")
        producer.join(120)
        assert producer.error is None, producer.error
        ledger |= producer.ledger

        # Replies cut in the middle of a pipeline while work is flowing, then every connection reset.
        pause = (0.5 * SIZES.network_resets + 2.0) / (third / chunk)
        producer = ResilientProducer(
            server.url, third, chunk, pause, start=2 * third, behaviour=poison_every_50th
        )
        producer.start()
        cuts = 0
        for _ in range(SIZES.network_resets):
            proxy.cut_next_reply(min_bytes=200)
            wait_until(lambda: not proxy.cut_pending or not producer.is_alive(), 60, "a cut reply")
            if proxy.cut_pending:
                break
            cuts += 1
            time.sleep(0.2)
        proxy.cut_next_reply(10**9)  # disarm
        resets = proxy.reset_all()
        producer.join(120)
        assert producer.error is None, producer.error
        ledger |= producer.ledger
        wait_until(lambda: drained(admin), 120, "draining after the faults")
        stats = proxy.stats
    dead = dead_letters(admin, DEAD_LETTER)
    calls = read_calls(records)
    verdict = judge(ledger, calls, dead)
    assert verdict.lost == [], verdict.summary()
    # A partition longer than claimIdle lets a peer take entries a worker still runs (the lease lapsed):
    # both run them, so a poison entry can get two envelopes. Bounded by what was in flight.
    assert len(verdict.dead_twice) <= 2 * 2 * 50, verdict.summary()
    assert cuts > 0
    record(
        ChaosResult(
            item=5,
            title="network faults",
            case=kind,
            parameters=(
                f"2 workers through the TCP proxy, batch 50; latency {SIZES.network_latency * 1000:.0f} ms "
                f"each way; blackhole {SIZES.network_blackhole_seconds:.0f} s; up to "
                f"{SIZES.network_resets} replies cut mid-pipeline, then all connections reset; "
                "every 50th entry poison"
            ),
            entries=len(ledger),
            faults=(
                f"latency, 1 blackhole of {SIZES.network_blackhole_seconds:.0f} s, {cuts} cut replies, "
                f"{resets} connections reset at once"
            ),
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            recovery=f"first success {seconds(blackhole_recovery)} after the partition healed",
            figures={
                "throughput_under_latency": round(latency_rate),
                "drain_under_latency_seconds": round(latency_drain, 2),
                "dead_lettered": verdict.dead_lettered,
                "dead_lettered_twice": len(verdict.dead_twice),
                "proxy_connections": stats.connections,
                "proxy_resets": stats.resets,
            },
            not_covered=(
                "Faults on the worker's link only (the producer's link and replication links are "
                "healthy); no packet loss or reordering (TCP hides both); a partition shorter than TCP's "
                "retransmission timeout."
            ),
        ),
        began,
    )


def blocked_reads(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"])


@pytest.mark.parametrize("kind", ["valkey9", "redis7"])
def test_an_entry_delivered_twice_to_one_worker_runs_once(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """An entry that reaches one worker twice while the first copy is in flight (the delayed reply of
    its XREADGROUP after a partition longer than claimIdle, and its own XAUTOCLAIM at the heal) runs
    once and gets one dead-letter envelope: the copy already in flight settles it alone."""
    server = server_factory(kind)
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    records = tmp_path / "records"
    records.mkdir()
    with running_proxy(server.port) as proxy, worker_processes(tmp_path / "logs") as workers:
        env = worker_env(f"redis://127.0.0.1:{proxy.port}/0", records, claim_idle="500ms", block="2s")
        workers.start("w0", env)
        wait_until(lambda: blocked_reads(admin) > 0, 30, "the worker's XREADGROUP blocked on the server")
        proxy.blackhole()
        # Delivered to w0 at once (the blocked read is served), but the reply is held by the partition
        # for longer than claimIdle: meanwhile w0's reclaimer sends XAUTOCLAIM, held too.
        entry_id = admin.xadd(STREAM, {"n": "0", "behaviour": "hold:0.5"})
        time.sleep(2.0)
        assert admin.xpending(STREAM, GROUP)["pending"] == 1
        proxy.heal()
        wait_until(lambda: drained(admin), 30, "the entry settled")
        time.sleep(1.0)  # a second copy would have run by now
    holds = [c for c in read_calls(records) if c.outcome == "hold"]
    assert [c.entry_id for c in holds] == [entry_id]


@pytest.mark.parametrize("kind", ["valkey9", "redis7"])
def test_a_late_dead_letter_move_is_not_written_twice(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A poison entry gets one dead-letter envelope even when a worker whose XREADGROUP reply was held
    by a partition runs it after a peer reclaimed and dead-lettered it: a dead-letter move includes
    only the entries still pending for this consumer."""
    server = server_factory(kind)
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    records = tmp_path / "records"
    records.mkdir()
    with running_proxy(server.port) as proxy, worker_processes(tmp_path / "logs") as workers:
        late = worker_env(f"redis://127.0.0.1:{proxy.port}/0", records, claim_idle="500ms", block="2s")
        workers.start("late", late)
        wait_until(lambda: blocked_reads(admin) > 0, 30, "the late worker's XREADGROUP blocked")
        proxy.blackhole()
        entry_id = admin.xadd(STREAM, {"n": "0", "behaviour": "permanent"})  # delivered to "late"
        workers.start("peer", worker_env(server.url, records, claim_idle="500ms"))
        wait_until(lambda: admin.xlen(DEAD_LETTER) == 1, 30, "the peer reclaimed and dead-lettered it")
        proxy.heal()  # "late" gets the entry now and runs it too
        wait_until(lambda: len(read_calls(records)) == 2, 30, "the late worker ran the entry")
        time.sleep(1.0)  # a second envelope would be written by now
        assert drained(admin)
    assert [e.original_id for e in dead_letters(admin, DEAD_LETTER)] == [entry_id]
