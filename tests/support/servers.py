"""Real Valkey / Redis server processes on loopback for tests.

Each server binds 127.0.0.1 on a free port, keeps its files in a temp dir, and is stopped by PID by
whoever started it. Nothing here kills by process name. Fault tests use ``kill``/``pause``/``resume``/
``restart`` on the very process they started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
TOOL_BIN = ROOT / ".cache" / "bin"

# Test ids of the three real servers every Redis-touching test runs on (redis8: a test server only).
SERVER_KINDS = {"valkey9": "valkey-server", "redis7": "redis-server", "redis8": "redis8-server"}
SERVER_IDS = tuple(SERVER_KINDS)


class ServerStartError(RuntimeError):
    pass


def find_binary(name: str) -> Path:
    """The binary from .cache/bin (make tools), else from PATH; a clear error when neither has it."""
    candidate = TOOL_BIN / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ServerStartError(f"{name} not found in {TOOL_BIN} or on PATH; run `make tools` (or `make test`)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One running redis-server / valkey-server / redis-sentinel process that this test run owns."""

    binary: Path
    workdir: Path
    port: int
    extra_args: Sequence[str] = ()
    password: str | None = None
    tls: bool = False
    # The address it listens on; a cluster test binds the node's address on the pod network.
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.workdir / "server.log"

    def command(self) -> list[str]:
        args = [
            str(self.binary),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--logfile", str(self.logfile),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        # Later arguments win, so callers can override the defaults above (e.g. --appendonly yes).
        return [*args, *self.extra_args]

    def start(self, timeout: float = 10.0) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir
        )
        self.wait_ready(timeout)
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        options: dict[str, object] = {"decode_responses": True, "socket_timeout": 5}
        options.update(kwargs)
        return redis.Redis.from_url(self.url, **options)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(self._failure(f"exited with code {self.proc.returncode}"))
            if self.tls:
                # TLS servers are probed by the caller's own client; a TCP accept is enough here.
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
                    return
            else:
                try:
                    with self.client(socket_timeout=0.5) as probe:
                        if probe.ping():
                            # Loading an AOF answers LOADING; wait until the data set is there.
                            return
                except redis.BusyLoadingError as exc:
                    last_error = exc
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    last_error = exc
            time.sleep(0.02)
        raise ServerStartError(self._failure(f"not ready after {timeout}s ({last_error!r})"))

    def _failure(self, what: str) -> str:
        stderr = b""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read() or b""
        log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        return f"{self.binary.name} on port {self.port} {what}\n{stderr.decode(errors='replace')}\n{log}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; a paused server is resumed first so it can exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        finally:
            if self.proc.stderr is not None:
                self.proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: a crash. Note that kill -9 does not lose data the kernel already has (no fsync test)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout: float = 20.0) -> ServerProcess:
        """Start again on the same port and directory (an AOF there is loaded)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start(timeout)


def start_server(
    kind: str,
    workdir: Path,
    extra_args: Sequence[str] = (),
    *,
    port: int | None = None,
    password: str | None = None,
    tls: bool = False,
    host: str = "127.0.0.1",
    attempts: int = 3,
) -> ServerProcess:
    """Start a server of ``kind`` (``valkey9`` / ``redis7`` or a binary name) on a free loopback port."""
    binary = find_binary(SERVER_KINDS.get(kind, kind))
    last: ServerStartError | None = None
    for _ in range(attempts):
        server = ServerProcess(
            binary=binary,
            workdir=workdir,
            port=port or free_port(),
            extra_args=tuple(extra_args),
            password=password,
            tls=tls,
            host=host,
        )
        try:
            return server.start()
        except ServerStartError as exc:
            # Another process may have taken the port between free_port() and bind: try another.
            server.stop()
            last = exc
            if port is not None:
                break
    assert last is not None
    raise last


@contextlib.contextmanager
def running_server(
    kind: str, workdir: Path, extra_args: Sequence[str] = (), **kwargs: object
) -> Iterator[ServerProcess]:
    server = start_server(kind, workdir, extra_args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
