"""Handlers for the operator's drain tests, run by the pod runner's worker processes
(``handler: drain_handler:handle``; the runner puts this directory on the workers' path)."""

from __future__ import annotations

import time

from streampipe_worker.router import Entry

# About 0.1 ms of pretend work per entry: 50K entries keep one worker busy for several seconds, long
# enough for the operator's scaling to matter, short enough for a test.
WORK_SECONDS = 0.0001


def handle(entry: Entry) -> None:
    time.sleep(WORK_SECONDS)
