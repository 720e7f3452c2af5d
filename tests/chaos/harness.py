"""What the fault tests share: producing numbered entries, reading a group's state, running workers.

Workers are real ``python -m streampipe_worker`` processes running ``tests.chaos.recorder:handle``;
their environment is rendered by the worker's own ``render_env`` (the one place that knows the
variable names). Every process started here is stopped by its PID by the test that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from streampipe_operator.local.processes import ReplicaSpec
from streampipe_worker.crash_points import ENV as CRASH_ENV
from streampipe_worker.settings import ENV_PREFIX, render_env
from tests.support.polling import poll

ROOT = Path(__file__).resolve().parents[2]
STREAM = "{orders}:events"
GROUP = "billing"
DEAD_LETTER = f"{STREAM}:dlq"
HANDLER = "tests.chaos.recorder:handle"
RECORD_DIR_ENV = "CHAOS_RECORD_DIR"


def produce(
    client: redis.Redis,
    start: int,
    count: int,
    *,
    stream: str = STREAM,
    behaviour: Callable[[int], str] | None = None,
    chunk: int = 1000,
) -> dict[int, str]:
    """XADD entries numbered ``start .. start+count-1`` (field ``n``), pipelined; -> {n: entry id}."""
    ledger: dict[int, str] = {}
    for low in range(start, start + count, chunk):
        numbers = range(low, min(low + chunk, start + count))
        pipe = client.pipeline(transaction=False)
        for n in numbers:
            fields = {"n": str(n), "type": "order.created"}
            if behaviour is not None:
                fields["behaviour"] = behaviour(n)
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        for n, entry_id in zip(numbers, pipe.execute(), strict=True):
            ledger[n] = str(entry_id)
    return ledger


class ResilientProducer(threading.Thread):
    """Adds numbered entries in small pipelines; a chunk whose replies were lost is sent again.

    The ledger holds only acknowledged XADDs (n -> entry id). A chunk that failed may still have been
    applied before the crash: the retry then adds those numbers twice, which the oracle sees as
    duplicates, never as losses. With ``wait=(replicas, timeout_ms)`` a chunk counts as acknowledged
    only when ``WAIT`` says that many replicas have it; otherwise it is sent again.
    """

    def __init__(
        self,
        url: str,
        total: int,
        chunk: int = 100,
        pause: float = 0.01,
        *,
        start: int = 0,
        behaviour: Callable[[int], str] | None = None,
        client_factory: Callable[[], Any] | None = None,
        wait: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.url, self.total, self.chunk, self.pause = url, total, chunk, pause
        self.start_at, self.behaviour = start, behaviour
        self.client_factory, self.wait = client_factory, wait
        self.unconfirmed_chunks = 0  # WAIT answered fewer replicas than asked
        self.ledger: dict[int, str] = {}
        self.failed_chunks = 0
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.client_factory is not None:
            client = self.client_factory()
        else:
            client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)
        try:
            n = self.start_at
            end = self.start_at + self.total
            while n < end:
                if self.paused.is_set():
                    self.idle.set()
                    time.sleep(0.01)
                    continue
                self.idle.clear()
                numbers = range(n, min(n + self.chunk, end))
                try:
                    pipe = client.pipeline(transaction=False)
                    for number in numbers:
                        fields = {"n": str(number), "type": "order.created"}
                        if self.behaviour is not None:
                            fields["behaviour"] = self.behaviour(number)
                        pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
                    if self.wait is not None:
                        pipe.execute_command("WAIT", *self.wait)
                    ids = pipe.execute()
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                    if isinstance(exc, redis.ResponseError) and not str(exc).startswith(
                        ("READONLY", "LOADING", "MASTERDOWN")
                    ):
                        raise
                    self.failed_chunks += 1
                    time.sleep(0.05)
                    continue
                if self.wait is not None and int(ids.pop()) < self.wait[0]:
                    self.unconfirmed_chunks += 1
                    time.sleep(0.05)
                    continue
                self.ledger.update(zip(numbers, (str(i) for i in ids), strict=True))
                n = numbers[-1] + 1
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc
        finally:
            self.idle.set()
            client.close()


@dataclass(frozen=True)
class GroupState:
    pending: int
    lag: int  # entries after last-delivered-id (counted when the server's figure is nil)
    last_delivered_id: str
    entries_read: int | None


def group_state(client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> GroupState:
    info = next(g for g in client.xinfo_groups(stream) if g["name"] == group)
    last = str(info["last-delivered-id"])
    lag = info.get("lag")
    if lag is None:
        lag = len(client.xrange(stream, min=f"({last}", max="+"))
    return GroupState(
        pending=int(info["pending"]),
        lag=int(lag),
        last_delivered_id=last,
        entries_read=None if info.get("entries-read") is None else int(info["entries-read"]),
    )


def drained(client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> bool:
    try:
        state = group_state(client, stream, group)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False
    return state.pending == 0 and state.lag == 0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll; return the seconds it took (the fault reports record it). ``timeout`` is a generous
    failure bound, never a speed claim."""
    return poll(predicate, what=what, within=timeout, every=interval).elapsed


