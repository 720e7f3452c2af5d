"""The local process runtime: worker processes instead of pods.

``streampipe up`` runs each group's workers with it, and the Kubernetes tests' pod runner runs the
replicas of worker Deployments with it. A :class:`ReplicaSet` keeps ``n`` copies of one command
running, much like a Deployment keeps pods:

- each replica has a stable, unique name ``<set>-<ordinal>-<random>`` that survives restarts of the
  same replica (like a pod name across container restarts) and is exported as the worker's consumer
  name (``STREAMPIPE_CONSUMER``), so a restarted worker resumes its own pending entries;
- a replica that exits unasked is restarted after a backoff that doubles up to a cap and starts
  again from the beginning once a replica ran long enough (like CrashLoopBackOff);
- scaling down or stopping sends SIGTERM, then SIGKILL after the grace period;
- each replica's stdout and stderr go to ``<run_dir>/<replica>.log``, appended across restarts;
- ``ready`` means alive and, when the spec names a port variable, ``GET /readyz`` on that port
  answered 200 (each replica gets its own free loopback port in that variable).

Processes are only ever signalled through the process group of a child this runtime started (each
child leads a new session), never by name. A child's group is signalled while the child is still
unreaped, so the group ID cannot belong to anyone else; a replica's leftover grandchildren are
killed with it. ``close()`` (also registered with ``atexit``) stops everything.

Threads, not asyncio: one supervisor thread per runtime does all process work, and the public
methods only change the wanted state under a lock and return. That serves both users as they are -
the pod runner is plain synchronous code, ``streampipe up`` is asyncio plus a rich live view - with
no event loop to share (asyncio code may call ``scale`` directly; ``stop`` blocks, so call it via
``asyncio.to_thread``).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from streampipe_worker.settings import WorkerSettings


class ReplicaSpec(BaseModel):
    """What to run, and how, for every replica of one set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Set name")
    command: tuple[str, ...] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict, description="Added to (or replacing) the parent's")
    inherit_env: bool = Field(default=True, description="Start from this process's environment")
    cwd: Path | None = None
    consumer_env: str = Field(
        default=WorkerSettings.env_name("consumer"), description="Receives the replica's name"
    )
    port_env: str | None = Field(
        default=None, description="Receives a free loopback port per replica; readiness is probed there"
    )
    readiness_path: str = "/readyz"
    restart_backoff: float = Field(default=0.5, gt=0, description="First wait before a restart, seconds")
    restart_backoff_max: float = Field(default=30.0, gt=0)
    backoff_reset_after: float = Field(default=10.0, gt=0, description="A run this long resets the backoff")
    termination_grace: float = Field(default=10.0, ge=0, description="SIGTERM to SIGKILL on scale-down")

    @classmethod
    def for_worker(cls, name: str, env: Mapping[str, str], **options: object) -> ReplicaSpec:
        """``python -m streampipe_worker`` with the worker's env; readiness on its metrics port.

        The metrics server binds loopback only: that is where readiness is probed, and a laptop's
        worker has no business answering on the network.
        """
        values: dict[str, object] = {
            "name": name,
            "command": (sys.executable, "-m", "streampipe_worker"),
            "env": {**env, WorkerSettings.env_name("metrics_host"): "127.0.0.1"},
            "port_env": WorkerSettings.env_name("metrics_port"),
        }
        values.update(options)
        return cls.model_validate(values)


ReplicaPhase = Literal["running", "backoff", "terminating"]


class ReplicaStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    pid: int | None
    phase: ReplicaPhase
    ready: bool
    restarts: int
    last_exit_code: int | None
    port: int | None
    log_path: Path


class ReplicaSetStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    desired: int
    running: int = Field(description="Alive and not terminating")
    ready: int
    terminating: int
    restarts: int = Field(description="Restarts of the replicas that exist now")
    replicas: tuple[ReplicaStatus, ...]


