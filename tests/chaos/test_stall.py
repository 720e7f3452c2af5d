"""4. Server stall: SIGSTOP for 5 s (and 30 s at full size), then SIGCONT, while two workers consume.

The handler's side effect is a SADD on the stalled server itself with a 1 s timeout. During the stall
that SADD times out: an ambiguous outcome (the server may run it when it wakes up, and does, since the
command is already in its socket buffer). Oracle: nothing lost, and no entry is ever acked on the
strength of an ambiguous timeout: every timed-out call is followed by a successful call of the same
entry at a later delivery. Measured: the time from SIGCONT to the first successful call.

A 5 s stall is shorter than the worker's socket timeout (BLOCK + 10 s): its commands just wait. A 30 s
stall is longer: the worker times out, reconnects (the kernel still accepts connections for a stopped
process, so the reconnects hang too), and commands it gave up on run when the server wakes up (an
XREADGROUP whose reply nobody reads leaves entries pending for XAUTOCLAIM).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

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
from tests.chaos.oracle import Call, dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record, seconds
from tests.chaos.sizes import SIZES
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

SIDE_EFFECTS = "{orders}:side-effects"


def successes(records: Path) -> int:
    return sum(path.read_bytes().count(b" ok\n") for path in records.glob("*.log"))


def acked_on_ambiguity(calls: list[Call]) -> list[int]:
    """Entries with a timed-out call and no successful call at a later delivery."""
    by_entry: dict[int, list[Call]] = defaultdict(list)
    for call in calls:
        by_entry[call.n].append(call)
    bad = []
    for n, entry_calls in by_entry.items():
        oks = [c.deliveries for c in entry_calls if c.outcome == "ok"]
        for timed_out in (c.deliveries for c in entry_calls if c.outcome == "timeout"):
            if not any(ok > timed_out for ok in oks):
                bad.append(n)
                break
    return bad


@pytest.mark.parametrize("stall", SIZES.stall_seconds, ids=lambda s: f"{s:.0f}s")
@pytest.mark.parametrize("kind", SIZES.heavy_kinds)
def test_stalled_server_loses_nothing_and_nothing_is_acked_on_a_timeout(
    kind: str, stall: float, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    began = time.monotonic()
    server = server_factory(kind)
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    records = tmp_path / "records"
    records.mkdir()
    env = {
        **worker_env(server.url, records, batch_size=20, claim_idle="2s", max_deliveries=10),
        "CHAOS_SIDE_EFFECT_URL": server.url,
        "CHAOS_SIDE_EFFECT_KEY": SIDE_EFFECTS,
    }
    with worker_processes(tmp_path / "logs") as workers:
        for i in range(2):
            workers.start(f"w{i}", env)
        chunk = 50
        pause = (stall + 6.0) / (SIZES.stall_entries / chunk)
        producer = ResilientProducer(server.url, SIZES.stall_entries, chunk, pause)
        producer.start()
        wait_until(lambda: successes(records) > 0, 60, "workers processing")
        # A handler is mid-call when the server stops: its side effect comes after the stall began.
        admin.xadd(STREAM, {"n": "-1", "type": "order.created", "behaviour": "hold:1.5"})
        wait_until(lambda: any(c.outcome == "hold" for c in read_calls(records)), 60, "the held call")
        server.pause()
        try:
            time.sleep(stall)
        finally:
            server.resume()
        mark = successes(records)
        recovery = wait_until(lambda: successes(records) > mark, 120, "a successful call after SIGCONT")
        producer.join(180)
        assert producer.error is None, producer.error
        drain = wait_until(lambda: drained(admin), 180, "everything processed after the stall")
        logs = "".join(workers.log_text(f"w{i}") for i in range(2))
    calls = read_calls(records)
    verdict = judge([-1, *producer.ledger], calls, dead_letters(admin, DEAD_LETTER))
    timeouts = sum(1 for call in calls if call.outcome == "timeout")
    assert verdict.lost == [], verdict.summary()
    assert acked_on_ambiguity(calls) == []
    assert verdict.dead_lettered == 0
    # Every processed entry's side effect happened (some twice: SADD is idempotent).
    assert {int(n) for n in admin.smembers(SIDE_EFFECTS)} >= {-1, *producer.ledger}
    assert timeouts > 0, "the stall never reached a handler: the test proved nothing"
    record(
        ChaosResult(
            item=4,
            title="server stall",
            case=f"{kind}, {stall:.0f} s",
            parameters=(
                f"SIGSTOP {stall:.0f} s then SIGCONT; 2 workers, batch 20, socket timeout 10.1 s; "
                "handler side effect SADD on the same server, 1 s timeout"
            ),
            entries=verdict.produced,
            faults=f"1 stall of {stall:.0f} s; {timeouts} handler timeouts",
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            recovery=f"first success {seconds(recovery)} after SIGCONT",
            figures={
                "handler_timeouts": timeouts,
                "acked_on_an_ambiguous_timeout": 0,
                "worker_connection_warnings": logs.count("lost Redis connection"),
                "producer_chunks_retried": producer.failed_chunks,
                "recovery_seconds": round(recovery, 2),
                "drain_seconds_after_the_last_write": round(drain, 2),
            },
            not_covered=(
                "A stall of the whole server process only; a slow disk (AOF fsync stalls) or a "
                "stalled replica are not simulated."
            ),
        ),
        began,
    )
