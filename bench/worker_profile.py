"""Where a busy worker's CPU goes: py-spy samples a real ``streampipe-worker`` at full speed.

py-spy attaches from outside (``--nonblocking``: it never pauses the worker) and writes collapsed
stacks; they are folded here into self time per function and inclusive time per worker function.
This run is apart from the throughput figures, since the sampler takes CPU on a 2-core machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import BenchServer
from worker_throughput import STREAM, Sample, measure

FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


@dataclass
class Profile:
    """Shares of the sampled worker's busy time."""

    batch: int
    samples: int
    rate_while_sampled: float
    self_time: list[tuple[str, float]] = field(default_factory=list)  # (function, share) top functions
    worker_inclusive: list[tuple[str, float]] = field(default_factory=list)  # streampipe_worker functions


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def _name(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    module = match["file"].removesuffix(".py").replace("/", ".")
    return f"{module}:{match['function']}"


def fold(raw: str, top: int = 12) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Collapsed stacks -> (samples, top self-time functions, worker functions by inclusive time)."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(frame) for frame in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        total += count
        leaf[frames[-1]] += count
        for name in set(frames):
            if name.startswith("streampipe_worker."):
                inclusive[name] += count
    if not total:
        return 0, [], []
    return (
        total,
        [(name, count / total) for name, count in leaf.most_common(top)],
        [(name, count / total) for name, count in inclusive.most_common(top)],
    )


def profile(server: BenchServer | None, url: str, batch: int = 1000, seconds: float = 3.0) -> Profile | None:
    """A throughput run of one worker with py-spy attached; None when py-spy is not installed."""
    binary = py_spy()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="streampipe-bench-profile-") as workdir:
        output = Path(workdir) / "stacks.txt"

        def attach(pid: int, window: float) -> None:
            # Runs for the window, so the measurement covers exactly the sampled time.
            duration = str(max(1, round(window)))
            command = [binary, "record", "--pid", str(pid), "--duration", duration, "--rate", "250"]
            command += ["--format", "raw", "--output", str(output), "--nonblocking", "--threads"]
            subprocess.run(command, check=True, capture_output=True, timeout=window + 60)

        sample: Sample = measure("streampipe", batch, server, url, STREAM, window=seconds, profile=attach)
        samples, self_time, inclusive = fold(output.read_text())
    return Profile(
        batch=batch,
        samples=samples,
        rate_while_sampled=sample.rate,
        self_time=self_time,
        worker_inclusive=inclusive,
    )
