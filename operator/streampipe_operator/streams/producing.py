"""``streampipe produce``: events from the command line or JSON lines, sent with the worker's Producer.

An event is a JSON object ``{"type": ..., "payload": ..., "version": 1, "dedupe_key": ..., "fields":
{...}}`` (the :class:`~streampipe_worker.producer.Event` model: ``type`` and ``payload`` required).
With ``--type T`` each argument or line is the payload alone. Every event is parsed before the first
is sent, so a typo on line 900 sends nothing; then they go pipelined, a chunk per round trip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from streampipe_operator.streams.targets import UsageError
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Event, Producer
from streampipe_worker.router import InvalidEventError

CHUNK = 1000


class ProduceResult(BaseModel):
    """What ``produce --output json`` prints."""

    stream: str
    count: int
    ids: list[str]


def parse_events(
    sources: Iterable[tuple[str, str]], *, event_type: str | None = None, version: int = 1
) -> list[Event]:
    """``sources``: ``(where, text)`` pairs, e.g. ``("stdin line 3", '{"type": ...}')``; blank texts are
    skipped. :class:`UsageError` names the first bad one and why."""
    events: list[Event] = []
    for where, text in sources:
        if not text.strip():
            continue
        try:
            value: Any = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{where}: not JSON ({exc}): {text.strip()[:80]}") from None
        try:
            if event_type is not None:
                events.append(Event(type=event_type, payload=value, version=version))
            elif not isinstance(value, dict):
                raise UsageError(
                    f"{where}: expected an event object "
                    '{"type": "order.created", "payload": {...}}, or pass --type and give payloads'
                )
            else:
                events.append(Event.model_validate(value))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'event'}: {error['msg']}"
                for error in exc.errors()
            )
            raise UsageError(f"{where}: {problems}") from None
    return events


def send_events(
    client: Any,
    stream: str | PartitionLayout,
    events: Sequence[Event],
    *,
    maxlen: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProduceResult:
    """Send ``events`` in pipelined chunks; their new entry IDs, in order. ``stream`` may be a partition
    layout: each event goes to its partition's stream (every event is routed before the first is sent)."""
    producer = Producer(client, stream, maxlen=maxlen, chunk_size=CHUNK)
    if isinstance(stream, PartitionLayout) and stream.key is not None:
        try:
            producer.partitions_of(events)  # raises for the first event without the key field
        except InvalidEventError as exc:
            raise UsageError(str(exc)) from None
    ids: list[str] = []
    for start in range(0, len(events), CHUNK):
        ids.extend(producer.send_many(events[start : start + CHUNK]))
        if progress is not None:
            progress(len(ids), len(events))
    return ProduceResult(stream=producer.stream, count=len(ids), ids=ids)
