"""The benchmark suite itself runs (``bench/run.py --quick``): real servers, real workers, a report.

These check that the suite works and writes a well-formed result and report; they assert nothing
about speed (figures from a busy test machine mean nothing, and performance lives in bench/).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"


def quick_run(tmp_path: Path, only: str) -> tuple[Any, str]:
    command = [sys.executable, str(RUN), "--quick", "--only", only]
    command += ["--results-dir", str(tmp_path / "results"), "--docs", str(tmp_path / "benchmarks.md")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    written = list((tmp_path / "results").glob("*-quick.json"))
    assert len(written) == 1, written
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from results_model import Results
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = Results.model_validate_json(written[0].read_text())
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
    return results, (tmp_path / "benchmarks.md").read_text()


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_quick_suite_writes_results_and_report(tmp_path: Path) -> None:
    results, report = quick_run(
        tmp_path,
        "memory,throughput,scale_out,latency,producer,partitions,partition_latency,rebalance,profile",
    )
    assert results.settings.quick

    samples = results.throughput.samples
    assert {s.consumer for s in samples} == {
        "streampipe", "tutorial_loop", "faststream_batch", "faststream_single", "bare_loop",
        "streampipe_json", "bare_loop_json",
        "bare_async_loop", "streampipe_async", "streampipe_thread", "streampipe_gc_default",
    }  # fmt: skip
    assert all(s.rate > 0 and s.entries > 0 for s in samples)
    assert results.scale_out.ceilings[0].rate > 0
    assert {lat.consumer for lat in results.latency} == {"streampipe", "bare_loop", "streampipe_gc_default"}
    assert all(lat.samples > 0 for lat in results.latency)
    assert results.producer
    assert {s.partitions for s in results.partitions} == {0, 4}
    assert all(s.rate > 0 and s.worker_cpu_us > 0 and s.server_cpu_us > 0 for s in results.partitions)
    [at_rest] = results.partitions_idle
    assert at_rest.partitions == 4
    assert at_rest.connections >= 4  # one reading connection per partition at least
    assert {(s.partitions, s.rate) for s in results.partition_latency} == {(0, 10_000), (4, 10_000)}
    assert all(s.samples > 0 for s in results.partition_latency)
    assert [e.event for e in results.rebalance] == ["join", "leave", "kill"]
    # Each event moves partitions between workers (4 partitions, 2 workers, then 3, 2, 1).
    assert all(e.moved > 0 and e.pause_s > 0 and e.samples > 0 for e in results.rebalance)
    assert results.memory is not None
    assert results.profile is not None
    assert results.profile.samples > 0
    names = {r.name for r in results.ratios}
    assert "worker vs the tutorial loop" in names
    assert "send_many vs redis-benchmark -P 1000" in names
    goals = {g.name: g for g in results.goals}
    assert goals["Worker vs the tutorial loop"].measured is not None
    assert goals["Worker vs bare loop, JSON handler, worst batch size"].measured is not None
    assert goals["Partitioned vs one stream, CPU per entry, worst count"].measured is not None
    assert goals["1000 StreamPipelines Ready"].met is None  # not measured in this run

    for heading in (
        "## Ratios against same-run baselines",
        "## Goals",
        "## 1. Worker throughput",
        "## 8. Partitions",
        "## 9. Partitions: end-to-end latency",
        "## 10. PerKey rebalance",
        "## Machine",
    ):
        assert heading in report
    assert "Quick mode" in report


@pytest.mark.k8s
@pytest.mark.timeout(300)
def test_quick_operator_benchmark(tmp_path: Path) -> None:
    results, report = quick_run(tmp_path, "operator")
    operator = results.operator
    assert operator is not None
    assert len(operator.reaction_s) == 2
    assert all(r > 0 for r in operator.reaction_s)
    assert operator.pipelines == 3
    assert operator.all_ready_s is not None
    assert operator.ready_curve[-1][1] == 3
    assert operator.idle_rss_mb > 0
    assert [point.pipelines for point in operator.growth] == [2, 3]
    for point in operator.growth:
        assert point.all_ready_s > 0
        assert point.idle_rss_mb > 0
        # Each fresh operator holds at least one connection to the server while its pipelines idle.
        assert point.redis_connections >= 1
        assert point.api_writes_per_min >= 0
    assert (tmp_path / "benchmarks-operator.png").stat().st_size > 0
    assert "## 5. Operator" in report
    assert "### How the operator grows with the number of pipelines" in report


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_compare_runs_both_revisions_and_prints_the_table() -> None:
    """``bench/compare.py``: the worker at a git revision and the working tree, in one run."""
    command = [
        sys.executable, str(ROOT / "bench" / "compare.py"), "--base", "HEAD", "--max-load", "1000",
        "--only", "throughput,producer,soak", "--batches", "100", "--rounds", "1", "--window", "0.3",
        "--stream-entries", "400000", "--producer-events", "2000", "--soak-entries", "20000",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]
    assert names == [
        "throughput, batch 100",
        "worker CPU per entry, batch 100",
        "Producer.send_many, 2,000 example events",
        "soak, 20,000 entries: rate",
        "soak, 20,000 entries: RSS after 0.5 s",
        "soak, 20,000 entries: RSS peak",
        "soak, 20,000 entries: RSS at the end",
    ]
    assert all("nan" not in row for row in rows)  # both revisions measured every figure
