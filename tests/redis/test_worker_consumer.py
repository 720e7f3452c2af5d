"""The consumer loop on real servers (valkey9, redis7): delivery, retries, dead letters, leases."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel

import redis
from streampipe_worker.consumer import Consumer
from streampipe_worker.deadletter import DeadLetterEnvelope, replay
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import Entry, PermanentError, Router, batch
from streampipe_worker.settings import WorkerSettings
from tests.redis.conftest import GROUP, STREAM, consumer_for, pending_count, running
from tests.support.polling import eventually_async as eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_group")]

DLQ = f"{STREAM}:dlq"


class OrderCreated(BaseModel):
    order_id: int
    total: float


def sample(consumer: Consumer, name: str, **labels: str) -> float | None:
    return consumer.metrics.registry.get_sample_value(name, {"stream": STREAM, "group": GROUP, **labels})


def order_router(seen: list[tuple[OrderCreated, Entry]]) -> Router:
    router = Router()

    @router.on("order.created", version=1)
    def created(event: OrderCreated, entry: Entry) -> None:
        seen.append((event, entry))

    return router


async def test_happy_path_every_event_processed_once_and_acked(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    seen: list[tuple[OrderCreated, Entry]] = []
    router = order_router(seen)
    producer = Producer(redis_client, STREAM, router=router)
    ids = producer.send_many(
        Event(type="order.created", payload={"order_id": i, "total": i / 2}) for i in range(500)
    )
    consumer = consumer_for(make_settings(batch_size=64), router)
    async with running(consumer):
        await eventually(lambda: len(seen) == 500 and pending_count(redis_client) == 0, what="500 processed")
    assert sorted(event.order_id for event, _ in seen) == list(range(500))
    assert [entry.id for _, entry in seen] == ids  # one consumer reads in stream order
    assert all(entry.deliveries == 1 and entry.stream == STREAM and entry.group == GROUP for _, entry in seen)
    assert consumer.stats.processed == 500
    assert consumer.stats.failed == consumer.stats.dead_lettered == 0
    assert redis_client.xlen(DLQ) == 0
    assert pending_count(redis_client) == 0


async def test_retries_honour_backoff_and_count_deliveries_in_the_pel(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    attempts: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def flaky(entry: Entry) -> None:
        attempts[entry.fields["n"]].append((entry.deliveries, time.monotonic()))
        if entry.deliveries < 3:
            raise RuntimeError(f"transient failure {entry.deliveries}")

    for n in range(3):
        redis_client.xadd(STREAM, {"n": str(n)})
    settings = make_settings(
        max_deliveries=3, backoff_initial="300ms", backoff_multiplier=2.0, claim_idle="2s"
    )
    consumer = consumer_for(settings, flaky)
    async with running(consumer):
        await eventually(lambda: pending_count(redis_client) == 0 and len(attempts) == 3, what="all settled")
    for n, tries in attempts.items():
        assert [d for d, _ in tries] == [1, 2, 3], n
        first_gap = tries[1][1] - tries[0][1]
        second_gap = tries[2][1] - tries[1][1]
        # Never earlier than the backoff (Redis keeps idle time in ms; allow its rounding).
        assert first_gap >= 0.3 - 0.005, (n, first_gap)
        assert second_gap >= 0.6 - 0.005, (n, second_gap)
    assert consumer.stats.processed == 3
    assert consumer.stats.failed == 6
    assert redis_client.xlen(DLQ) == 0
    # No side keys: the PEL delivery count was the only attempt counter.
    assert sorted(redis_client.keys("*")) == sorted([STREAM])


async def test_poison_entry_goes_to_dead_letter_after_max_deliveries_with_full_envelope(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    calls = Counter[str]()

    def poison(entry: Entry) -> None:
        calls[entry.id] += 1
        if entry.fields.get("bad") == "yes":
            raise ValueError("cannot charge card 4242")

    good = redis_client.xadd(STREAM, {"type": "order.created", "payload": "{}", "bad": "no"})
    bad = redis_client.xadd(
        STREAM,
        # `error` and `group` collide with envelope names; `original.x` with the prefix itself.
        {"type": "order.created", "payload": '{"order_id": 7}', "bad": "yes", "error": "mine", "group": "g0",
         "original.x": "1"},
    )  # fmt: skip
    consumer = consumer_for(
        make_settings(max_deliveries=3, backoff_initial="50ms", consumer="worker-a"), poison
    )
    async with running(consumer):
        await eventually(
            lambda: redis_client.xlen(DLQ) == 1 and pending_count(redis_client) == 0, what="DLQ move"
        )
    assert calls == {good: 1, bad: 3}
    [(_, fields)] = redis_client.xrange(DLQ)
    assert fields["original_id"] == bad
    assert fields["original_stream"] == STREAM
    assert fields["type"] == "order.created"
    assert fields["payload"] == '{"order_id": 7}'
    assert fields["error"] == "cannot charge card 4242"
    assert fields["exception"] == "ValueError"
    assert fields["group"] == GROUP
    assert fields["consumer"] == "worker-a"
    assert fields["deliveries"] == "3"
    assert fields["failed_at"].endswith("+00:00")
    assert fields["bad"] == "yes"
    assert fields["original.error"] == "mine"
    assert fields["original.group"] == "g0"
    assert fields["original.original.x"] == "1"
    envelope = DeadLetterEnvelope.from_fields(fields)
    assert envelope.original == redis_client.xrange(STREAM, bad, bad)[0][1]
    assert consumer.stats.dead_lettered == 1
    assert sample(consumer, "streampipe_worker_dead_lettered_total", reason="max_deliveries") == 1


async def test_invalid_payload_and_unknown_type_go_to_dead_letter_at_first_delivery(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    seen: list[tuple[OrderCreated, Entry]] = []
    router = order_router(seen)
    bad_payload = redis_client.xadd(
        STREAM, {"type": "order.created", "version": "1", "payload": '{"order_id": "x"}'}
    )
    unknown_version = redis_client.xadd(STREAM, {"type": "order.created", "version": "9", "payload": "{}"})
    unknown_type = redis_client.xadd(STREAM, {"type": "order.cancelled", "payload": "{}"})
    ok = Producer(redis_client, STREAM, router=router).send(
        "order.created", OrderCreated(order_id=1, total=2)
    )
    consumer = consumer_for(make_settings(max_deliveries=5), router)
    async with running(consumer):
        await eventually(
            lambda: redis_client.xlen(DLQ) == 3 and pending_count(redis_client) == 0, what="3 dead"
        )
    assert [entry.id for _, entry in seen] == [ok]
    dead = {fields["original_id"]: fields for _, fields in redis_client.xrange(DLQ)}
    assert set(dead) == {bad_payload, unknown_version, unknown_type}
    assert all(fields["deliveries"] == "1" for fields in dead.values())
    assert all(fields["exception"].endswith("InvalidEventError") for fields in dead.values())
    assert "order_id" in dead[bad_payload]["error"]
    assert "version 9" in dead[unknown_version]["error"]
    assert "order.cancelled" in dead[unknown_type]["error"]
    assert consumer.stats.failed == 3
    assert sample(consumer, "streampipe_worker_dead_lettered_total", reason="rejected") == 3


async def test_permanent_error_from_a_plain_handler_skips_retries(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    def reject(entry: Entry) -> None:
        raise PermanentError("customer 12 does not exist")

    entry_id = redis_client.xadd(STREAM, {"k": "v"})
    consumer = consumer_for(make_settings(max_deliveries=5), reject)
    async with running(consumer):
        await eventually(lambda: redis_client.xlen(DLQ) == 1 and pending_count(redis_client) == 0)
    [(_, fields)] = redis_client.xrange(DLQ)
    assert fields["original_id"] == entry_id
    assert fields["deliveries"] == "1"
    assert fields["type"] == "unknown"
    assert DeadLetterEnvelope.from_fields(fields).original == {"k": "v"}


async def test_entries_trimmed_before_processing_are_counted_not_dropped_silently(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(10)]
    # A consumer that read 10 entries and died; then retention deleted 4 of them.
    redis_client.xreadgroup(GROUP, "crashed", {STREAM: ">"}, count=10)
    redis_client.xdel(STREAM, *ids[:4])
    processed: list[str] = []
    consumer = consumer_for(make_settings(claim_idle="200ms"), lambda entry: processed.append(entry.id))
    async with running(consumer):
        await eventually(lambda: pending_count(redis_client) == 0, what="crashed consumer's PEL drained")
    assert sorted(processed) == sorted(ids[4:])
    assert consumer.stats.trimmed == 4
    assert consumer.stats.reclaimed == 6
    assert sample(consumer, "streampipe_worker_trimmed_before_processing_total") == 4
    assert sample(consumer, "streampipe_worker_reclaimed_total") == 6


async def test_a_long_handler_keeps_its_lease_and_is_not_stolen(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    calls: list[tuple[str, str, int]] = []
    release = threading.Event()

    def slow(name: str) -> Callable[[Entry], None]:
        def handle(entry: Entry) -> None:
            calls.append((name, entry.id, entry.deliveries))
            release.wait(10)  # runs for several claimIdle periods

        return handle

    redis_client.xadd(STREAM, {"n": "1"})
    # Leases are renewed every claimIdle/4: 750 ms of slack before a renewal is late, even on a
    # busy machine.
    holder = consumer_for(make_settings(consumer="holder", claim_idle="1s"), slow("holder"))
    peer = consumer_for(make_settings(consumer="peer", claim_idle="1s"), slow("peer"))
    async with running(holder):
        await eventually(lambda: len(calls) == 1, what="holder started")
        async with running(peer):
            await asyncio.sleep(3)  # three claimIdle periods: without leases the peer would take it
            release.set()
            await eventually(lambda: pending_count(redis_client) == 0, what="holder acked")
    assert [(name, deliveries) for name, _, deliveries in calls] == [("holder", 1)]
    assert peer.stats.reclaimed == 0


async def test_dedupe_marker_skips_a_redelivered_event(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    handled: list[str] = []
    producer = Producer(redis_client, STREAM)
    producer.send("payment.captured", {"id": 1}, dedupe_key="pay-1")
    producer.send("payment.captured", {"id": 1}, dedupe_key="pay-1")  # the producer retried
    producer.send("payment.captured", {"id": 2}, dedupe_key="pay-2")
    consumer = consumer_for(
        make_settings(dedupe_ttl="1m", batch_size=1), lambda e: handled.append(e.fields["payload"])
    )
    async with running(consumer):
        await eventually(lambda: pending_count(redis_client) == 0 and len(handled) == 2)
    assert [json.loads(payload) for payload in handled] == [{"id": 1}, {"id": 2}]
    assert consumer.stats.deduplicated == 1
    ttl = redis_client.pttl(f"{STREAM}:dedupe:{GROUP}:pay-1")
    assert 0 < ttl <= 60_000


async def test_async_handlers_run_concurrently_up_to_the_limit(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    active = 0
    peak = 0
    done: list[str] = []

    async def handle(entry: Entry) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        if entry.fields["n"] == "3" and entry.deliveries == 1:
            raise RuntimeError("once")
        done.append(entry.fields["n"])

    for n in range(40):
        redis_client.xadd(STREAM, {"n": str(n)})
    consumer = consumer_for(make_settings(concurrency=4, batch_size=40), handle)
    async with running(consumer):
        await eventually(lambda: pending_count(redis_client) == 0 and len(done) == 40)
    assert peak == 4
    assert sorted(done, key=int) == [str(n) for n in range(40)]


async def test_batch_handler_reports_outcomes_per_entry(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    sizes: list[int] = []

    @batch
    def handle(entries: list[Entry]) -> list[BaseException | None]:
        sizes.append(len(entries))
        return [PermanentError("odd") if int(e.fields["n"]) % 2 else None for e in entries]

    for n in range(20):
        redis_client.xadd(STREAM, {"n": str(n)})
    consumer = consumer_for(make_settings(batch_size=20), handle)
    async with running(consumer):
        await eventually(lambda: redis_client.xlen(DLQ) == 10 and pending_count(redis_client) == 0)
    assert sizes == [20]
    assert redis_client.xlen(DLQ) == 10
    assert consumer.stats.processed == 10


async def test_stop_hands_back_unstarted_entries_with_their_attempt_budget(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    started: list[str] = []
    gate = threading.Event()

    def handle(entry: Entry) -> None:
        started.append(entry.id)
        gate.wait(10)

    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(10)]
    consumer = consumer_for(make_settings(batch_size=10, claim_idle="1m"), handle)
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: len(started) == 1, what="first entry started")
    consumer.request_stop()
    gate.set()
    await asyncio.wait_for(task, 20)
    assert started == ids[:1]
    assert consumer.stats.handed_back == 9
    rows = redis_client.xpending_range(STREAM, GROUP, "-", "+", 100)
    assert [row["message_id"] for row in rows] == ids[1:]
    # Claimable at once by any peer (idle >= claimIdle), and the attempt it never made is given back.
    assert all(row["time_since_delivered"] >= 60_000 for row in rows)
    assert all(row["times_delivered"] == 0 for row in rows)


async def test_stop_right_after_a_failure_keeps_the_attempt_and_its_backoff(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    """A scale-down right after a failure: the failed attempt stays counted and its backoff holds."""
    attempts: list[tuple[str, int, float]] = []
    stopping: list[Consumer] = []

    def failing(name: str) -> Callable[[Entry], Awaitable[None]]:
        async def fail(entry: Entry) -> None:
            attempts.append((name, entry.deliveries, time.monotonic()))
            if name == "a":
                stopping[0].request_stop()  # SIGTERM arrives while this failure is being handled
            raise RuntimeError("payment gateway timeout")

        return fail

    entry_id = redis_client.xadd(STREAM, {"n": "1"})
    # claimIdle 2s - backoff 1s: the failed entry is handed back with IDLE 1000.
    timings = {"max_deliveries": 2, "backoff_initial": "1s", "claim_idle": "2s"}
    first = consumer_for(make_settings(consumer="a", **timings), failing("a"))
    stopping.append(first)
    await asyncio.wait_for(first.run(), 30)

    [row] = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    since_failure_ms = (time.monotonic() - attempts[0][2]) * 1000
    assert (row["message_id"], row["consumer"], row["times_delivered"]) == (entry_id, "a", 1)
    # Still waiting out its backoff (not made claimable at once); 50 ms for the two clocks' rounding.
    assert row["time_since_delivered"] <= 1000 + since_failure_ms + 50
    assert first.stats.handed_back == 0

    peer = consumer_for(make_settings(consumer="b", **timings), failing("b"))
    async with running(peer):
        await eventually(lambda: redis_client.xlen(DLQ) == 1 and pending_count(redis_client) == 0)
    assert [(name, deliveries) for name, deliveries, _ in attempts] == [("a", 1), ("b", 2)]
    assert attempts[1][2] - attempts[0][2] >= 1.0 - 0.005  # never before the backoff has passed
    [(_, fields)] = redis_client.xrange(DLQ)
    assert (fields["original_id"], fields["deliveries"]) == (entry_id, "2")


async def test_stop_gives_back_the_delivery_of_a_read_whose_reply_never_arrived(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    """An XREADGROUP cancelled by the stop can deliver entries the worker never sees: not attempted."""
    handled: list[str] = []
    consumer = consumer_for(make_settings(claim_idle="1m"), lambda entry: handled.append(entry.id))
    seen = redis_client.xadd(STREAM, {"n": "0"})
    async with running(consumer):
        await eventually(lambda: handled == [seen] and pending_count(redis_client) == 0, what="first entry")
        # The reply of a read under the worker's own name, lost on the way: XADD and XREADGROUP in one
        # MULTI, so the worker's own blocked read cannot get the entry first.
        pipe = redis_client.pipeline(transaction=True)
        pipe.xadd(STREAM, {"n": "1"})
        pipe.xreadgroup(GROUP, consumer.name, {STREAM: ">"}, count=1)
        lost, _ = pipe.execute()
    assert handled == [seen]
    [row] = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert (row["message_id"], row["times_delivered"]) == (lost, 0)
    assert row["time_since_delivered"] >= 60_000  # a peer takes it at once
    assert consumer.stats.handed_back == 1


async def test_an_entry_still_running_when_the_grace_period_ends_keeps_its_delivery(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    started: list[str] = []
    gate = threading.Event()

    def stuck(entry: Entry) -> None:
        started.append(entry.id)
        gate.wait(20)

    entry_id = redis_client.xadd(STREAM, {"n": "1"})
    consumer = consumer_for(make_settings(claim_idle="1m", shutdown_grace="200ms"), stuck)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: started == [entry_id], what="handler started")
        consumer.request_stop()
        await asyncio.wait_for(task, 20)
    finally:
        gate.set()
    assert consumer.abandoned == 1
    [row] = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    # The attempt was made (it may even have had effects): counted. Handed back for a peer to take now.
    assert (row["message_id"], row["times_delivered"]) == (entry_id, 1)
    assert row["time_since_delivered"] >= 60_000


async def test_replay_moves_dead_letters_back_once(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    def reject(entry: Entry) -> None:
        raise PermanentError("bad")

    for n in range(5):
        redis_client.xadd(
            STREAM, {"type": "a" if n % 2 else "b", "payload": json.dumps({"n": n}), "n": str(n)}
        )
    async with running(consumer_for(make_settings(), reject)):
        await eventually(lambda: redis_client.xlen(DLQ) == 5 and pending_count(redis_client) == 0)
    before = redis_client.xlen(STREAM)
    dry = replay(redis_client, DLQ, types=["a"], dry_run=True)
    assert (dry.matched, dry.replayed, redis_client.xlen(STREAM)) == (2, 0, before)
    first = replay(redis_client, DLQ, types=["a"], limit=1)
    assert first.replayed == 1
    again = replay(redis_client, DLQ, types=["a"])
    assert again.replayed == 1  # only the one the first run left (limit=1)
    assert replay(redis_client, DLQ, types=["a"]).replayed == 0
    assert redis_client.xlen(DLQ) == 3
    replayed = redis_client.xrange(STREAM, "-", "+")[before:]
    assert [fields["n"] for _, fields in replayed] == ["1", "3"]
    assert all(fields["replayed_from"] for _, fields in replayed)
    kept = replay(redis_client, DLQ, keep=True)
    assert kept.replayed == 3
    assert replay(redis_client, DLQ, keep=True).already_replayed == 3
    assert redis_client.xlen(DLQ) == 3


async def test_a_fast_sync_handler_runs_on_the_event_loop_and_a_slow_one_on_the_handler_thread(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    """Handing each batch to the handler thread costs more than a fast handler's calls: once its
    batches have proven fast it runs on the loop; a handler sleeping per call never leaves the thread."""
    threads: dict[str, set[str]] = defaultdict(set)

    def fast(entry: Entry) -> None:
        threads["fast"].add(threading.current_thread().name)

    def slow(entry: Entry) -> None:
        threads["slow"].add(threading.current_thread().name)
        time.sleep(0.002)  # above the per-call limit for running on the loop, on any machine

    for n in range(300):
        redis_client.xadd(STREAM, {"n": str(n)})

    def drained() -> bool:
        return bool(redis_client.xinfo_groups(STREAM)[0]["lag"] == 0 and pending_count(redis_client) == 0)

    async with running(consumer_for(make_settings(batch_size=1), fast)):
        await eventually(drained, what="300 entries handled")
    assert threading.current_thread().name in threads["fast"]
    redis_client.xgroup_setid(STREAM, GROUP, "0")  # the same 300 entries again, for the slow one
    async with running(consumer_for(make_settings(batch_size=1), slow)):
        await eventually(drained, what="300 entries handled again")
    assert threads["slow"]
    assert all(name.startswith("handler") for name in threads["slow"])


async def test_a_sync_handler_that_turns_slow_goes_back_to_the_thread_and_keeps_its_lease(
    redis_client: redis.Redis, make_settings: Callable[..., WorkerSettings]
) -> None:
    """Fast for hundreds of entries (so it runs on the loop), then one slow call sends it back to
    the handler thread: a call that then blocks for several claimIdle periods leaves the loop free to
    renew the lease, and the stop still works."""
    release = threading.Event()
    blocked_on: list[str] = []
    done: list[str] = []

    def handle(entry: Entry) -> None:
        kind = entry.fields["kind"]
        if kind == "slow":
            time.sleep(0.02)
        elif kind == "stuck":
            blocked_on.append(threading.current_thread().name)
            release.wait(10)
        done.append(entry.id)

    ids = [redis_client.xadd(STREAM, {"kind": "fast"}) for _ in range(300)]
    ids += [redis_client.xadd(STREAM, {"kind": "slow"}), redis_client.xadd(STREAM, {"kind": "stuck"})]
    holder = consumer_for(make_settings(consumer="holder", claim_idle="1s", batch_size=1), handle)
    peer = consumer_for(make_settings(consumer="peer", claim_idle="1s"), handle)
    async with running(holder):
        await eventually(lambda: len(blocked_on) == 1, what="the stuck entry started")
        async with running(peer):
            await asyncio.sleep(3)  # three claimIdle periods: the lease must be renewed meanwhile
            release.set()
            await eventually(lambda: pending_count(redis_client) == 0, what="holder acked")
    assert blocked_on[0].startswith("handler")
    assert done == ids  # each entry once, in order, by the holder
    assert peer.stats.reclaimed == 0
