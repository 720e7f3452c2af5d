"""1. Worker crash storm: 3 workers under the local runtime (which restarts a crashed replica under its
name, as a kubelet restarts a container in its pod); every 100 ms one of them, chosen at random, is
SIGKILLed, while a producer keeps adding entries. Oracle: nothing lost, duplicates bounded by what the
kills can cost, and at the end nothing pending and no lag.

The victim is drawn from the replicas that are ready (consuming): a worker still starting has nothing in
flight, and killing it again would only measure how long Python takes to start.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from streampipe_operator.local.processes import LocalRuntime
from tests.chaos.harness import (
    DEAD_LETTER,
    GROUP,
    STREAM,
    drained,
    group_state,
    produce,
    sigkill_child,
    storm_replicas,
    wait_until,
)
from tests.chaos.oracle import dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record, seconds
from tests.chaos.sizes import SIZES
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

# Each handler call takes 0.2 ms: a worker can do about 5,000 entries/s, so three are kept busy by the
# producer's pace and a kill usually lands in the middle of a batch.
HANDLER_DELAY = 0.0002


class Producer(threading.Thread):
    """Adds the entries in chunks while the storm goes on."""

    def __init__(self, client: redis.Redis, total: int, chunk: int, pause: float) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.client, self.total, self.chunk, self.pause = client, total, chunk, pause
        self.ledger: dict[int, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, self.total, self.chunk):
                self.ledger |= produce(self.client, start, min(self.chunk, self.total - start))
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("kind", SIZES.heavy_kinds)
def test_crash_storm_loses_nothing(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    began = time.monotonic()
    server = server_factory(kind)
    client = server.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    records = tmp_path / "records"
    records.mkdir()
    batch = SIZES.storm_batch
    spec = storm_replicas("storm", server.url, records, HANDLER_DELAY, batch_size=batch)
    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    kills = 0
    restarts_to_ready: list[float] = []
    with LocalRuntime(tmp_path / "run", probe_interval=0.05) as runtime:
        workers = runtime.replica_set(spec)
        workers.scale(SIZES.storm_workers)
        assert workers.wait_ready(timeout=60), "workers did not start"
        chunk = 500
        pause = SIZES.storm_seconds / (SIZES.storm_entries / chunk)
        producer = Producer(server.client(), SIZES.storm_entries, chunk, pause)
        storm_began = time.monotonic()
        producer.start()
        down: dict[str, float] = {}  # replica name -> when it was killed
        while producer.is_alive() or group_state(client).lag > 0:
            time.sleep(SIZES.storm_kill_interval)
            now = time.monotonic()
            replicas = workers.status().replicas
            for replica in replicas:
                if replica.name in down and replica.ready:
                    restarts_to_ready.append(now - down.pop(replica.name))
            candidates = [r for r in replicas if r.ready and r.pid is not None and r.name not in down]
            if candidates:
                victim = chooser.choice(candidates)
                assert victim.pid is not None
                if sigkill_child(victim.pid):
                    kills += 1
                    down[victim.name] = now
            assert now - storm_began < 240, f"storm made no progress: {group_state(client)}"
        storm_seconds = time.monotonic() - storm_began
        producer.join()
        assert producer.error is None, producer.error
        # The storm is over: the survivors (and restarted workers) finish what the dead ones held.
        settle = wait_until(lambda: drained(client), 120, "pending 0 and lag 0 after the storm")
        assert workers.stop(grace=15)
        restarts = sum(1 for e in runtime.drain_events() if e.kind == "exited")

    calls = read_calls(records)
    dead = dead_letters(client, DEAD_LETTER)
    verdict = judge(producer.ledger, calls, dead)
    state = group_state(client)
    assert verdict.lost == [], verdict.summary()
    assert verdict.unknown == []
    assert (state.pending, state.lag) == (0, 0)
    assert kills > 0
    assert restarts >= kills  # every kill was noticed and the replica restarted
    # A kill can cost the batch the reader had run but not acked, plus one batch a reclaim had run:
    # acks travel with the next read, and the reclaimer acks after its own batch.
    assert verdict.duplicates <= 2 * kills * batch, verdict.summary()
    median_ready = statistics.median(restarts_to_ready) if restarts_to_ready else 0.0
    record(
        ChaosResult(
            item=1,
            title="crash storm",
            case=kind,
            parameters=(
                f"{SIZES.storm_workers} workers, batch {batch}, SIGKILL a random ready worker every "
                f"{SIZES.storm_kill_interval * 1000:.0f} ms while producing over "
                f"{SIZES.storm_seconds:.0f} s; handler 0.2 ms/entry; seed {seed}"
            ),
            entries=verdict.produced,
            faults=f"{kills} SIGKILL",
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            recovery=f"restart to ready: median {seconds(median_ready)}, drain after storm {seconds(settle)}",
            figures={
                "kills": kills,
                "duplicates_per_kill": round(verdict.duplicates / kills, 1),
                "bound_kills_x_batch": kills * batch,
                # The crash-loop guard (delivered more than maxDeliveries times without a result) cannot
                # tell an ack lost to a kill from a poison entry; this many processed entries hit it.
                "dead_lettered": verdict.dead_lettered,
                "processed_then_dead_lettered": len(verdict.processed_and_dead),
                "storm_seconds": round(storm_seconds, 1),
                "throughput_during_storm": round(verdict.produced / storm_seconds),
            },
            not_covered=(
                "Worker processes only: the server, the network and the producer stay healthy. "
                "A handler's external side effects are assumed idempotent (duplicates are counted, "
                "not prevented; STREAMPIPE_DEDUPE_TTL is off)."
            ),
        ),
        began,
    )
