"""How big the fault suite runs: the one place that reads ``STREAMPIPE_CHAOS_SIZE``.

``small`` (the default) is what ``make test`` runs: every fault is injected, on smaller volumes and
shorter stalls, within a few minutes on 2 cores. ``full`` is ``make chaos``: the volumes and stall lengths
of issue #9, whose figures docs/reliability.md publishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

SIZE_ENV = "STREAMPIPE_CHAOS_SIZE"
Size = Literal["small", "full"]


@dataclass(frozen=True)
class ChaosSizes:
    """Volumes and durations of each fault test."""

    name: Size
    # Server kinds for the heavy tests (the light ones always run on both).
    heavy_kinds: tuple[str, ...]
    # 1. crash storm
    storm_entries: int
    storm_workers: int
    storm_kill_interval: float
    storm_batch: int
    storm_seconds: float  # production is spread over this long
    # 3. server SIGKILL + restart
    server_kill_entries: int
    server_kills: int
    # 4. SIGSTOP/SIGCONT
    stall_seconds: tuple[float, ...]
    stall_entries: int
    # 5. network faults through the proxy
    network_entries: int
    network_latency: float
    network_blackhole_seconds: float
    network_resets: int
    # 6. Sentinel failover
    failover_entries: int
    # 12. Cluster failover under a partitioned pipeline
    cluster_failover_entries: int
    # 7. trim safety under live consumers
    trim_examples: int
    trim_entries: int
    # 8. consumer protocol model
    model_examples: int
    model_steps: int
    # 10. fuzzing
    spec_examples: int
    # Entries per Hypothesis run. Keep it near 150: a longer list overruns Hypothesis' buffer, and
    # what still fits are the simplest entries only (at 500, every entry was {"type": ""}).
    payload_examples: int
    payload_runs: int


SMALL = ChaosSizes(
    name="small",
    heavy_kinds=("valkey9",),
    storm_entries=20_000,
    storm_workers=3,
    storm_kill_interval=0.1,
    storm_batch=100,
    storm_seconds=8.0,
    server_kill_entries=6_000,
    server_kills=2,
    stall_seconds=(5.0,),
    stall_entries=3_000,
    network_entries=3_000,
    network_latency=0.02,
    network_blackhole_seconds=3.0,
    network_resets=4,
    failover_entries=2_000,
    cluster_failover_entries=6_000,
    trim_examples=2,
    trim_entries=3_000,
    model_examples=8,
    model_steps=20,
    spec_examples=25,
    payload_examples=150,
    payload_runs=4,
)

FULL = ChaosSizes(
    name="full",
    heavy_kinds=("valkey9", "redis7"),
    storm_entries=100_000,
    storm_workers=3,
    storm_kill_interval=0.1,
    storm_batch=100,
    storm_seconds=30.0,
    server_kill_entries=60_000,
    server_kills=5,
    stall_seconds=(5.0, 30.0),
    stall_entries=20_000,
    network_entries=30_000,
    network_latency=0.05,
    network_blackhole_seconds=15.0,
    network_resets=25,
    failover_entries=20_000,
    cluster_failover_entries=30_000,
    trim_examples=8,
    trim_entries=30_000,
    model_examples=60,
    model_steps=40,
    spec_examples=300,
    payload_examples=150,
    payload_runs=40,
)


def _read_size() -> ChaosSizes:
    value = os.environ.get(SIZE_ENV, "small").strip().lower() or "small"
    if value not in ("small", "full"):
        raise RuntimeError(f"{SIZE_ENV}={value!r}: use small (make test) or full (make chaos)")
    return FULL if value == "full" else SMALL


SIZES = _read_size()
