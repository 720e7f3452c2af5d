"""Worker crash storm on a partitioned stream: 3 workers, each reading all 4 partitions
(``STREAMPIPE_PARTITIONS``), under the local runtime (a killed replica restarts under its name); every
100 ms one ready worker is SIGKILLed while a producer routes entries by key over the partitions, and a
few entries are poison. Oracle, as for one stream: nothing lost, each poison entry dead-lettered once
in its own partition's dead-letter stream, duplicates bounded by what the kills can cost, and at the
end nothing pending and no lag in any partition.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from streampipe_operator.local.processes import LocalRuntime
from streampipe_worker.connection import ConnectionSettings, create_client
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Event, Producer
from tests.chaos.harness import drained, sigkill_child, storm_replicas, wait_until
from tests.chaos.oracle import dead_letters, judge, read_calls
from tests.chaos.sizes import SIZES
from tests.support.servers import ServerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

HANDLER_DELAY = 0.0002  # as in the single-stream storm: workers stay busy, kills land mid-batch
LAYOUT = PartitionLayout("orders", 4, key="customer")
GROUP = "billing"


def poison(n: int) -> bool:
    return n % 997 == 0


class KeyedProducer(threading.Thread):
    """Sends numbered entries (field ``n``, key field ``customer``) in chunks, routed by key."""

    def __init__(self, url: str, total: int, chunk: int, pause: float) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.producer = Producer(create_client(ConnectionSettings(url=url)), LAYOUT)
        self.total, self.chunk, self.pause = total, chunk, pause
        self.sent: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, self.total, self.chunk):
                numbers = range(start, min(start + self.chunk, self.total))
                events = [
                    Event(
                        type="order.created",
                        payload={},
                        fields={"n": str(n), "customer": f"c-{n % 101}"}
                        | ({"behaviour": "permanent"} if poison(n) else {}),
                    )
                    for n in numbers
                ]
                self.producer.send_many(events)
                self.sent.extend(numbers)
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc


def all_drained(client: redis.Redis) -> bool:
    return all(drained(client, stream, GROUP) for stream in LAYOUT.streams)


def test_a_crash_storm_on_a_partitioned_stream_loses_nothing(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("valkey9")
    client = server.client()
    records = tmp_path / "records"
    records.mkdir()
    batch = SIZES.storm_batch
    settings = {"stream": LAYOUT.base, "group": GROUP, "partitions": LAYOUT.count, "create_group": "0"}
    spec = storm_replicas("pstorm", server.url, records, HANDLER_DELAY, batch_size=batch, **settings)
    chooser = random.Random(random.randrange(2**32))
    kills = 0
    with LocalRuntime(tmp_path / "run", probe_interval=0.05) as runtime:
        workers = runtime.replica_set(spec)
        workers.scale(SIZES.storm_workers)
        assert workers.wait_ready(timeout=60), "workers did not start"
        chunk = 500
        pause = SIZES.storm_seconds / (SIZES.storm_entries / chunk)
        producer = KeyedProducer(server.url, SIZES.storm_entries, chunk, pause)
        began = time.monotonic()
        producer.start()
        while producer.is_alive() or not all_drained(client):
            time.sleep(SIZES.storm_kill_interval)
            candidates = [r for r in workers.status().replicas if r.ready and r.pid is not None]
            if candidates:
                victim = chooser.choice(candidates)
                assert victim.pid is not None
                kills += sigkill_child(victim.pid)
            assert time.monotonic() - began < 240, "the storm made no progress"
        producer.join()
        assert producer.error is None, producer.error
        wait_until(lambda: all_drained(client), 120, "every partition drained after the storm")
        assert workers.stop(grace=15)

    calls = read_calls(records)
    dead = [envelope for stream in LAYOUT.streams for envelope in dead_letters(client, f"{stream}:dlq")]
    verdict = judge(producer.sent, calls, dead)
    assert verdict.lost == [], verdict.summary()
    assert verdict.unknown == []
    assert kills > 0
    # Each poison entry is in its own partition's dead-letter stream, once.
    wanted = {n for n in producer.sent if poison(n)}
    assert verdict.dead_twice == []
    assert verdict.processed_and_dead == []
    for index, stream in enumerate(LAYOUT.streams):
        here = {int(e.original["n"]) for e in dead_letters(client, f"{stream}:dlq")}
        assert here == {n for n in wanted if LAYOUT.partition_for(f"c-{n % 101}") == index}
    # A kill can cost, per partition, the batch read but not acked plus one a reclaim had run.
    assert verdict.duplicates <= 2 * kills * batch * LAYOUT.count, verdict.summary()
