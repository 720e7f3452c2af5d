"""Figures of a fault-suite run: each test case writes one JSON file; ``report.py`` renders the table.

Files go to ``.cache/chaos-results/<size>/<item>-<case>.json`` (one directory per size, so a ``make
test`` run never overwrites the figures of the last ``make chaos`` run that docs/reliability.md shows).
"""

from __future__ import annotations

import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from tests.chaos.sizes import SIZES

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / ".cache" / "chaos-results"


class ChaosResult(BaseModel):
    """One test case's parameters and figures."""

    item: int = Field(description="Item number in issue #9")
    title: str
    case: str = Field(description="Parametrization, e.g. the server kind")
    size: str = SIZES.name
    parameters: str
    entries: int
    faults: str = Field(description="What was injected, and how often")
    lost: int
    duplicates: int | None = Field(description="Successful handler calls beyond the first; None: n/a")
    recovery: str = Field(default="-", description="Measured recovery time(s)")
    figures: dict[str, float | int | str] = Field(default_factory=dict, description="Test-specific")
    not_covered: str
    seconds: float = Field(default=0.0, description="Wall time of the test case")
    finished_at: str = ""
    commit: str = ""


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def record(result: ChaosResult, began: float) -> Path:
    """Write ``result`` (``began``: ``time.monotonic()`` at the start of the test case)."""
    result.seconds = round(time.monotonic() - began, 1)
    result.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    result.commit = _commit()
    directory = RESULTS_DIR / result.size
    directory.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{result.item:02d}-{result.title}-{result.case}".lower()).strip("-")
    path = directory / f"{slug}.json"
    path.write_text(result.model_dump_json(indent=2) + "\n")
    return path


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
