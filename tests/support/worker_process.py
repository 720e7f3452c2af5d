"""Bare ``python -m streampipe_worker`` processes (no operator) for tests on a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WorkerProcesses:
    """Starts worker processes on one stream and group, with the handler module ``module`` (its source
    ``handler_source``, written into ``workdir``); each writes to ``workdir/<name>.out`` through
    ``TEST_OUT``. ``stop_all`` kills (by PID) whatever is still running."""

    redis_url: str
    workdir: Path
    stream: str
    group: str
    module: str
    handler_source: str
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.workdir / f"{self.module}.py").write_text(self.handler_source)

    def start(self, name: str, **env: str) -> subprocess.Popen[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPIPE_")}
        environ.update(
            {
                "PYTHONPATH": os.pathsep.join([str(self.workdir), os.environ.get("PYTHONPATH", "")]),
                "STREAMPIPE_REDIS_URL": self.redis_url,
                "STREAMPIPE_STREAM": self.stream,
                "STREAMPIPE_GROUP": self.group,
                "STREAMPIPE_CONSUMER": name,
                "STREAMPIPE_HANDLER": f"{self.module}:handle",
                "STREAMPIPE_BLOCK": "100ms",
                "STREAMPIPE_METRICS_PORT": "0",
                "TEST_OUT": str(self.workdir / f"{name}.out"),
                **env,
            }
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "streampipe_worker"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
