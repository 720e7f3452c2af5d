"""8. The consumer protocol as a Hypothesis state machine against a real server.

Rules: produce entries (each with a behaviour: ok, fails once, fails twice, poison, always fails), run a
real ``Consumer`` for a while and stop it gracefully or crash it (its task is cancelled: no ack flush, no
hand-back), trim with the operator's protected retention, and trim the delivered prefix of the stream
behind the pipeline's back (as another tool would, pending entries included).

Invariant after every step, with nothing running: every produced entry is in exactly one class, and

    produced = acked + pending + undelivered + dead-lettered + reported-trimmed

- pending: in the PEL (XPENDING);
- undelivered: in the stream after the group's last-delivered-id;
- dead-lettered: an envelope in the dead-letter stream (exactly one; never also pending);
- reported-trimmed: deleted while pending by the foreign trim, and counted by a worker as trimmed
  before processing (the count must match the model's exactly);
- acked: none of the above, and the handler succeeded on it at least once.

An entry in no class was lost. The server is the truth for the first three classes; the model (the
test's own ledger) for what was produced, what the handler finished, and what the foreign trim removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import redis
from streampipe_operator.plan.retention import RetentionPolicy
from streampipe_operator.streams.admin import RedisAdmin
from streampipe_worker.consumer import Consumer
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.read_channel import ReadChannel
from streampipe_worker.router import Entry, PermanentError, classify_handler
from streampipe_worker.settings import WorkerSettings, load_settings
from tests.chaos.results import ChaosResult, record
from tests.chaos.sizes import SIZES
from tests.support.polling import eventually_async as eventually
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

GROUP = "billing"
BEHAVIOURS = ("ok", "ok", "ok", "flaky:1", "flaky:2", "permanent", "fail")
MAX_DELIVERIES = 3
_streams = itertools.count()


class Totals:
    """Figures over all examples, for the results file."""

    examples = 0
    steps = 0
    produced = 0
    crashes = 0
    stops = 0
    foreign_trims = 0
    reported_trimmed = 0
    dead_lettered = 0
    duplicates = 0


def make_machine(url: str, totals: type[Totals]) -> type[RuleBasedStateMachine]:
    class ConsumerProtocol(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            suffix = next(_streams)
            self.stream = f"{{model{suffix}}}:events"
            self.dead_letter = f"{self.stream}:dlq"
            self.client = redis.Redis.from_url(url, decode_responses=True)
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            self.produced: dict[str, str] = {}  # entry id -> behaviour
            self.successes: Counter[str] = Counter()
            self.trimmed_while_pending: set[str] = set()
            self.reported = 0  # workers' "trimmed before processing" counts, summed
            totals.examples += 1

        def teardown(self) -> None:
            totals.produced += len(self.produced)
            totals.duplicates += sum(count - 1 for count in self.successes.values() if count > 1)
            totals.reported_trimmed += self.reported
            totals.dead_lettered += int(self.client.xlen(self.dead_letter))
            self.client.delete(self.stream, self.dead_letter)
            self.client.close()

        # --- rules ------------------------------------------------------------------------------

        @rule(behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=15))
        def produce(self, behaviours: list[str]) -> None:
            pipe = self.client.pipeline(transaction=False)
            for behaviour in behaviours:
                pipe.xadd(self.stream, {"behaviour": behaviour})
            for entry_id, behaviour in zip(pipe.execute(), behaviours, strict=True):
                self.produced[str(entry_id)] = behaviour
            totals.steps += 1

        @rule(
            name=st.sampled_from(["c1", "c2"]),
            batch=st.integers(1, 10),
            seconds=st.sampled_from([0.05, 0.15, 0.4]),
            crash=st.booleans(),
        )
        def work(self, name: str, batch: int, seconds: float, crash: bool) -> None:
            asyncio.run(self._work(name, batch, seconds, crash))
            totals.steps += 1
            if crash:
                totals.crashes += 1
            else:
                totals.stops += 1

        # The same rule twice: consumers run in about half of the steps.
        again = rule(
            name=st.sampled_from(["c1", "c2"]),
            batch=st.integers(1, 10),
            seconds=st.sampled_from([0.05, 0.15, 0.4]),
            crash=st.booleans(),
        )(lambda self, **kwargs: self.work(**kwargs))

        async def _work(self, name: str, batch: int, seconds: float, crash: bool) -> None:
            async def handle(entry: Entry) -> None:
                behaviour = entry.fields["behaviour"]
                if behaviour == "permanent":
                    raise PermanentError("poison")
                if behaviour == "fail" or (
                    behaviour.startswith("flaky:") and entry.deliveries <= int(behaviour[6:])
                ):
                    raise RuntimeError("failed attempt")
                self.successes[entry.id] += 1

            settings_ = load_settings(
                {},
                redis_url=url,
                stream=self.stream,
                group=GROUP,
                consumer=name,
                handler="tests.unused:handler",
                batch_size=batch,
                block="20ms",
                claim_idle="200ms",
                backoff_initial="20ms",
                backoff_max="100ms",
                max_deliveries=MAX_DELIVERIES,
                metrics_port=0,
                shutdown_grace="5s",
            )
            consumer = Consumer(settings_, classify_handler(handle))
            task = asyncio.create_task(consumer.run())
            await asyncio.sleep(seconds)
            if crash:
                task.cancel()
                done, _ = await asyncio.wait([task], timeout=30)
                assert done, "the cancelled consumer did not stop within 30 s"
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                # Commands the cancelled client had sent are run by the server on its own time.
                await asyncio.sleep(0.05)
            else:
                consumer.request_stop()
                await asyncio.wait_for(task, 30)
            self.reported += consumer.stats.trimmed

        @rule(max_length=st.integers(0, 30))
        def protected_trim(self, max_length: int) -> None:
            async def trim() -> None:
                client: Any = redis.asyncio.Redis.from_url(url, decode_responses=True)
                try:
                    admin = RedisAdmin(client)
                    policy = RetentionPolicy(max_length=max_length, protect_unprocessed=True)
                    observation = await admin.observe_stream(self.stream)
                    plan = await admin.retention_plan(observation, policy, now=time.time())
                    await admin.apply_trims(self.stream, None, plan.actions)
                finally:
                    await client.aclose()

            asyncio.run(trim())
            totals.steps += 1

        @precondition(lambda self: bool(self._pending()))
        @rule()
        def foreign_trim_of_the_delivered_prefix(self) -> None:
            """XTRIM MINID just past last-delivered-id: acked and pending entries go, unread ones stay."""
            last = self._group()["last-delivered-id"]
            ms, seq = (int(part) for part in str(last).split("-"))
            pending = self._pending()
            before = {entry_id for entry_id, _ in self.client.xrange(self.stream)}
            self.client.xtrim(self.stream, minid=f"{ms}-{seq + 1}")
            after = {entry_id for entry_id, _ in self.client.xrange(self.stream)}
            self.trimmed_while_pending |= (before - after) & set(pending)
            totals.foreign_trims += 1
            totals.steps += 1

        # --- the invariant ----------------------------------------------------------------------

        def _group(self) -> dict[str, Any]:
            return next(g for g in self.client.xinfo_groups(self.stream) if g["name"] == GROUP)

        def _pending(self) -> dict[str, int]:
            rows = self.client.xpending_range(self.stream, GROUP, "-", "+", 100_000)
            return {str(r["message_id"]): int(r["times_delivered"]) for r in rows}

        @invariant()
        def every_entry_is_accounted_for(self) -> None:
            pending = set(self._pending())
            last = self._group()["last-delivered-id"]
            undelivered = {entry_id for entry_id, _ in self.client.xrange(self.stream, min=f"({last}")}
            envelopes = [
                DeadLetterEnvelope.from_fields(fields) for _, fields in self.client.xrange(self.dead_letter)
            ]
            dead = Counter(envelope.original_id for envelope in envelopes)
            assert not [i for i, count in dead.items() if count > 1], "an entry was dead-lettered twice"
            assert not pending & set(dead), "dead-lettered and still pending: the move was not atomic"
            assert not undelivered & (pending | set(dead))
            classes: Counter[str] = Counter()
            lost = []
            for entry_id in self.produced:
                if entry_id in pending:
                    classes["pending"] += 1
                elif entry_id in undelivered:
                    classes["undelivered"] += 1
                elif entry_id in dead:
                    classes["dead_lettered"] += 1
                elif entry_id in self.trimmed_while_pending:
                    classes["reported_trimmed"] += 1
                elif self.successes[entry_id] > 0:
                    classes["acked"] += 1
                else:
                    lost.append((entry_id, self.produced[entry_id]))
            assert not lost, f"entries in no class (lost): {lost[:5]}"
            assert classes["reported_trimmed"] == self.reported, (
                f"{classes['reported_trimmed']} entries were trimmed while pending and are no longer "
                f"pending, but workers reported {self.reported} as trimmed before processing"
            )
            assert len(self.produced) == (
                classes["acked"]
                + classes["pending"]
                + classes["undelivered"]
                + classes["dead_lettered"]
                + classes["reported_trimmed"]
            )
            # Poison entries are dead-lettered, never acked as processed.
            for entry_id in self.produced:
                if self.produced[entry_id] in ("permanent", "fail"):
                    assert self.successes[entry_id] == 0

    return ConsumerProtocol


@pytest.mark.parametrize("kind", SIZES.heavy_kinds)
def test_the_consumer_protocol_accounts_for_every_entry(
    kind: str, server_factory: Callable[..., ServerProcess]
) -> None:
    began = time.monotonic()
    server = server_factory(kind)

    class Figures(Totals):
        pass

    machine = make_machine(server.url, Figures)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=SIZES.model_examples,
            stateful_step_count=SIZES.model_steps,
            deadline=None,
            database=None,
            # Steps run real consumers for fractions of a second: replaying a failure is not exact, so
            # no shrinking; the failing steps are printed as they ran.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    record(
        ChaosResult(
            item=8,
            title="protocol model",
            case=kind,
            parameters=(
                f"{Figures.examples} Hypothesis runs of up to {SIZES.model_steps} steps; maxDeliveries "
                f"{MAX_DELIVERIES}, claimIdle 200 ms; invariant checked after every step"
            ),
            entries=Figures.produced,
            faults=(
                f"{Figures.crashes} consumer crashes, {Figures.foreign_trims} trims of pending entries "
                "behind the pipeline's back"
            ),
            lost=0,
            duplicates=Figures.duplicates,
            figures={
                "steps": Figures.steps,
                "graceful_stops": Figures.stops,
                "dead_lettered": Figures.dead_lettered,
                "reported_trimmed_before_processing": Figures.reported_trimmed,
            },
            not_covered=(
                "One group, two consumer names, in-process consumers (a crash is a cancelled task); "
                "trims of unread entries by other tools are not modelled (nothing could report them)."
            ),
        ),
        began,
    )


def c1_settings(redis_url: str, stream: str, **values: str) -> WorkerSettings:
    """Settings of consumer c1 in the regression tests below."""
    return load_settings(
        {},
        redis_url=redis_url,
        stream=stream,
        group=GROUP,
        consumer="c1",
        handler="tests.unused:handler",
        metrics_port=0,
        **values,
    )


@pytest.mark.timeout(60)
async def test_a_restarted_consumer_reports_its_pending_entries_that_were_trimmed(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A consumer restarted under its name reports as trimmed before processing the entries its previous
    run left pending whose stream entries were deleted (XCLAIM, which hands the rest back, silently
    drops those from the PEL)."""
    stream = "{regression}:events"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [redis_client.xadd(stream, {"behaviour": "ok"}) for _ in range(5)]
    redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=5)  # c1 dies holding them
    last_ms = int(str(ids[-1]).split("-")[0])
    redis_client.xtrim(stream, minid=f"{last_ms + 1}-0")  # deleted behind the pipeline's back
    seen: list[Entry] = []

    async def handle(entry: Entry) -> None:
        seen.append(entry)

    # claimIdle 10s: no XAUTOCLAIM finds them first; the hand-back at start-up is what runs.
    consumer = Consumer(
        c1_settings(redis_url, stream, block="20ms", claim_idle="10s"), classify_handler(handle)
    )
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: consumer.stats.trimmed >= 5, within=20, what="the trimmed entries reported")
    finally:
        consumer.request_stop()
        await asyncio.wait_for(task, 30)
    assert consumer.stats.trimmed == 5
    assert seen == []
    assert redis_client.xpending(stream, GROUP)["pending"] == 0


