"""`streampipe up` end to end: the quickstart on the embedded Valkey, on given servers, stopped by Ctrl-C.

Each run is the real command in a subprocess: an embedded (or fixture) server, real worker processes
scaled by the operator's planners, the demo producer. The summary (``--output json``) is checked
against what the demo producer says it sent, and the completion records the quickstart handlers
write are an independent count of what was processed.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import redis
from streampipe_worker.partitions import PartitionLayout

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "pipeline.yaml"
STREAMPIPE = str(Path(sys.executable).parent / "streampipe")
# The worker logs one "retry in" warning per entry it hands back for a retry, the same event its
# streampipe_worker_retried_total counter counts: the workers' own record to check `up`'s figure with.
RETRY_LOG = re.compile(r"failed \(delivery \d+ of \d+\), retry in")


def check_demo_summary(summary: dict[str, Any]) -> None:
    """Everything the demo sent is processed or dead-lettered, for the reasons the demo planted."""
    demo = summary["demo"]
    groups = {group["name"]: group for group in summary["groups"]}
    assert summary["exit_code"] == 0
    assert summary["settled"] is True
    assert summary["accounted"] is True
    assert summary["produced"] == demo["sent"] > 0

    fulfilment = groups["fulfilment"]
    assert fulfilment["backlog_left"] == 0
    assert fulfilment["processed"] + fulfilment["dead_lettered"] == summary["produced"]
    assert fulfilment["dead_letter_reasons"] == {
        name: count
        for name, count in {
            "PermanentError": demo["too_expensive"],
            "WarehouseCrashError": demo["cursed"],
            "InvalidEventError": demo["invalid"],
        }.items()
        if count
    }
    assert summary["dead_lettered"] == fulfilment["dead_lettered"]
    assert fulfilment["retried"] > 0  # flaky orders fail once, cursed ones before their last delivery
    # The handlers' own completion records: one per processed entry, an independent count.
    assert fulfilment["latency"]["count"] == fulfilment["processed"]
    assert 0 <= fulfilment["latency"]["p50_ms"] <= fulfilment["latency"]["p99_ms"]

    analytics = groups["analytics"]
    assert (analytics["processed"], analytics["dead_lettered"], analytics["backlog_left"]) == (
        summary["produced"],
        0,
        0,
    )
    assert analytics["latency"]["count"] == summary["produced"]


def rose_and_fell(summary: dict[str, Any], group: str) -> bool:
    moves = [(e["from_replicas"], e["to_replicas"]) for e in summary["scale_events"] if e["group"] == group]
    peak = max((to for _, to in moves), default=0)
    rose_at = next((i for i, (_, to) in enumerate(moves) if to > 1), None)
    return rose_at is not None and any(to < peak for _, to in moves[rose_at + 1 :])


@pytest.mark.timeout(150)
def test_quickstart_demo_on_the_embedded_valkey(tmp_path: Path) -> None:
    data = tmp_path / "data"
    command = [
        STREAMPIPE,
        "up",
        str(QUICKSTART),
        "--demo",
        "--duration",
        "20s",
        "--no-ui",
        "--output",
        "json",
    ]
    done = subprocess.run(
        [*command, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=140,
        cwd=tmp_path,  # handler modules come from the file's directory, not the working directory
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    check_demo_summary(summary)
    assert summary["embedded"] is True
    fulfilment = next(group for group in summary["groups"] if group["name"] == "fulfilment")
    assert fulfilment["max_replicas"] > 1
    assert rose_and_fell(summary, "fulfilment"), summary["scale_events"]
    assert fulfilment["final_replicas"] < fulfilment["max_replicas"]
    assert summary["trimmed"] > 0  # retention maxLength 1000 < what the demo sends

    # Retries come from the workers' counters, read until each worker exits. Only what a scaled-down
    # worker counts while settling its one entry in flight at SIGTERM may go unread.
    logged = sum(len(RETRY_LOG.findall(log.read_text())) for log in (data / "workers").glob("*fulfilment*"))
    stopped = sum(
        e["from_replicas"] - e["to_replicas"]
        for e in summary["scale_events"]
        if e["to_replicas"] < e["from_replicas"]
    )
    assert logged - stopped <= fulfilment["retried"] <= logged
    # The plain progress went to stderr: the scale-up, the dead letters, the drain.
    assert "scale: scaled fulfilment 1 -> 4" in done.stderr
    assert "dead-letter: fulfilment:" in done.stderr
    assert "drained: every group's backlog is zero" in done.stderr


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in: {path.read_text()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.timeout(150)
def test_up_on_a_given_server_stops_gracefully_on_ctrl_c(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    command = [STREAMPIPE, "up", str(QUICKSTART), "--redis-url", redis_url, "--demo", "--no-ui", "-o", "json"]
    with log.open("w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            wait_for_line(log, "workers ready", proc)
            wait_for_line(log, "dead-letter: fulfilment:", proc)  # the burst is being worked on
            proc.send_signal(signal.SIGINT)  # as Ctrl-C: stop producing, drain, stop the workers
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    summary = json.loads(out)
    check_demo_summary(summary)
    assert summary["embedded"] is False

    # The server keeps the pipeline's state: groups at the end of the stream, dead letters kept.
    stream = "{shop}:orders"
    groups = {group["name"]: group for group in redis_client.xinfo_groups(stream)}
    assert set(groups) == {"fulfilment", "analytics"}
    assert all(group["pending"] == 0 and group["lag"] == 0 for group in groups.values())
    assert redis_client.xlen(f"{stream}:dlq") == summary["dead_lettered"]
    assert redis_client.xinfo_stream(stream)["entries-added"] == summary["produced"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["/nonexistent.yaml"], 2, "cannot read"),
        ([str(QUICKSTART), "--duration", "20"], 2, "--duration"),
        ([str(QUICKSTART), "--redis-url", "redis://127.0.0.1:1/0", "--data-dir", "/tmp/x"], 2, "--data-dir"),
        ([str(QUICKSTART), "--redis-url", "redis://127.0.0.1:1/0"], 1, "cannot reach Redis at 127.0.0.1:1"),
    ],
)
def test_up_refuses_bad_input(arguments: list[str], code: int, message: str) -> None:
    done = subprocess.run(
        [STREAMPIPE, "up", *arguments, "--no-ui"], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(90)
def test_up_names_a_handler_that_does_not_import(tmp_path: Path) -> None:
    broken = tmp_path / "pipeline.yaml"
    broken.write_text(
        QUICKSTART.read_text().replace("quickstart_shop.fulfilment:router", "nowhere.mod:router")
    )
    done = subprocess.run(
        [STREAMPIPE, "up", str(broken), "--duration", "1s", "--no-ui"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "group fulfilment: the worker refuses to start" in done.stderr
    assert "nowhere" in done.stderr


@pytest.mark.timeout(150)
def test_partitioned_quickstart_on_a_given_server(server_factory: Any, tmp_path: Path) -> None:
    # The quickstart spread over 4 partitions: the same demo, the same summary, every partition used.
    server = server_factory("valkey9")
    shop = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART.parent, shop, ignore=shutil.ignore_patterns("__pycache__"))
    document = yaml.safe_load(QUICKSTART.read_text())
    document["spec"] |= {"stream": "shop", "partitions": {"count": 4}}
    (shop / "pipeline.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    command = [STREAMPIPE, "up", str(shop / "pipeline.yaml"), "--redis-url", server.url, "--demo"]
    done = subprocess.run(
        [*command, "--duration", "10s", "--no-ui", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    check_demo_summary(summary)

    layout = PartitionLayout("shop", 4)
    with server.client() as client:
        added = [client.xinfo_stream(stream)["entries-added"] for stream in layout.streams]
        assert sum(added) == summary["produced"]
        assert min(added) > 0  # the demo spread its orders over every partition
        for stream in layout.streams:
            groups = {group["name"]: group for group in client.xinfo_groups(stream)}
            assert set(groups) == {"fulfilment", "analytics"}
            assert all(group["pending"] == 0 and group["lag"] == 0 for group in groups.values())
        dead = sum(client.xlen(layout.dead_letter(i)) for i in range(layout.count))
        assert dead == summary["dead_lettered"]
