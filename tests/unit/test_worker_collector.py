"""The worker process tunes CPython's collector once start-up is done (docs/worker.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = """
import gc, json
from streampipe_worker.__main__ import GC_THRESHOLD, tune_collector
{before}
tune_collector()
print(json.dumps({{"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "tuned": list(GC_THRESHOLD)}}))
"""


def probe(before: str = "") -> dict[str, Any]:
    # A fresh interpreter: freezing the heap of the test process itself would outlive the test.
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True, check=True
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_start_up_heap_is_frozen_and_the_first_threshold_raised() -> None:
    found = probe()
    assert found["threshold"] == found["tuned"]
    assert found["frozen"] > 10_000  # pydantic, redis, prometheus_client ...


def test_a_handler_that_chose_its_own_thresholds_keeps_them() -> None:
    found = probe("gc.set_threshold(5000, 20, 20)  # as a handler module would at import")
    assert found["threshold"] == [5000, 20, 20]
    assert found["frozen"] > 10_000