def idle_consumer(redis_client: redis.Redis, redis_url: str, client: Any, *, block: str) -> Consumer:
    """Consumer c1 of an empty stream (nothing is produced), reading through ``client``."""
    stream = "{regression}:events"
    redis_client.xgroup_create(stream, GROUP, id="$", mkstream=True)

    async def handle(entry: Entry) -> None:
        raise AssertionError("nothing is produced")

    return Consumer(c1_settings(redis_url, stream, block=block), classify_handler(handle), client=client)


class SwallowsOneCancellation(ReadChannel):
    """The reader's real channel, except that one cancellation of a read is lost and the read returns
    nothing, as a redis-py call does on Python 3.11 when a cancel lands just as its send completes
    (``asyncio.wait_for``, CPython gh-86296, fixed in 3.12). The channel itself does not use
    ``wait_for``, but the consumer must not depend on that; the race cannot be hit on purpose, hence
    this stand-in."""

    swallowed = 0

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        try:
            return await super().call(commands)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            return [None] * len(commands)


@pytest.mark.timeout(60)
async def test_a_cancelled_consumer_stops_even_if_a_cancellation_is_lost(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A cancelled consumer stops, and ``run()`` returns, even when its reader loses the cancellation (a
    crash, or an error in one of its loops, cancels the task)."""
    client = redis.asyncio.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=15, client_name="c1"
    )
    # block 5s: the reader sits in XREADGROUP, so the cancel lands there.
    consumer = idle_consumer(redis_client, redis_url, client, block="5s")
    channel = consumer.batches.channel = SwallowsOneCancellation(client)
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: any(c["name"] == "c1" for c in redis_client.client_list()), what="c1 reading")
    await asyncio.sleep(0.2)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=15)
    assert channel.swallowed == 1
    assert done, "run() kept going after it was cancelled"
    await client.aclose()


class SwallowsTheCancelledHandBack(redis.asyncio.Redis):
    """A real client whose first XPENDING (the hand-back of a previous run's entries, the first thing
    ``run()`` does) loses the cancellation that lands during it and completes, as redis-py's send does
    on Python 3.11 (see above). The call is held open for a moment so that the cancel lands there."""

    swallowed = 0

    async def xpending_range(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            if not self.swallowed:
                await asyncio.sleep(1.0)
            return await super().xpending_range(*args, **kwargs)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            return await super().xpending_range(*args, **kwargs)


@pytest.mark.timeout(60)
async def test_a_consumer_cancelled_while_starting_stops_even_if_the_cancellation_is_lost(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A consumer cancelled during its start-up hand-back stops, and ``run()`` returns, even when that
    cancellation is lost."""
    client = SwallowsTheCancelledHandBack.from_url(redis_url, decode_responses=True, socket_timeout=15)
    consumer = idle_consumer(redis_client, redis_url, client, block="20ms")
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.2)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=15)
    assert client.swallowed == 1
    assert done, "run() kept going after it was cancelled while starting"
    assert task.cancelled()
    await client.aclose()
