"""The renderer of docs/reliability.md's figures (the document shows what the last full run measured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.report import BEGIN, END, load, render, update
from tests.chaos.results import ChaosResult

pytestmark = pytest.mark.chaos


def result(item: int, case: str, lost: int = 0) -> ChaosResult:
    return ChaosResult(
        item=item,
        title="crash storm",
        case=case,
        size="full",
        parameters="3 workers | batch 100",
        entries=100_000,
        faults="212 SIGKILL",
        lost=lost,
        duplicates=3,
        recovery="1.2 s",
        figures={"kills": 212},
        not_covered="the server stays up",
        seconds=12.5,
        finished_at="2026-11-27T00:00:00+00:00",
        commit="abc1234",
    )


def test_results_are_rendered_between_the_markers(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    for case in ("valkey9", "redis7"):
        (tmp_path / "full" / f"01-{case}.json").write_text(result(1, case).model_dump_json())
    results = load("full", tmp_path)
    assert [r.case for r in results] == ["redis7", "valkey9"]
    document = tmp_path / "reliability.md"
    document.write_text(f"# Title\n\nprose\n\n{BEGIN}\nold\n{END}\n\nmore prose\n")
    update(document, render(results, "full", runtime=600))
    text = document.read_text()
    assert text.startswith("# Title\n\nprose\n\n")
    assert text.endswith(f"{END}\n\nmore prose\n")
    assert "old" not in text
    assert (
        "| 1 | crash storm | valkey9 | 3 workers \\| batch 100 | 100000 | 212 SIGKILL | 0 | 3 | 1.2 s |"
        in text
    )
    assert "`make chaos` took 10.0 min" in text
    assert text.count("the server stays up") == 1  # one line per test, not per case
    update(document, render(results, "full", runtime=600))
    assert document.read_text() == text  # idempotent
