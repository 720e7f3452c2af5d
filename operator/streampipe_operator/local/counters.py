"""The workers' own counters, read from each replica's ``/metrics`` endpoint and summed per group.

The counter names are the worker's (:class:`streampipe_worker.metrics.WorkerMetrics` defines them);
they are read from its definitions here, never copied, so a renamed or added worker counter shows up
without a change on this side.
"""

from __future__ import annotations

import http.client
import urllib.request
from collections import Counter
from functools import cache

from pydantic import BaseModel, Field

from streampipe_worker.metrics import WorkerMetrics

_PREFIX = "streampipe_worker_"


@cache
def worker_counter_names() -> dict[str, str]:
    """Sample name (``streampipe_worker_retried_total``) -> counter name (``retried``), for every
    counter a worker exports."""
    families = WorkerMetrics(stream="", group="").registry.collect()
    return {
        f"{family.name}_total": family.name.removeprefix(_PREFIX)
        for family in families
        if family.type == "counter"
    }


class WorkerCounters(BaseModel):
    """Sums of the workers' own counters for one group, by the worker's counter name."""

    totals: dict[str, int] = Field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        """The sum of counter ``name`` (``processed``, ``retried``...); 0 before any worker reported."""
        if name not in worker_counter_names().values():
            raise KeyError(f"the worker has no counter {name!r}")
        return self.totals.get(name, 0)


def scrape_counters(port: int, timeout: float = 0.5) -> dict[str, float] | None:
    """One worker's counters from ``http://127.0.0.1:<port>/metrics``; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
            text = reply.read().decode()
    except (OSError, ValueError, http.client.HTTPException):  # e.g. a worker exiting mid-answer
        return None
    names = worker_counter_names()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = names.get(sample.name)
            if name is not None:
                values[name] = values.get(name, 0.0) + sample.value
    return values


class CounterBook:
    """Counter totals per replica; a replica keeps its name across restarts, and a restart resets its
    counters, so a value below the last one starts a new run whose values add to the previous."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, float]] = {}
        self._carried: dict[str, dict[str, float]] = {}
        self._group_of: dict[str, str] = {}

    def record(self, group: str, replica: str, values: dict[str, float]) -> None:
        self._group_of[replica] = group
        last = self._last.get(replica, {})
        if any(values.get(name, 0.0) < last.get(name, 0.0) for name in last):
            carried = self._carried.setdefault(replica, {})
            for name, value in last.items():
                carried[name] = carried.get(name, 0.0) + value
        self._last[replica] = values

    def totals(self, group: str) -> WorkerCounters:
        sums: Counter[str] = Counter()
        for replica, values in self._last.items():
            if self._group_of.get(replica) != group:
                continue
            for name, value in values.items():
                sums[name] += int(value)
            for name, value in self._carried.get(replica, {}).items():
                sums[name] += int(value)
        return WorkerCounters(totals=dict(sums))
