"""The real ``streampipe-worker`` process: crashes (SIGKILL), graceful stop (SIGTERM), probes, self-check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import redis
from tests.redis.conftest import GROUP, STREAM, pending_count
from tests.support.polling import eventually
from tests.support.servers import free_port
from tests.support.worker_process import WorkerProcesses

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("stream_group")]

HANDLER_MODULE = """
import os, time

_out = open(os.environ["TEST_OUT"], "a", buffering=1)
_delay = float(os.environ.get("TEST_DELAY", "0"))


def handle(entry):
    if _delay:
        time.sleep(_delay)
    # One line per finished entry; line-buffered, so a SIGKILL loses none that were written.
    _out.write(f"{entry.id} {entry.deliveries}\\n")
"""


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m streampipe_worker`` processes; each is stopped (by PID) after the test."""
    workers = WorkerProcesses(redis_url, tmp_path, STREAM, GROUP, "proc_handlers", HANDLER_MODULE)
    yield workers.start
    workers.stop_all()


def finished(tmp_path: Path, name: str) -> list[tuple[str, int]]:
    path = tmp_path / f"{name}.out"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        entry_id, deliveries = line.split()
        rows.append((entry_id, int(deliveries)))
    return rows


def produce(client: redis.Redis, count: int) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(STREAM, {"type": "order.created", "payload": json.dumps({"n": n})})
    return [str(i) for i in pipe.execute()]


def test_sigkill_mid_batch_a_survivor_finishes_everything(
    redis_client: redis.Redis, start_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    ids = produce(redis_client, 2000)
    victim = start_worker(
        "victim", STREAMPIPE_BATCH_SIZE="200", TEST_DELAY="0.001", STREAMPIPE_CLAIM_IDLE="1s"
    )
    eventually(lambda: len(finished(tmp_path, "victim")) >= 250, what="victim halfway through a batch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    in_pel = {row["message_id"] for row in redis_client.xpending_range(STREAM, GROUP, "-", "+", 1000)}
    assert in_pel, "the victim died holding entries"
    survivor = start_worker("survivor", STREAMPIPE_BATCH_SIZE="200", STREAMPIPE_CLAIM_IDLE="1s")
    eventually(
        lambda: pending_count(redis_client) == 0 and redis_client.xinfo_groups(STREAM)[0]["lag"] == 0,
        what="survivor drained the stream and the victim's PEL",
    )
    done = finished(tmp_path, "victim") + finished(tmp_path, "survivor")
    assert {entry_id for entry_id, _ in done} == set(ids)  # nothing lost
    reclaimed = {entry_id for entry_id, deliveries in finished(tmp_path, "survivor") if deliveries == 2}
    # Everything the victim held (unstarted, running, or finished but not yet acked) went to the
    # survivor as a second delivery: at least once, never lost.
    assert reclaimed == in_pel
    assert redis_client.xlen(f"{STREAM}:dlq") == 0
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(20) == 0


def test_sigterm_hands_back_unstarted_entries_and_a_peer_takes_them_at_once(
    redis_client: redis.Redis, start_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    # claimIdle of 1 minute: the peer can only get the leaving worker's entries this fast if they
    # are handed back.
    slow = {"STREAMPIPE_CLAIM_IDLE": "1m", "STREAMPIPE_BATCH_SIZE": "50", "TEST_DELAY": "0.2"}
    ids = produce(redis_client, 50)
    leaving = start_worker("leaving", **slow)
    eventually(lambda: len(finished(tmp_path, "leaving")) >= 1, what="first entry finished")
    peer = start_worker("peer", STREAMPIPE_CLAIM_IDLE="1m", STREAMPIPE_BATCH_SIZE="50")
    leaving.send_signal(signal.SIGTERM)
    _, stderr = leaving.communicate(timeout=30)
    assert leaving.returncode == 0, stderr
    assert "handed back" in stderr
    # The bound is half of claimIdle: without the hand-back the peer could not take them in time.
    eventually(
        lambda: pending_count(redis_client) == 0 and len(finished(tmp_path, "peer")) > 0,
        within=30.0,
        what="peer took the handed-back entries",
    )
    by_leaving = finished(tmp_path, "leaving")
    by_peer = finished(tmp_path, "peer")
    assert {i for i, _ in by_leaving} | {i for i, _ in by_peer} == set(ids)
    assert not {i for i, _ in by_leaving} & {i for i, _ in by_peer}  # finished work was acked, not redone
    # The leaving worker never started them, so it gave the delivery back: the peer's is the first.
    assert all(deliveries == 1 for _, deliveries in by_peer)
    peer.send_signal(signal.SIGTERM)
    assert peer.wait(20) == 0


def test_probes_and_metrics_are_served(
    redis_client: redis.Redis, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    port = free_port()
    worker = start_worker("probed", STREAMPIPE_METRICS_PORT=str(port))
    produce(redis_client, 25)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    eventually(lambda: get("/readyz")[0] == 200, what="ready")
    assert get("/healthz") == (200, "ok\n")
    eventually(
        lambda: (
            'streampipe_worker_processed_total{group="billing",stream="{orders}:events"} 25.0'
            in get("/metrics")[1]
        )
    )
    body = get("/metrics")[1]
    for name in (
        "streampipe_worker_failed_total",
        "streampipe_worker_dead_lettered_total",
        "streampipe_worker_reclaimed_total",
        "streampipe_worker_trimmed_before_processing_total",
        "streampipe_worker_handler_duration_seconds_bucket",
        "streampipe_worker_batch_size_bucket",
        "streampipe_worker_in_flight",
    ):
        assert name in body, name
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_check_mode_validates_settings_handler_and_connection(redis_url: str, tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
    environ.update(
        {
            "STREAMPIPE_REDIS_URL": redis_url,
            "STREAMPIPE_STREAM": STREAM,
            "STREAMPIPE_GROUP": GROUP,
            "STREAMPIPE_HANDLER": "json:dumps",
        }
    )
    command = [sys.executable, "-m", "streampipe_worker", "--check", "--ping"]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["ping"] == "ok"
    assert report["dead_letter_stream"] == f"{STREAM}:dlq"
    environ["STREAMPIPE_HANDLER"] = "missing_module:handle"
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "cannot import 'missing_module'" in done.stderr
    assert "Traceback" not in done.stderr