EventKind = Literal["started", "exited", "stopped", "killed", "failed-to-start"]


class RuntimeEvent(BaseModel):
    """Something that happened to a replica (for logs and the live view)."""

    model_config = ConfigDict(frozen=True)

    at: float = Field(description="Unix seconds")
    replica_set: str
    replica: str
    kind: EventKind
    message: str


@dataclass
class _Replica:
    name: str
    ordinal: int
    spec: ReplicaSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    phase: ReplicaPhase = "backoff"
    ready: bool = False
    restarts: int = 0
    last_exit_code: int | None = None
    started_at: float = 0.0
    port: int | None = None
    backoff: float = 0.0
    restart_at: float = 0.0
    kill_at: float = 0.0
    next_probe: float = 0.0

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            name=self.name,
            pid=self.proc.pid if self.proc is not None else None,
            phase=self.phase,
            ready=self.ready and self.phase == "running",
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            port=self.port,
            log_path=self.log_path,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child's process group. Only called while the child is unreaped, so its PID (and
    group ID) cannot have been reused by another process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Leaves it unreaped (a zombie keeps its PID and group ID ours)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _probe(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class ReplicaSet:
    """``n`` replicas of one command (made by :meth:`LocalRuntime.replica_set`)."""

    def __init__(self, runtime: LocalRuntime, spec: ReplicaSpec) -> None:
        self._runtime = runtime
        self.spec = spec
        self.desired = 0
        self._replicas: list[_Replica] = []
        self._grace: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def scale(self, replicas: int, *, grace: float | None = None) -> None:
        """Want ``replicas`` running; returns at once (the supervisor starts and stops processes)."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        with self._runtime._lock:
            self.desired = replicas
            self._grace = grace
        self._runtime._wake.set()

    def update(self, spec: ReplicaSpec) -> None:
        """Run ``spec`` from now on; replicas started with another spec are replaced (stopped, then
        started anew under new names), like a Deployment's Recreate strategy."""
        if spec.name != self.spec.name:
            raise ValueError(f"a replica set keeps its name ({self.spec.name}), got {spec.name}")
        with self._runtime._lock:
            self.spec = spec
        self._runtime._wake.set()

    def status(self) -> ReplicaSetStatus:
        with self._runtime._lock:
            replicas = tuple(r.status() for r in self._replicas)
            return ReplicaSetStatus(
                name=self.name,
                desired=self.desired,
                running=sum(1 for r in replicas if r.phase == "running"),
                ready=sum(1 for r in replicas if r.ready),
                terminating=sum(1 for r in replicas if r.phase == "terminating"),
                restarts=sum(r.restarts for r in replicas),
                replicas=replicas,
            )

    def wait_ready(self, replicas: int | None = None, timeout: float = 30.0) -> bool:
        """Block until ``replicas`` (default: desired) are ready and nothing is terminating."""
        deadline = time.monotonic() + timeout
        with self._runtime._changed:
            while True:
                wanted = self.desired if replicas is None else replicas
                states = [r.status() for r in self._replicas]
                if sum(s.ready for s in states) >= wanted and not any(
                    s.phase == "terminating" for s in states
                ):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._runtime._changed.wait(min(left, 0.5))

    def stop(self, grace: float | None = None, timeout: float | None = None) -> bool:
        """Scale to 0 and block until every replica has exited (SIGKILL after ``grace``)."""
        grace = self.spec.termination_grace if grace is None else grace
        self.scale(0, grace=grace)
        deadline = time.monotonic() + (grace + 10.0 if timeout is None else timeout)
        with self._runtime._changed:
            while self._replicas:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._runtime._changed.wait(min(left, 0.5))
        return True

    # --- supervisor side (runtime lock held) ---------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        for replica in list(self._replicas):
            self._reap(replica, now)
        for replica in self._replicas:
            if replica.phase == "terminating" and replica.proc is not None and now >= replica.kill_at:
                _signal_group(replica.proc, signal.SIGKILL)
                replica.kill_at = float("inf")
                self._runtime._event(self, replica, "killed", "did not exit within the grace period: SIGKILL")
        active = [r for r in self._replicas if r.phase != "terminating"]
        for replica in active:
            if replica.spec != self.spec:
                self._terminate(replica, now)
        active = [r for r in active if r.spec == self.spec]
        if len(active) > self.desired:
            # Replicas that are not running go first, then those not ready, then the newest.
            extra = sorted(active, key=lambda r: (r.phase == "running", r.ready, -r.ordinal))
            for replica in extra[: len(active) - self.desired]:
                self._terminate(replica, now)
            active = [r for r in active if r.phase != "terminating"]
        used = {r.ordinal for r in active}
        ordinal = 0
        while len(active) < self.desired:
            while ordinal in used:
                ordinal += 1
            replica = self._new_replica(ordinal)
            used.add(ordinal)
            active.append(replica)
            self._replicas.append(replica)
        for replica in active:
            if replica.phase == "backoff" and now >= replica.restart_at:
                self._start(replica, now)

    def _new_replica(self, ordinal: int) -> _Replica:
        name = f"{self.name}-{ordinal}-{secrets.token_hex(3)}"
        return _Replica(
            name=name,
            ordinal=ordinal,
            spec=self.spec,
            log_path=self._runtime.run_dir / f"{name}.log",
            backoff=self.spec.restart_backoff,
        )

    def _start(self, replica: _Replica, now: float) -> None:
        spec = replica.spec
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(spec.env)
        env[spec.consumer_env] = replica.name
        replica.port = None
        if spec.port_env is not None:
            replica.port = _free_port()
            env[spec.port_env] = str(replica.port)
        if replica.log is None:
            replica.log = replica.log_path.open("ab", buffering=0)
        stamp = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds")
        attempt = f" (restart {replica.restarts})" if replica.restarts else ""
        replica.log.write(
            f"--- {stamp} starting {replica.name}{attempt}: {' '.join(spec.command)}\n".encode()
        )
        try:
            replica.proc = subprocess.Popen(
                spec.command,
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=replica.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signalled as a whole, never by name
                close_fds=True,
            )
        except OSError as exc:
            replica.log.write(f"--- cannot start: {exc}\n".encode())
            self._crashed(replica, now, None, f"cannot start {spec.command[0]}: {exc}", "failed-to-start")
            return
        replica.phase = "running"
        replica.ready = False
        replica.started_at = now
        replica.next_probe = now
        self._runtime._event(self, replica, "started", f"pid {replica.proc.pid}")

    def _terminate(self, replica: _Replica, now: float) -> None:
        grace = self.spec.termination_grace if self._grace is None else self._grace
        if replica.proc is None:
            self._forget(replica)
            return
        replica.phase = "terminating"
        replica.ready = False
        replica.kill_at = now + grace
        _signal_group(replica.proc, signal.SIGTERM)

    def _reap(self, replica: _Replica, now: float) -> None:
        proc = replica.proc
        if proc is None or not _exited(proc):
            return
        # The leader is a zombie: its group ID is still ours. Take leftover grandchildren with it.
        _signal_group(proc, signal.SIGKILL)
        code = proc.wait()
        replica.proc = None
        replica.last_exit_code = code
        if replica.phase == "terminating":
            self._runtime._event(self, replica, "stopped", f"exit code {code}")
            self._forget(replica)
            return
        self._crashed(replica, now, code, f"exited with code {code}", "exited")

    def _crashed(self, replica: _Replica, now: float, code: int | None, what: str, kind: EventKind) -> None:
        if replica.phase == "running" and now - replica.started_at >= replica.spec.backoff_reset_after:
            replica.backoff = replica.spec.restart_backoff
        wait = replica.backoff
        replica.backoff = min(replica.backoff * 2, replica.spec.restart_backoff_max)
        replica.phase = "backoff"
        replica.ready = False
        replica.last_exit_code = code
        replica.restart_at = now + wait
        replica.restarts += 1
        self._runtime._event(self, replica, kind, f"{what}; restarting in {wait:g}s (see {replica.log_path})")

    def _forget(self, replica: _Replica) -> None:
        if replica.log is not None:
            replica.log.close()
            replica.log = None
        self._replicas.remove(replica)


@dataclass
class _ProbeTarget:
    replica: _Replica
    port: int
    path: str
    result: bool = field(default=False)


class LocalRuntime:
    """Owns a run directory, a supervisor thread and any number of replica sets.

    Use as a context manager, or call :meth:`close`; it is also closed at interpreter exit.
    """

    def __init__(self, run_dir: Path, *, tick: float = 0.05, probe_interval: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tick = tick
        self.probe_interval = probe_interval
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._sets: dict[str, ReplicaSet] = {}
        self._events: deque[RuntimeEvent] = deque(maxlen=1000)
        self._closing = False
        self._thread = threading.Thread(target=self._supervise, name="streampipe-local-runtime", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replica_set(self, spec: ReplicaSpec) -> ReplicaSet:
        """The set named ``spec.name``: created with 0 replicas, or updated to ``spec`` if it exists."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the local runtime is closed")
            existing = self._sets.get(spec.name)
            if existing is not None:
                existing.update(spec)
                return existing
            created = ReplicaSet(self, spec)
            self._sets[spec.name] = created
            return created

    def get(self, name: str) -> ReplicaSet | None:
        with self._lock:
            return self._sets.get(name)

    @property
    def replica_sets(self) -> tuple[ReplicaSet, ...]:
        with self._lock:
            return tuple(self._sets.values())

    def remove(self, name: str, grace: float | None = None) -> None:
        """Stop a set's replicas (blocking) and forget it."""
        replica_set = self.get(name)
        if replica_set is None:
            return
        replica_set.stop(grace)
        with self._lock:
            self._sets.pop(name, None)

    def drain_events(self) -> list[RuntimeEvent]:
        """Events since the last call, oldest first (the last 1000 are kept)."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every replica, SIGKILL after ``grace``, wait for all, stop the supervisor."""
        with self._lock:
            if self._closing:
                return
            sets = list(self._sets.values())
            for replica_set in sets:
                replica_set.desired = 0
                replica_set._grace = grace
        self._wake.set()
        for replica_set in sets:
            replica_set.stop(grace)
        with self._lock:
            self._closing = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        atexit.unregister(self.close)

    # --- supervisor ----------------------------------------------------------------------------------

    def _event(self, replica_set: ReplicaSet, replica: _Replica, kind: EventKind, message: str) -> None:
        self._events.append(
            RuntimeEvent(
                at=time.time(), replica_set=replica_set.name, replica=replica.name, kind=kind, message=message
            )
        )

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                now = time.monotonic()
                for replica_set in list(self._sets.values()):
                    replica_set._reconcile(now)
                probes = self._due_probes(now)
                self._changed.notify_all()
            if probes:
                # HTTP probes run without the lock: a slow replica must not stall scale() callers.
                for target in probes:
                    target.result = _probe(target.port, target.path)
                with self._lock:
                    for target in probes:
                        if target.replica.phase == "running" and target.replica.port == target.port:
                            target.replica.ready = target.result
                    self._changed.notify_all()
            self._wake.wait(self.tick)
            self._wake.clear()

    def _due_probes(self, now: float) -> Sequence[_ProbeTarget]:
        targets = []
        for replica_set in self._sets.values():
            for replica in replica_set._replicas:
                if replica.phase != "running":
                    continue
                if replica.port is None:
                    replica.ready = True  # no endpoint to ask: alive is ready
                elif now >= replica.next_probe:
                    replica.next_probe = now + self.probe_interval
                    targets.append(_ProbeTarget(replica, replica.port, replica.spec.readiness_path))
        return targets
