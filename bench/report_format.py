"""Markdown pieces the report's sections share (bench/report.py, bench/report_partitions.py)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence


def when_text(unix_seconds: float) -> str:
    """When a run started, as the report shows it: ``2026-12-05 03:52`` (local time)."""
    return datetime.datetime.fromtimestamp(unix_seconds).strftime("%Y-%m-%d %H:%M")


def rate_text(value: float) -> str:
    """Entries per second for a table cell: 2,464 / 54.6K / 334K."""
    if value >= 100_000:
        return f"{value / 1000:,.0f}K"
    if value >= 10_000:
        return f"{value / 1000:,.1f}K"
    return f"{value:,.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table and the blank line after it; ``align`` is one of l, r, c per column
    (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]
