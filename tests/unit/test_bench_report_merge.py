"""bench/report.py with more than one results file: a later run's benchmarks replace the main run's,
and the report knows which run each came from (so no figure is edited into docs/benchmarks.md by
hand). Also section 8's PerKey rows. Uses the results files in bench/results/; no timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = str(ROOT / "bench")
sys.path.insert(0, BENCH)
try:
    from partition_cost import PartitionCost, lowest
    from report import merge
    from report_partitions import cost_section, projection_lines
    from results_model import Results
finally:
    sys.path.remove(BENCH)

MAIN = ROOT / "bench" / "results" / "2026-12-04.json"
PARTS = ROOT / "bench" / "results" / "2026-12-05-partitions.json"


def load(path: Path) -> Results:
    return Results.model_validate_json(path.read_text(encoding="utf-8"))


def test_a_later_runs_benchmarks_replace_the_main_runs_and_are_recorded_as_its_supplement() -> None:
    results, extra = load(MAIN), load(PARTS)
    kept = results.partitions
    merge(results, extra, PARTS)
    assert results.rebalance
    assert results.rebalance == extra.rebalance
    assert results.partition_latency
    assert results.partition_latency == extra.partition_latency
    assert results.partitions == kept  # the extra run did not measure it: the main run's stays
    supplement = results.supplement_of("rebalance")
    assert supplement is not None
    assert (supplement.source, supplement.command, supplement.started_at) == (
        "bench/results/2026-12-05-partitions.json",
        extra.command,
        extra.started_at,
    )
    assert supplement.fields == ["partition_latency", "rebalance"]
    assert results.supplement_of("partitions") is None
    assert [sample.label for sample in supplement.load] == [sample.label for sample in extra.load]


def test_a_second_supplement_of_the_same_benchmarks_takes_them_from_the_first() -> None:
    results = load(MAIN)
    merge(results, load(PARTS), PARTS)
    merge(results, load(PARTS), ROOT / "bench" / "results" / "again.json")
    assert [x.source for x in results.supplements] == ["bench/results/again.json"]


def test_a_file_with_no_benchmark_is_refused() -> None:
    results, empty = load(MAIN), load(MAIN)
    for name in ("throughput", "scale_out", "memory", "operator", "profile"):
        setattr(empty, name, None)
    for name in ("latency", "producer", "partitions", "partitions_idle", "server_paths"):
        setattr(empty, name, [])
    with pytest.raises(ValueError, match="holds no benchmark"):
        merge(results, empty, ROOT / "bench" / "results" / "empty.json")


def cost(
    partitions: int, worker: float, server: float, ordering: str = "None", round_no: int = 1
) -> PartitionCost:
    return PartitionCost(round_no, partitions, 1000, 1e5, worker, server, ordering)


SAMPLES = [
    cost(0, 3.0, 2.0),
    cost(16, 3.5, 2.5),
    cost(16, 12.0, 6.0, "PerKey"),
    cost(16, 10.0, 5.0, "PerKey", round_no=2),
]


def table_rows(lines: list[str], first_header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with ``first_header``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_lowest_cost_is_taken_per_layout_and_ordering() -> None:
    assert lowest(SAMPLES, 16) == SAMPLES[1]
    assert lowest(SAMPLES, 16, "PerKey") == SAMPLES[3]
    assert lowest(SAMPLES, 4, "PerKey") is None


def test_section_8_shows_a_perkey_row_against_one_stream() -> None:
    results = load(MAIN)
    results.partitions = SAMPLES
    rows = table_rows(cost_section(results), "layout")
    assert [row[0] for row in rows] == ["one stream", "16 partitions", "16 partitions, PerKey"]
    assert rows[2][2:] == ["10.00", "5.00", "15.00", "3.00x"]  # round 2: the lower total


def test_the_projection_adds_perkey_columns_from_the_perkey_cost() -> None:
    results = load(MAIN)
    results.partitions = SAMPLES
    rows = table_rows(projection_lines(results), "target entries/s")
    assert len(rows[0]) == 7
    # 1,000K/s at 10 µs a worker entry: 10 worker cores; the server's 5 µs: 200K/s a core, 140K/s
    # kept at 70 %, so 8 primaries; partitions: the multiple of 8 at least 10.
    million = next(row for row in rows if row[0] == "1,000K")
    assert million[4:] == ["8", "10", "16"]


def test_without_perkey_samples_the_projection_has_four_columns() -> None:
    results = load(MAIN)
    rows = table_rows(projection_lines(results), "target entries/s")
    assert {len(row) for row in rows} == {4}