def worker_env(url: str, record_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of a recording worker: test timings, overridable per field."""
    values: dict[str, Any] = {
        "redis_url": url,
        "stream": STREAM,
        "group": GROUP,
        "handler": HANDLER,
        "batch_size": 100,
        "block": "100ms",
        "claim_idle": "2s",
        "backoff_initial": "100ms",
        "backoff_max": "1s",
        "max_deliveries": 5,
        "metrics_port": 0,
        "shutdown_grace": "5s",
    }
    values.update(settings)
    env = render_env(values)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env[RECORD_DIR_ENV] = str(record_dir)
    return env


def storm_replicas(name: str, url: str, record_dir: Path, delay: float, **settings: Any) -> ReplicaSpec:
    """The crash storms' recording workers under the local runtime: restarted within 50-200 ms of a
    kill (as a kubelet restarts a container in its pod), each handler call taking ``delay`` seconds."""
    env = {
        **clean_environ(),
        **worker_env(url, record_dir, claim_idle="2s", max_deliveries=10, **settings),
        "CHAOS_HANDLER_DELAY": str(delay),
    }
    return ReplicaSpec.for_worker(
        name,
        env,
        inherit_env=False,
        restart_backoff=0.05,
        restart_backoff_max=0.2,
        backoff_reset_after=1.0,
        termination_grace=15.0,
    )


def clean_environ() -> dict[str, str]:
    """This process's environment without any STREAMPIPE_* variable (the suite's size included)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CRASH_ENV}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent PID) from /proc/<pid>/stat; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[1])


def sigkill_child(pid: int) -> bool:
    """SIGKILL ``pid`` if it is a live child of this process (see :func:`signal_child`)."""
    return signal_child(pid, signal.SIGKILL)


def signal_child(pid: int, signum: signal.Signals) -> bool:
    """Send ``signum`` to ``pid`` if it is a live child of this process (a worker that LocalRuntime
    started).

    The PID comes from a status snapshot, so the process may have exited and been reaped since. A pidfd
    pins the process the PID named when it was opened; the /proc check then proves that it is still our
    (live) child and not a stranger that reused the PID, and the signal goes through the pidfd.
    Returns whether a live worker got the signal.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        stat = _proc_stat(pid)
        if stat is None or stat[1] != os.getpid() or stat[0] in ("Z", "X"):
            return False
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


@dataclass
class WorkerProcesses:
    """Worker processes started one by one (``start``) and all stopped by PID at the end."""

    log_dir: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        environ = clean_environ()
        environ.update(env)
        environ[f"{ENV_PREFIX}CONSUMER"] = name
        log = (self.log_dir / f"{name}.stderr").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streampipe_worker"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )
        log.close()
        self.started.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self, grace: float = 15.0) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                    proc.terminate()
        for proc in self.started:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def worker_processes(log_dir: Path) -> Iterator[WorkerProcesses]:
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = WorkerProcesses(log_dir)
    try:
        yield workers
    finally:
        workers.stop_all()
