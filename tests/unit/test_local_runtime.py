"""The local process runtime with real child processes (a small Python script plays the worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streampipe_operator.local.processes import LocalRuntime, ReplicaSetStatus, ReplicaSpec
from tests.support.polling import eventually

pytestmark = pytest.mark.timeout(60)

CHILD = textwrap.dedent(
    """
    import http.server, os, signal, subprocess, sys, threading, time
    from pathlib import Path

    mode = os.environ.get("CHILD_MODE", "run")
    out = Path(os.environ["CHILD_OUT"])
    name = os.environ["STREAMPIPE_CONSUMER"]

    def put(file, text=""):  # atomic, so that a reader never sees a half-written marker
        (out / (file + ".tmp")).write_text(text)
        os.replace(out / (file + ".tmp"), out / file)

    put(f"{name}.{os.getpid()}.started", os.environ.get("CHILD_TAG", ""))
    print(f"child {name} pid {os.getpid()} mode {mode}", flush=True)

    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        put(f"{name}.{os.getpid()}.terminated")
        sys.exit(0)

    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, lambda *args: print("ignoring SIGTERM", flush=True))
    else:
        signal.signal(signal.SIGTERM, on_term)
    if mode == "crash":
        print("crashing", flush=True)
        sys.exit(3)
    if mode == "spawn":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        put(f"{name}.grandchild", str(grandchild.pid))
    port = os.environ.get("CHILD_PORT")
    if port:
        class Probe(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if (out / "ready").exists() else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", int(port)), Probe)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(0.05)
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Callable[..., ReplicaSpec]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out"
    out.mkdir()

    def spec(name: str = "billing", mode: str = "run", **options: object) -> ReplicaSpec:
        env = {"CHILD_MODE": mode, "CHILD_OUT": str(out)}
        env.update(options.pop("env", {}))  # type: ignore[call-overload]
        values: dict[str, object] = {
            "name": name,
            "command": (sys.executable, str(script)),
            "env": env,
            "restart_backoff": 0.05,
            "restart_backoff_max": 0.2,
            "termination_grace": 5.0,
        }
        values.update(options)
        return ReplicaSpec.model_validate(values)

    return spec


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    with LocalRuntime(tmp_path / "run") as rt:
        yield rt


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an unreaped orphan is dead for our purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def settled(out: Path, count: int, suffix: str = "started") -> None:
    """Alive is not enough: wait until the children ran their setup (signal handlers, grandchildren)."""
    eventually(lambda: len(list(out.glob(f"*.{suffix}"))) >= count, f"{count} children {suffix}")


def pids(status: ReplicaSetStatus) -> list[int]:
    return [r.pid for r in status.replicas if r.pid is not None]


def test_scale_up_gives_each_replica_a_name_env_and_log(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    workers = runtime.replica_set(child())
    workers.scale(3)
    assert workers.wait_ready(3)
    status = workers.status()
    assert (status.desired, status.running, status.ready, status.terminating) == (3, 3, 3, 0)
    names = [r.name for r in status.replicas]
    assert len(set(names)) == 3
    assert sorted(int(n.split("-")[1]) for n in names) == [0, 1, 2]
    assert all(n.startswith("billing-") and len(n.split("-")[2]) == 6 for n in names)
    # Every child saw its own name as its consumer name, and writes to its own log file.
    eventually(lambda: len(list((tmp_path / "out").glob("*.started"))) == 3, "3 children started")
    started = {p.name.split(".")[0] for p in (tmp_path / "out").glob("*.started")}
    assert started == set(names)
    for replica in status.replicas:
        eventually(lambda r=replica: f"child {r.name} pid {r.pid}" in r.log_path.read_text(), "log line")
        assert replica.log_path.parent == tmp_path / "run"
    assert [e.kind for e in runtime.drain_events()] == ["started"] * 3


def test_scale_down_terminates_the_newest_with_sigterm(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    workers = runtime.replica_set(child())
    workers.scale(3)
    assert workers.wait_ready(3)
    settled(tmp_path / "out", 3)
    before = {r.name: r.pid for r in workers.status().replicas}
    workers.scale(1)
    eventually(lambda: len(workers.status().replicas) == 1, "two replicas gone")
    (kept,) = workers.status().replicas
    assert kept.name.split("-")[1] == "0"
    assert before[kept.name] == kept.pid  # the survivor was not touched
    for name, pid in before.items():
        if name != kept.name:
            assert (tmp_path / "out" / f"{name}.{pid}.terminated").exists()
            assert not alive(pid)
    assert sorted(e.kind for e in runtime.drain_events()) == ["started"] * 3 + ["stopped"] * 2


def test_crashed_replica_restarts_under_the_same_name(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec]
) -> None:
    workers = runtime.replica_set(child(mode="crash"))
    workers.scale(1)
    eventually(lambda: workers.status().restarts >= 3, "three restarts")
    (replica,) = workers.status().replicas
    assert replica.last_exit_code == 3
    log = replica.log_path.read_text()
    assert log.count("crashing") >= 3
    assert f"starting {replica.name} (restart 1)" in log
    events = runtime.drain_events()
    assert {e.replica for e in events} == {replica.name}
    exits = [e for e in events if e.kind == "exited"]
    assert exits
    assert exits[0].message.startswith("exited with code 3; restarting in 0.05s")

    # A fixed command is picked up by the same replica set (Recreate: a new replica, new name).
    workers.update(child(mode="run"))
    assert workers.wait_ready(1)
    (fixed,) = workers.status().replicas
    assert fixed.name != replica.name
    assert fixed.restarts == 0


def test_stop_kills_a_replica_that_ignores_sigterm(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    workers = runtime.replica_set(child(mode="ignore-term"))
    workers.scale(2)
    assert workers.wait_ready(2)
    settled(tmp_path / "out", 2)
    started = pids(workers.status())
    assert workers.stop(grace=0.3)
    assert workers.status().replicas == ()
    assert not any(alive(pid) for pid in started)
    kinds = [e.kind for e in runtime.drain_events()]
    assert kinds.count("killed") == 2
    assert kinds.count("stopped") == 2
    for path in (runtime.run_dir).glob("*.log"):
        assert "ignoring SIGTERM" in path.read_text()


def test_grandchildren_go_with_their_replica(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    workers = runtime.replica_set(child(mode="spawn"))
    workers.scale(1)
    assert workers.wait_ready(1)
    (replica,) = workers.status().replicas
    marker = tmp_path / "out" / f"{replica.name}.grandchild"
    eventually(marker.exists, "grandchild started")
    grandchild = int(marker.read_text())
    assert alive(grandchild)
    assert workers.stop()
    eventually(lambda: not alive(grandchild), "grandchild gone")


def test_readiness_follows_the_health_endpoint(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    workers = runtime.replica_set(child(port_env="CHILD_PORT"))
    workers.scale(2)
    eventually(lambda: workers.status().running == 2, "two running")
    ports = [r.port for r in workers.status().replicas]
    assert None not in ports
    assert len(set(ports)) == 2
    assert not workers.wait_ready(1, timeout=1.0)  # /readyz answers 503 so far
    assert workers.status().ready == 0
    (tmp_path / "out" / "ready").write_text("")
    assert workers.wait_ready(2)


def test_a_command_that_cannot_start_is_retried_and_reported(
    runtime: LocalRuntime, child: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-binary")
    workers = runtime.replica_set(child(command=(missing,)))
    workers.scale(1)
    eventually(lambda: workers.status().restarts >= 2, "two attempts")
    status = workers.status()
    assert (status.running, status.ready) == (0, 0)
    events = runtime.drain_events()
    assert events[0].kind == "failed-to-start"
    assert f"cannot start {missing}" in events[0].message
    assert workers.stop()


def test_scale_refuses_negative(runtime: LocalRuntime, child: Callable[..., ReplicaSpec]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        runtime.replica_set(child()).scale(-1)


def test_worker_spec_runs_the_worker_module_with_its_env_names() -> None:
    spec = ReplicaSpec.for_worker("orders-billing", {"STREAMPIPE_STREAM": "s"})
    assert spec.command == (sys.executable, "-m", "streampipe_worker")
    assert (spec.consumer_env, spec.port_env) == ("STREAMPIPE_CONSUMER", "STREAMPIPE_METRICS_PORT")
    assert spec.env == {"STREAMPIPE_STREAM": "s", "STREAMPIPE_METRICS_HOST": "127.0.0.1"}


EXITING_PARENT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from streampipe_operator.local.processes import LocalRuntime, ReplicaSpec

    run_dir, script, out = sys.argv[1:4]
    runtime = LocalRuntime(Path(run_dir))
    env = {"CHILD_OUT": out, "CHILD_MODE": "spawn"}
    workers = runtime.replica_set(ReplicaSpec(name="w", command=(sys.executable, script), env=env))
    workers.scale(2)
    assert workers.wait_ready(2, timeout=20)
    deadline = time.monotonic() + 20
    while len(list(Path(out).glob("*.grandchild"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    print(json.dumps([r.pid for r in workers.status().replicas]), flush=True)
    # No close(): the interpreter exits and atexit must stop the replicas.
    """
)


def test_no_processes_outlive_the_parent(tmp_path: Path, child: Callable[..., ReplicaSpec]) -> None:
    child()  # writes child.py and the out directory
    parent = tmp_path / "parent.py"
    parent.write_text(EXITING_PARENT)
    done = subprocess.run(
        [
            sys.executable,
            str(parent),
            str(tmp_path / "run"),
            str(tmp_path / "child.py"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=40,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    replicas = json.loads(done.stdout)
    grandchildren = [int(p.read_text()) for p in (tmp_path / "out").glob("*.grandchild")]
    assert len(replicas) == 2
    assert len(grandchildren) == 2
    eventually(lambda: not any(alive(pid) for pid in replicas + grandchildren), "every process gone")
