"""The machine a run measured on, and its load: the context every absolute figure needs."""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import platform
import time

from harness import CLOCK_TICKS, cpu_seconds, progress
from results_model import LoadSample, Machine

PACKAGES = ("streampipe", "redis", "hiredis", "faststream", "pydantic", "kopf", "kubernetes")


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def hypervisor() -> str | None:
    """KVM, Xen, ... when /proc/cpuinfo says the CPU is virtual (figures from a VM vary more)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        if " hypervisor" in info.read():
            return "yes"
    return None


def describe(servers: dict[str, str]) -> Machine:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return Machine(
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        memory_gib=memory_gib(),
        virtualized=hypervisor() is not None,
        kernel=platform.release(),
        python=platform.python_version(),
        packages=versions,
        servers=servers,
    )


def load_now(label: str, live_pids: tuple[int, ...] = ()) -> LoadSample:
    """Load averages plus CPU counters, so the report can tell this run's CPU from other work's.

    The load average counts this run's own processes too (4 workers and a server make 5); the CPU
    counters do not mix them up: other work = machine busy time - this run's time, between samples.
    Children are counted once reaped (every benchmark stops its processes before the next sample);
    ``live_pids`` are the long-lived ones (the server).
    """
    one, five, fifteen = os.getloadavg()
    busy = steal = 0.0
    with contextlib.suppress(OSError), open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal_ticks = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal_ticks) / CLOCK_TICKS
        steal = steal_ticks / CLOCK_TICKS
    mine = os.times()
    ours = mine.user + mine.system + mine.children_user + mine.children_system
    for pid in live_pids:
        with contextlib.suppress(OSError):
            ours += cpu_seconds(pid)
    return LoadSample(
        at=time.time(),
        label=label,
        load1=one,
        load5=five,
        load15=fifteen,
        busy_s=busy,
        steal_s=steal,
        ours_s=ours,
    )


def other_work(samples: list[LoadSample]) -> list[tuple[str, float]]:
    """(step, cores busy with work other than this run) between consecutive samples."""
    found = []
    for before, after in itertools.pairwise(samples):
        elapsed = after.at - before.at
        if elapsed <= 0 or not after.busy_s:
            continue
        others = (after.busy_s - before.busy_s) - (after.ours_s - before.ours_s)
        found.append((before.label.removeprefix("before "), max(others, 0.0) / elapsed))
    return found


def wait_for_quiet(threshold: float, max_wait: float, every: float = 60.0) -> float:
    """Wait (up to ``max_wait`` seconds) until the 1-minute load average is at most ``threshold``.

    Returns the seconds waited. Other work on the machine (test suites) skews every figure, the
    same-run ratios least; the report states the load either way.
    """
    waited = 0.0
    while True:
        load = os.getloadavg()[0]
        if load <= threshold or waited >= max_wait:
            if load > threshold:
                progress(
                    f"load average {load:.2f} still above {threshold} after {waited:.0f}s: measuring anyway"
                )
            return waited
        pause = min(every, max_wait - waited)
        progress(f"load average {load:.2f} > {threshold}: waiting {pause:.0f}s (waited {waited:.0f}s so far)")
        time.sleep(pause)
        waited += pause
