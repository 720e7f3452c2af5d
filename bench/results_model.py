"""The shape of ``bench/results/<date>.json``: written by run.py, read back (validated) by report.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from latency import Latency
from memory_footprint import ServerMemory
from operator_scaling import OperatorResult
from partition_cost import PartitionCost, PartitionIdle
from producer_throughput import ProducerRates
from rebalance_pause import RebalancePause
from scale_out import Ceiling
from server_paths import PathCost
from worker_profile import Profile
from worker_throughput import Sample

SCHEMA_VERSION = 1


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Machine(Model):
    cpu_model: str
    cores: int
    usable_cores: int
    memory_gib: float
    virtualized: bool
    kernel: str
    python: str
    packages: dict[str, str]
    servers: dict[str, str] = Field(description="kind -> 'Valkey 9.1.2'")


class LoadSample(Model):
    """The machine's load at one moment; the CPU counters are cumulative seconds since boot / start."""

    at: float
    label: str
    load1: float
    load5: float
    load15: float
    busy_s: float = 0.0  # all CPUs, /proc/stat (user+nice+system+irq+softirq+steal)
    steal_s: float = 0.0  # taken by the hypervisor from this VM
    ours_s: float = 0.0  # this run: itself, its reaped children and its live servers


class Settings(Model):
    """What the run was asked to do (sizes shrink with --quick)."""

    quick: bool
    rounds: int
    window_s: float
    stream_entries: int
    batch_sizes: list[int]
    latency_rates: list[int]
    latency_seconds: float
    pipelines: int
    only: list[str]
    pipeline_sizes: list[int] = []  # the operator's growth points (pipelines is the largest)


class Throughput(Model):
    server: str
    samples: list[Sample]


class ScaleOut(Model):
    server: str
    batch: int
    samples: list[Sample]
    ceilings: list[Ceiling]


class Memory(Model):
    worker_idle_rss_mb: float
    servers: list[ServerMemory]


class Ratio(Model):
    """One same-run comparison: ours / theirs (higher is better unless ``lower_is_better``)."""

    name: str
    ours: float
    baseline: float
    ratio: float
    unit: str
    lower_is_better: bool = False


class Goal(Model):
    name: str
    target: str
    measured: float | None
    unit: str
    met: bool | None  # None: not measured in this run
    margin: float | None = None  # how far past the target, as a fraction of it (negative: missed)
    shortfall: str = ""


class Supplement(Model):
    """Benchmarks of another run that a report shows in place of this run's (``bench/report.py MAIN
    EXTRA...``): each section they fill says when and how they were measured."""

    source: str  # the results file, relative to the repository
    command: str
    started_at: float
    fields: list[str]  # the Results fields taken from it
    load: list[LoadSample] = Field(default_factory=list)  # its samples, for the "load before" lines


class Results(Model):
    schema_version: int = SCHEMA_VERSION
    date: str
    started_at: float
    finished_at: float
    command: str
    settings: Settings
    machine: Machine
    load: list[LoadSample]
    waited_for_quiet_s: float
    throughput: Throughput | None = None
    scale_out: ScaleOut | None = None
    latency: list[Latency] = Field(default_factory=list)
    producer: list[ProducerRates] = Field(default_factory=list)
    partitions: list[PartitionCost] = Field(default_factory=list, description="one worker over P partitions")
    partitions_idle: list[PartitionIdle] = Field(default_factory=list, description="the same at rest")
    partition_latency: list[Latency] = Field(
        default_factory=list, description="one worker, one offered rate: one stream against P partitions"
    )
    rebalance: list[RebalancePause] = Field(
        default_factory=list, description="PerKey: a worker joins, leaves, is killed; the partitions' pause"
    )
    memory: Memory | None = None
    operator: OperatorResult | None = None
    profile: Profile | None = None
    server_paths: list[PathCost] = Field(default_factory=list, description="Redis 8.2 commands vs fallbacks")
    skipped: dict[str, str] = Field(default_factory=dict, description="benchmark -> why it did not run")
    failed: dict[str, str] = Field(default_factory=dict, description="benchmark -> the error that stopped it")
    ratios: list[Ratio] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    supplements: list[Supplement] = Field(
        default_factory=list, description="set by a report that merges other runs (never by a run)"
    )

    def supplement_of(self, field: str) -> Supplement | None:
        """The run ``field``'s figures came from, if not this one."""
        return next((extra for extra in self.supplements if field in extra.fields), None)
