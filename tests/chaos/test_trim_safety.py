"""7. Trim safety under live traffic (Hypothesis): the operator's protected retention (RedisAdmin's
plan + trims, protectUnprocessed on) runs in a tight loop with an aggressive policy while a producer
adds entries and real consumers of two groups read, fail, retry, ack and crash. Hypothesis draws the
policy, the batch sizes, the failure rate and the crash times.

The sequential interleavings of add / read / ack / trim (entries added between planning and trimming
included) are already explored step by step by ``tests/redis/test_redis_admin_retention.py``; this is
the concurrent form: the interleavings are whatever the event loop and the server make of them.

Oracle: every produced entry is processed by every group, no consumer ever finds an entry of its PEL
deleted (XAUTOCLAIM's deleted IDs: the worker counts them as trimmed before processing), and the
retention did trim (a test whose trims never ran would prove nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from streampipe_operator.plan.retention import RetentionPolicy
from streampipe_operator.streams.admin import RedisAdmin
from streampipe_worker.consumer import Consumer
from streampipe_worker.router import Entry, classify_handler
from streampipe_worker.settings import load_settings
from tests.chaos.results import ChaosResult, record
from tests.chaos.sizes import SIZES
from tests.support.servers import SERVER_IDS, ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

STREAM = "{trim}:events"
GROUPS = ("billing", "audit")


@dataclass(frozen=True)
class Scenario:
    max_length: int | None
    max_age_ms: int | None
    approximate: bool
    batch: int
    flaky_every: int  # every n-th entry fails its first delivery (0: none)
    crash_times: tuple[float, ...]  # seconds into the run at which a random consumer dies
    pause_at: float  # the audit group's consumers stop then (its backlog builds up) ...
    pause_for: float  # ... for this long, then start again
    trim_interval: float
    seed: int


SCENARIOS = st.builds(
    Scenario,
    max_length=st.one_of(st.none(), st.integers(0, 300)),
    max_age_ms=st.one_of(st.none(), st.integers(1, 200)),
    approximate=st.booleans(),
    batch=st.sampled_from([1, 10, 100, 500]),
    flaky_every=st.sampled_from([0, 7, 50]),
    crash_times=st.lists(st.floats(0.1, 3.0), max_size=4).map(lambda xs: tuple(sorted(xs))),
    pause_at=st.floats(0.1, 2.0),
    pause_for=st.floats(0.2, 1.5),
    trim_interval=st.sampled_from([0.0, 0.005, 0.05]),
    seed=st.integers(0, 2**32 - 1),
).filter(lambda s: s.max_length is not None or s.max_age_ms is not None)


# Always run: without protection it loses hundreds of entries (checked when this test was written).
STRONG = Scenario(
    max_length=50,
    max_age_ms=None,
    approximate=True,
    batch=10,
    flaky_every=7,
    crash_times=(0.5, 1.0),
    pause_at=0.5,
    pause_for=1.0,
    trim_interval=0.005,
    seed=1,
)
# The same with exact trims: on Redis 8.2 these go through the server's XTRIM = ... ACKED.
STRONG_EXACT = dataclasses.replace(STRONG, approximate=False)


@dataclass
class Outcome:
    processed: dict[str, Counter[int]] = field(default_factory=lambda: {g: Counter() for g in GROUPS})
    trimmed_before_processing: int = 0
    removed_by_retention: int = 0
    trim_passes: int = 0
    crashes: int = 0
    duplicates: int = 0


async def run_scenario(url: str, scenario: Scenario, entries: int) -> Outcome:
    outcome = Outcome()
    chooser = random.Random(scenario.seed)
    client: Any = redis.asyncio.Redis.from_url(url, decode_responses=True)
    await client.delete(STREAM)
    for group in GROUPS:
        await client.xgroup_create(STREAM, group, id="0", mkstream=True)

    def handler_for(group: str) -> Callable[[Entry], Any]:
        async def handle(entry: Entry) -> None:
            n = int(entry.fields["n"])
            if scenario.flaky_every and n % scenario.flaky_every == 0 and entry.deliveries == 1:
                raise RuntimeError("first delivery fails")
            outcome.processed[group][n] += 1

        return handle

    def new_consumer(group: str, name: str) -> Consumer:
        settings = load_settings(
            {},
            redis_url=url,
            stream=STREAM,
            group=group,
            consumer=name,
            handler="tests.unused:handler",
            batch_size=scenario.batch,
            block="50ms",
            claim_idle="500ms",
            backoff_initial="50ms",
            backoff_max="200ms",
            max_deliveries=10,
            metrics_port=0,
            shutdown_grace="5s",
        )
        return Consumer(settings, classify_handler(handler_for(group)))

    running: dict[str, tuple[Consumer, asyncio.Task[None]]] = {}
    retired: list[Consumer] = []

    def start(group: str, name: str) -> None:
        consumer = new_consumer(group, name)
        running[name] = (consumer, asyncio.create_task(consumer.run()))

    for group in GROUPS:
        for index in range(2):
            start(group, f"{group}-{index}")

    policy = RetentionPolicy(
        max_length=scenario.max_length,
        max_age=scenario.max_age_ms / 1000 if scenario.max_age_ms else None,
        approximate=scenario.approximate,
        protect_unprocessed=True,
    )
    admin = RedisAdmin(client, trim_chunk=50, retention_count_cap=1000)
    stop = asyncio.Event()

    async def retention() -> None:
        while not stop.is_set():
            plan = await admin.retention_plan(await admin.observe_stream(STREAM), policy, now=time.time())
            removed = await admin.apply_trims(STREAM, None, plan.actions)
            outcome.removed_by_retention += removed.get(STREAM, 0)
            outcome.trim_passes += 1
            await asyncio.sleep(scenario.trim_interval)

    async def produce() -> None:
        chunk = 100
        for low in range(0, entries, chunk):
            pipe = client.pipeline(transaction=False)
            for n in range(low, min(low + chunk, entries)):
                pipe.xadd(STREAM, {"n": str(n)})
            await pipe.execute()
            await asyncio.sleep(3.0 / (entries / chunk))

    async def crash() -> None:
        began = time.monotonic()
        for at in scenario.crash_times:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - began)))
            if not running:
                continue
            name = chooser.choice(sorted(running))
            consumer, task = running.pop(name)
            task.cancel()  # no hand-back, no ack flush: what a SIGKILL leaves behind
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            retired.append(consumer)
            outcome.crashes += 1
            start(consumer.group, name)  # restarted under its name, like a pod's container

    async def pause_audit() -> None:
        await asyncio.sleep(scenario.pause_at)
        names = [name for name in sorted(running) if name.startswith("audit")]
        for name in names:
            consumer, task = running.pop(name)
            consumer.request_stop()
            await asyncio.wait_for(task, 30)
            retired.append(consumer)
        await asyncio.sleep(scenario.pause_for)
        for name in names:
            start("audit", name)

    async def drained() -> bool:
        for group in GROUPS:
            info = next(g for g in await client.xinfo_groups(STREAM) if g["name"] == group)
            behind = await client.xrange(STREAM, min=f"({info['last-delivered-id']}", max="+", count=1)
            if info["pending"] or behind:
                return False
        return True

    trimmer = asyncio.create_task(retention())
    try:
        await asyncio.gather(produce(), crash(), pause_audit())
        deadline = time.monotonic() + 120
        while not await drained():
            assert time.monotonic() < deadline, f"not drained within 120 s: {scenario}"
            assert not trimmer.done() or trimmer.exception() is None, trimmer.exception()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await trimmer
        for consumer, task in running.values():
            consumer.request_stop()
            await asyncio.wait_for(task, 30)
            retired.append(consumer)
        await client.aclose()
    outcome.trimmed_before_processing = sum(c.stats.trimmed for c in retired)
    return outcome


# Every server at every size: Redis 8.2's XTRIM ... ACKED is the other protection path (the server
# protects, not the plan), and Redis 7.0 keeps a stale lag after trims (plan.backlog).
@pytest.mark.parametrize("kind", SERVER_IDS)
def test_protected_retention_never_trims_unprocessed_entries_under_live_traffic(
    kind: str, server_factory: Callable[..., ServerProcess]
) -> None:
    began = time.monotonic()
    # Small stream nodes, so that approximate trims (whole nodes) act on a stream of a few hundred.
    server = server_factory(kind, "--stream-node-max-entries", "16")
    totals = Outcome()
    examples: list[Scenario] = []

    @settings(
        max_examples=SIZES.trim_examples,
        deadline=None,
        database=None,
        # An example takes seconds of real traffic and is not replayable exactly: no shrinking,
        # the falsifying scenario is printed as drawn.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(scenario=SCENARIOS)
    @example(scenario=STRONG)
    @example(scenario=STRONG_EXACT)
    def check(scenario: Scenario) -> None:
        outcome = asyncio.run(run_scenario(server.url, scenario, SIZES.trim_entries))
        for group in GROUPS:
            missing = set(range(SIZES.trim_entries)) - set(outcome.processed[group])
            assert not missing, (
                f"group {group} never processed {len(missing)} entries, e.g. {sorted(missing)[:5]}"
            )
        assert outcome.trimmed_before_processing == 0
        examples.append(scenario)
        totals.removed_by_retention += outcome.removed_by_retention
        totals.trim_passes += outcome.trim_passes
        totals.crashes += outcome.crashes
        totals.duplicates += sum(sum(c.values()) - len(c) for c in outcome.processed.values())

    check()
    assert totals.removed_by_retention > 0, "the retention never trimmed: nothing was tested"
    produced = SIZES.trim_entries * len(examples)
    record(
        ChaosResult(
            item=7,
            title="trim safety",
            case=kind,
            parameters=(
                f"{len(examples)} Hypothesis examples x {SIZES.trim_entries} entries, 2 groups x 2 "
                "consumers; protected retention (maxLength 0-300 and/or maxAge 1-200 ms) in a loop; one "
                "group stopped 0.2-1.5 s mid-run"
            ),
            entries=produced,
            faults=f"{totals.crashes} consumer crashes, {totals.trim_passes} retention passes",
            lost=0,
            duplicates=totals.duplicates,
            figures={
                "entries_removed_by_retention": totals.removed_by_retention,
                "trimmed_before_processing": 0,
            },
            not_covered=(
                "Trims by other clients (a producer's XADD MAXLEN) are outside the protection; in-process "
                "consumers (a crash is a cancelled task, not a dead process)."
            ),
        ),
        began,
    )
