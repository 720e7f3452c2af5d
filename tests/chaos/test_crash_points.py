"""2. Deterministic crash points: a worker dies exactly before the handler, after it but before the XACK,
or inside the dead-letter move (MULTI and the queued XADD/XACK on the server, no EXEC). Then the exact
redelivery: every entry the dead worker left pending is delivered once more, nothing else is; the
dead-letter move is all or nothing and is never written twice.

The crash is the worker's test hook ``STREAMPIPE_TEST_CRASH_AT`` (``streampipe_worker.crash_points``):
``os._exit(137)`` at the point, which is what a SIGKILL there does to the process and its sockets.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

import redis
from streampipe_worker.crash_points import ENV as CRASH_ENV
from streampipe_worker.crash_points import EXIT_CODE, armed_point
from tests.chaos.harness import (
    DEAD_LETTER,
    GROUP,
    STREAM,
    drained,
    produce,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.chaos.oracle import Call, dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record, seconds

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(90)]

TITLE = "crash points"
NOT_COVERED = (
    "One crash per run, at the first time the point is reached; crashes inside the handler's own side "
    "effect (half-written external state) are the handler's business."
)


def pending_snapshot(client: redis.Redis) -> dict[str, tuple[str, int]]:
    """id -> (owner, times delivered) for every pending entry."""
    rows = client.xpending_range(STREAM, GROUP, "-", "+", 10_000)
    return {str(r["message_id"]): (str(r["consumer"]), int(r["times_delivered"])) for r in rows}


def calls_after(calls: list[Call], before: list[Call]) -> list[Call]:
    seen = Counter(before)
    later = []
    for call in calls:
        if seen[call] > 0:
            seen[call] -= 1
        else:
            later.append(call)
    return later


@pytest.mark.parametrize("restart", ["same-name", "peer"])
@pytest.mark.parametrize("point", ["before-handler", "after-handler-before-ack"])
def test_crash_around_the_handler_redelivers_exactly_the_batch(
    *, redis_client: redis.Redis, redis_url: str, server_kind: str, tmp_path: Path, point: str, restart: str
) -> None:
    began = time.monotonic()
    records = tmp_path / "records"
    records.mkdir()
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ledger = produce(redis_client, 0, 50)
    env = worker_env(redis_url, records, batch_size=100, claim_idle="1s")
    with worker_processes(tmp_path / "logs") as workers:
        victim = workers.start("w1", {**env, CRASH_ENV: point})
        assert victim.wait(60) == EXIT_CODE
        assert f"crashing at {point}" in workers.log_text("w1")
        left = pending_snapshot(redis_client)
        before = read_calls(records)
        # The whole batch is pending under the dead consumer, delivered once.
        assert left == dict.fromkeys(ledger.values(), ("w1", 1))
        if point == "before-handler":
            assert before == []
        else:
            assert sorted(c.n for c in before) == sorted(ledger)
            assert {(c.deliveries, c.outcome) for c in before} == {(1, "ok")}

        crashed_at = time.monotonic()
        survivor = workers.start("w1" if restart == "same-name" else "w2", env)
        recovery = wait_until(lambda: drained(redis_client), 60, "the survivor drained the batch")
        survivor.terminate()
        assert survivor.wait(30) == 0
    calls = read_calls(records)
    again = calls_after(calls, before)
    # Exactly one more delivery of each entry the dead worker held; nothing else ran again.
    assert sorted(c.entry_id for c in again) == sorted(left)
    assert {(c.deliveries, c.outcome) for c in again} == {(2, "ok")}
    verdict = judge(ledger, calls, dead_letters(redis_client, DEAD_LETTER))
    assert verdict.lost == []
    assert verdict.duplicates == (0 if point == "before-handler" else len(ledger))
    assert redis_client.xlen(DEAD_LETTER) == 0
    record(
        ChaosResult(
            item=2,
            title=TITLE,
            case=f"{server_kind}, {point}, restart {restart}",
            parameters="50 entries in one batch; claimIdle 1s; one crash",
            entries=len(ledger),
            faults=f"1 crash at {point}",
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            recovery=seconds(time.monotonic() - crashed_at),
            figures={"redelivered": len(again), "drain_seconds": round(recovery, 2)},
            not_covered=NOT_COVERED,
        ),
        began,
    )


@pytest.mark.parametrize("poison", ["permanent", "exhausted"])
def test_crash_inside_the_dead_letter_move_neither_loses_nor_doubles(
    *, redis_client: redis.Redis, redis_url: str, server_kind: str, tmp_path: Path, poison: str
) -> None:
    began = time.monotonic()
    records = tmp_path / "records"
    records.mkdir()
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    # "permanent": PermanentError at the first delivery. "exhausted": fails at every delivery and
    # maxDeliveries is 2, so the move happens at the 2nd delivery (a reclaim after the backoff).
    behaviour = "permanent" if poison == "permanent" else "fail"
    ledger = produce(redis_client, 0, 10)
    ledger |= produce(redis_client, 10, 1, behaviour=lambda _: behaviour)
    poison_id = ledger[10]
    env = worker_env(redis_url, records, batch_size=100, max_deliveries=2, backoff_initial="1s")
    with worker_processes(tmp_path / "logs") as workers:
        victim = workers.start("w1", {**env, CRASH_ENV: "inside-dlq-move"})
        assert victim.wait(60) == EXIT_CODE
        assert "crashing at inside-dlq-move" in workers.log_text("w1")
        # MULTI, XADD and XACK reached the server, EXEC did not: the transaction was discarded.
        assert redis_client.xlen(DEAD_LETTER) == 0
        left = pending_snapshot(redis_client)
        assert poison_id in left
        moved_at = 1 if poison == "permanent" else 2
        assert left[poison_id] == ("w1", moved_at)
        before = read_calls(records)

        crashed_at = time.monotonic()
        survivor = workers.start("w1", env)
        wait_until(
            lambda: drained(redis_client) and redis_client.xlen(DEAD_LETTER) >= 1,
            60,
            "the poison entry dead-lettered after the restart",
        )
        survivor.terminate()
        assert survivor.wait(30) == 0
    calls = read_calls(records)
    again = calls_after(calls, before)
    envelopes = dead_letters(redis_client, DEAD_LETTER)
    assert [e.original_id for e in envelopes] == [poison_id]  # exactly one envelope
    envelope = envelopes[0]
    assert envelope.deliveries == moved_at + 1
    if poison == "permanent":
        # Redelivered once and run again: PermanentError again, and this time the move completes.
        assert envelope.exception == "streampipe_worker.router.PermanentError"
        assert [c.entry_id for c in again if c.n == 10] == [poison_id]
    else:
        # Delivered a 3rd time with maxDeliveries 2: dead-lettered without running again.
        assert "delivered 3 times without a result" in envelope.error
        assert [c for c in again if c.n == 10] == []
        assert [c.deliveries for c in calls if c.n == 10] == [1, 2]
    # Every other entry the dead worker left pending ran exactly once more; nothing else ran again.
    assert sorted(c.entry_id for c in again if c.n != 10) == sorted(i for i in left if i != poison_id)
    verdict = judge(ledger, calls, envelopes)
    assert verdict.lost == []
    assert verdict.dead_twice == []
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    record(
        ChaosResult(
            item=2,
            title=TITLE,
            case=f"{server_kind}, inside-dlq-move ({poison})",
            parameters="10 entries + 1 poison; maxDeliveries 2; one crash between MULTI and EXEC",
            entries=len(ledger),
            faults="1 crash inside the dead-letter move",
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            recovery=seconds(time.monotonic() - crashed_at),
            figures={"dead_letter_envelopes": len(envelopes), "redelivered": len(again)},
            not_covered=NOT_COVERED,
        ),
        began,
    )


def test_the_hook_is_off_by_default_and_refuses_unknown_points() -> None:
    assert armed_point({}) is None
    assert armed_point({CRASH_ENV: ""}) is None
    assert armed_point({CRASH_ENV: "inside-dlq-move"}) == "inside-dlq-move"
    with pytest.raises(ValueError, match="not a crash point; use one of before-handler"):
        armed_point({CRASH_ENV: "before-the-handler"})
