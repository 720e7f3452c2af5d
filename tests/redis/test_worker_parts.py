"""The consumer's parts on real servers, each on its own: the ack buffer, the PEL view, the lease
bookkeeping and the dead-letter mover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio

import redis
from streampipe_worker.acks import AckBuffer, dedupe_key
from streampipe_worker.deadletter import DeadLetter, DeadLetterEnvelope, DeadLetterMover
from streampipe_worker.entry_ids import EntryId
from streampipe_worker.leases import Leases
from streampipe_worker.metrics import Stats, WorkerMetrics
from streampipe_worker.pending import PendingEntries
from streampipe_worker.retry import RetryPolicy
from streampipe_worker.router import Entry, PermanentError
from tests.redis.conftest import GROUP, STREAM

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_group")]

DLQ = f"{STREAM}:dlq"
POLICY = RetryPolicy(
    max_deliveries=3,
    backoff_initial=timedelta(milliseconds=100),
    backoff_max=timedelta(minutes=5),
    claim_idle=timedelta(seconds=2),
)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def delivered(redis_client: redis.Redis, count: int, consumer: str = "c1") -> list[str]:
    """Add ``count`` entries and deliver them to ``consumer``; their ids."""
    for number in range(count):
        redis_client.xadd(STREAM, {"type": "t", "n": str(number)})
    reply = redis_client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def owners(redis_client: redis.Redis) -> dict[str, str]:
    rows = redis_client.xpending_range(STREAM, GROUP, "-", "+", 1000)
    return {row["message_id"]: row["consumer"] for row in rows}


def counted(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"stream": STREAM, "group": GROUP, **labels})


def leases_of(client: Any, stats: Stats) -> Leases:
    acks = AckBuffer(client, STREAM, GROUP, dedupe_ms=None)
    return Leases(
        PendingEntries(client, STREAM, GROUP, "c1"), POLICY, acks, stats, WorkerMetrics(STREAM, GROUP)
    )


def entries_of(ids: list[str], deliveries: int = 1) -> list[Entry]:
    return [Entry(entry_id, {"type": "t"}, deliveries, STREAM, GROUP) for entry_id in ids]


async def test_ack_buffer_acks_in_one_command_and_keeps_ids_whose_fate_is_unknown(
    redis_client: redis.Redis, client: Any
) -> None:
    ids = delivered(redis_client, 5)
    acks = AckBuffer(client, STREAM, GROUP, dedupe_ms=None)
    acks.add(ids[:3], [])
    taken = acks.take()
    assert taken is not None
    assert taken.ids == ids[:3]
    assert acks.take() is None
    acks.add(ids[3:], [])
    acks.restore(taken)  # the round trip failed: the ids go back, in front
    assert acks.ids == ids
    await acks.flush()
    assert len(acks) == 0
    assert owners(redis_client) == {}


async def test_ack_buffer_sets_markers_with_the_ack_and_skips_what_they_mark(
    redis_client: redis.Redis, client: Any
) -> None:
    ids = delivered(redis_client, 3)
    acks = AckBuffer(client, STREAM, GROUP, dedupe_ms=60_000)
    batch = entries_of(ids)
    batch[2].fields = {"type": "t", "dedupe_key": "order-1"}
    first = await acks.skip_duplicates(batch)
    assert [e.id for e in first.entries] == ids
    assert first.repeated == 0
    acks.add([ids[0], ids[2]], [first.markers[0], first.markers[2]])
    await acks.flush()
    assert set(owners(redis_client)) == {ids[1]}
    assert redis_client.pttl(dedupe_key(STREAM, GROUP, ids[0], {})) > 0
    assert redis_client.exists(f"{STREAM}:dedupe:{GROUP}:order-1")
    # Delivered again (a peer's retry): the marked ones are acked unrun, once each.
    again = await acks.skip_duplicates(batch)
    assert [e.id for e in again.entries] == [ids[1]]
    assert again.repeated == 2
    assert acks.ids == [ids[0], ids[2]]


async def test_pending_entries_owners_claims_and_deleted(redis_client: redis.Redis, client: Any) -> None:
    ids = delivered(redis_client, 3, consumer="peer")
    pel = PendingEntries(client, STREAM, GROUP, "c1")
    assert await pel.owners(ids) == dict.fromkeys(ids, "peer")
    assert await pel.mine(ids) == {}
    redis_client.xack(STREAM, GROUP, ids[0])
    redis_client.xdel(STREAM, ids[1])
    # XCLAIM drops the deleted one from the PEL and does not return the acked one.
    missing = await pel.claim({500: ids})
    assert sorted(missing) == sorted(ids[:2])
    assert await pel.gone_from_stream(missing) == [ids[1]]
    assert await pel.mine(ids) == {ids[2]: 1}
    held = await pel.held()
    assert [row["message_id"] for row in held] == [ids[2]]


async def test_leases_renew_and_report_entries_a_peer_took(redis_client: redis.Redis, client: Any) -> None:
    ids = delivered(redis_client, 3)
    stats, metrics = Stats(), WorkerMetrics(STREAM, GROUP)
    acks = AckBuffer(client, STREAM, GROUP, dedupe_ms=None)
    leases = Leases(PendingEntries(client, STREAM, GROUP, "c1"), POLICY, acks, stats, metrics)
    token = leases.start(entries_of(ids[:2]))
    acks.add([ids[2]], [])
    assert sorted(leases.held_ids()) == sorted(ids)
    redis_client.xclaim(STREAM, GROUP, "peer", 0, [ids[1]], justid=True)  # our lease lapsed
    await asyncio.sleep(0.05)
    assert await leases.renew()
    rows = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    idle = {row["message_id"]: row["time_since_delivered"] for row in rows}
    assert idle[ids[0]] < 50
    assert idle[ids[2]] < 50
    assert owners(redis_client)[ids[1]] == "peer"
    assert counted(metrics, "streampipe_worker_lease_lost_total") == 1
    # A copy of an entry still in flight here is not run twice.
    again = leases.not_in_flight(entries_of([ids[0], "9-9"]))
    assert [e.id for e in again] == ["9-9"]
    leases.finish(token)
    assert leases.in_flight == {}


async def test_leases_hand_back_at_shutdown_gives_unstarted_deliveries_back(
    redis_client: redis.Redis, client: Any
) -> None:
    ids = delivered(redis_client, 4)
    stats = Stats()
    leases = leases_of(client, stats)
    leases.note_seen(ids[1])  # ids[2:] were delivered by a read whose reply never arrived
    leases.unstarted.extend(entries_of(ids[:1]))
    leases.start(entries_of(ids[1:2]))
    leases.abandon_in_flight()
    await leases.hand_back_all(time.monotonic() + 5)
    rows = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert {row["message_id"]: row["times_delivered"] for row in rows} == {
        ids[0]: 0,  # never started: its delivery is given back
        ids[1]: 1,  # started: it counts
        ids[2]: 0,
        ids[3]: 0,
    }
    assert all(row["time_since_delivered"] >= 2000 for row in rows)  # claimable by a peer now
    assert stats.handed_back == 4
    assert leases.seen_up_to == EntryId.parse(ids[1])


async def test_leases_report_entries_trimmed_before_processing(
    redis_client: redis.Redis, client: Any
) -> None:
    ids = delivered(redis_client, 2)
    stats = Stats()
    leases = leases_of(client, stats)
    redis_client.xdel(STREAM, ids[0])
    await leases.schedule_retries(entries_of(ids))
    assert stats.trimmed == 1
    assert set(owners(redis_client)) == {ids[1]}


async def test_dead_letter_mover_moves_atomically_and_leaves_a_peers_entry(
    redis_client: redis.Redis, client: Any
) -> None:
    ids = delivered(redis_client, 3)
    redis_client.xclaim(STREAM, GROUP, "peer", 0, [ids[2]], justid=True)
    metrics = WorkerMetrics(STREAM, GROUP)
    mover = DeadLetterMover(PendingEntries(client, STREAM, GROUP, "c1"), DLQ, metrics, stopping=lambda: False)
    batch = entries_of(ids, deliveries=3)
    moved = await mover.move(
        [
            DeadLetter(batch[0], ValueError("broken"), rejected=False),
            DeadLetter(batch[1], PermanentError("bad order"), rejected=True),
            DeadLetter(batch[2], "never ran", rejected=False),
        ]
    )
    assert moved == 2
    envelopes = [DeadLetterEnvelope.from_fields(fields) for _, fields in redis_client.xrange(DLQ, "-", "+")]
    assert [(e.original_id, e.short_exception, e.deliveries) for e in envelopes] == [
        (ids[0], "ValueError", 3),
        (ids[1], "PermanentError", 3),
    ]
    assert owners(redis_client) == {ids[2]: "peer"}  # left to the peer that holds it
    assert counted(metrics, "streampipe_worker_dead_lettered_total", reason="rejected") == 1
    assert counted(metrics, "streampipe_worker_dead_lettered_total", reason="max_deliveries") == 1
    # Moving again writes nothing: the id is no longer pending here.
    assert await mover.move([DeadLetter(batch[0], ValueError("broken"), rejected=False)]) == 0
    assert redis_client.xlen(DLQ) == 2


async def test_leases_do_not_report_an_entry_acked_and_trimmed_while_its_lease_renewal_was_on_its_way(
    redis_client: redis.Redis, client: Any
) -> None:
    """The race behind a false 'trimmed' count: renew() sends XCLAIM for an entry whose ack is buffered;
    meanwhile the reader sends that ack and the retention (rightly) trims the acked entry. XCLAIM then
    drops the id and XRANGE finds no entry, but it was processed here: not a loss. The interleaving is
    forced by running the real XACK and XDEL just before the claim's own round trip."""
    ids = delivered(redis_client, 2)
    stats = Stats()
    leases = leases_of(client, stats)
    leases.acks.add([ids[0]], [])
    claim = leases.pel.claim

    async def claim_after_the_ack_and_the_trim(by_idle: Any, retrycount: int | None = None) -> list[str]:
        await leases.acks.flush()
        redis_client.xdel(STREAM, ids[0])
        return await claim(by_idle, retrycount)

    leases.pel.claim = claim_after_the_ack_and_the_trim  # type: ignore[method-assign]
    assert await leases.renew()
    assert stats.trimmed == 0
    assert set(owners(redis_client)) == {ids[1]}
    # An entry deleted while still pending and unprocessed here is still reported.
    token = leases.start(entries_of([ids[1]]))
    redis_client.xdel(STREAM, ids[1])
    assert await leases.renew()
    assert stats.trimmed == 1
    leases.finish(token)
