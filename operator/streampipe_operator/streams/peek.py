"""``streampipe peek``: the newest or oldest entries of a pipeline's stream, or a group's pending list.

Entries come from ``XREVRANGE`` / ``XRANGE`` (``COUNT n``); a group's pending entries from the extended
``XPENDING`` (oldest first: consumer, idle time, deliveries) and each entry's fields from ``XRANGE id id``
(an entry trimmed or deleted while still pending shows as such). A field named ``payload`` that holds
JSON is parsed, so that people and ``--output json`` both get it as data.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

import redis.exceptions
from pydantic import BaseModel, Field

from streampipe_operator.streams.targets import CommandError, Target
from streampipe_worker.entry_ids import EntryId

PAYLOAD_FIELD = "payload"


class PendingInfo(BaseModel):
    consumer: str
    idle_seconds: float
    deliveries: int


class PeekedEntry(BaseModel):
    id: str
    added_at: datetime | None = Field(description="From the ID's millisecond timestamp (UTC)")
    age_seconds: float | None
    fields: dict[str, str] | None = Field(description="None: the entry is gone (trimmed or deleted)")
    payload: Any = Field(default=None, description="The `payload` field parsed as JSON, when it is JSON")
    pending: PendingInfo | None = None


class PeekReport(BaseModel):
    """What ``streampipe peek --output json`` prints."""

    stream: str
    length: int
    view: Literal["newest", "oldest", "pending"]
    group: str | None = None
    pending_total: int | None = Field(default=None, description="The group's whole pending count")
    entries: list[PeekedEntry]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: Any, now: float, pending: PendingInfo | None = None) -> PeekedEntry:
    text_id = _text(entry_id)
    parsed = EntryId.parse(text_id)
    added = None if parsed.ms == 0 else datetime.fromtimestamp(parsed.unix_seconds, UTC)
    decoded = None if fields is None else {_text(k): _text(v) for k, v in dict(fields).items()}
    payload = None
    if decoded is not None and PAYLOAD_FIELD in decoded:
        try:
            payload = json.loads(decoded[PAYLOAD_FIELD])
        except ValueError:
            payload = None
    return PeekedEntry(
        id=text_id,
        added_at=added,
        age_seconds=None if added is None else max(0.0, now - parsed.unix_seconds),
        fields=decoded,
        payload=payload,
        pending=pending,
    )


def peek(
    client: Any, target: Target, *, count: int, oldest: bool = False, group: str | None = None
) -> PeekReport:
    """The report for one view; :class:`CommandError` (exit 1) when the stream or group is missing."""
    stream = target.stream
    # One round trip for the existence, the length and (without a group) the page itself.
    pipe = client.pipeline(transaction=False)
    pipe.exists(stream)
    pipe.xlen(stream)
    if group is None:
        if oldest:
            pipe.xrange(stream, min="-", max="+", count=count)
        else:
            pipe.xrevrange(stream, max="+", min="-", count=count)
    exists, length, *rest = pipe.execute()
    if not exists:
        raise CommandError(f"stream {stream} does not exist: nothing was produced to it yet")
    length = int(length)
    now = time.time()
    if group is None:
        page = rest[0]
        entries = [_entry(entry_id, fields, now) for entry_id, fields in page]
        return PeekReport(
            stream=stream, length=length, view="oldest" if oldest else "newest", entries=entries
        )
    try:
        summary = client.xpending(stream, group)
        pending = client.xpending_range(stream, group, min="-", max="+", count=count)
    except redis.exceptions.ResponseError as exc:
        if "NOGROUP" in str(exc).upper():
            names = ", ".join(sorted(_text(g["name"]) for g in client.xinfo_groups(stream))) or "none"
            raise CommandError(f"stream {stream} has no group {group} (its groups: {names})") from None
        raise
    pipe = client.pipeline(transaction=False)
    for item in pending:
        pipe.xrange(stream, min=item["message_id"], max=item["message_id"], count=1)
    found = pipe.execute()
    entries = []
    for item, reply in zip(pending, found, strict=True):
        info = PendingInfo(
            consumer=_text(item["consumer"]),
            idle_seconds=int(item["time_since_delivered"]) / 1000,
            deliveries=int(item["times_delivered"]),
        )
        fields = reply[0][1] if reply else None
        entries.append(_entry(item["message_id"], fields, now, info))
    return PeekReport(
        stream=stream,
        length=length,
        view="pending",
        group=group,
        pending_total=int(summary["pending"]),
        entries=entries,
    )
