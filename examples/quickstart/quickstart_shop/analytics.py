"""The analytics group: ``handler: quickstart_shop.analytics:count``, a plain function handler.

It reads every entry of the stream (its own consumer group, its own position) and counts orders by
type; bad payloads are counted too, since analytics wants to know about them. Fast: no pretend work.
"""

from __future__ import annotations

from collections import Counter

from quickstart_shop.completions import record
from streampipe_worker.router import Entry

seen: Counter[str] = Counter()


def count(entry: Entry) -> None:
    seen[entry.fields.get("type", "unknown")] += 1
    record(entry)
