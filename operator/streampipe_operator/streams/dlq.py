"""``streampipe dlq``: list, show, replay and purge a pipeline's dead letters.

Entries are read and written through the worker's own code: :class:`DeadLetterEnvelope` parses them
and :func:`streampipe_worker.deadletter.replay` moves them back, atomically and at most once per
entry (a script removes the dead letter and re-adds the original fields, plus ``replayed_from``, in
one step; running the same replay twice, or two at once, never duplicates an entry). Here is only the
paging (for progress), the filters and the purge.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, Field

from streampipe_operator.streams.paging import scan
from streampipe_operator.streams.targets import CommandError, UsageError
from streampipe_worker.deadletter import DeadLetterEnvelope, ReplayResult, replay

FILTER_KEYS = ("type", "group", "exception", "error")
PAGE = 200


class DeadLetterFilter(BaseModel):
    """``--filter key=value`` options: values of one key are alternatives, keys must all match."""

    types: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    exceptions: frozenset[str] | None = Field(
        default=None, description="Exception class names; `TimeoutError` also matches `pkg.TimeoutError`"
    )
    error_contains: str | None = None

    @classmethod
    def parse(cls, options: Sequence[str]) -> DeadLetterFilter:
        """From ``["type=order.created", "error=timeout"]``; :class:`UsageError` for anything else."""
        values: dict[str, set[str]] = {}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or key not in FILTER_KEYS or not value:
                raise UsageError(
                    f"--filter {option!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)} "
                    "(e.g. --filter type=order.created)"
                )
            values.setdefault(key, set()).add(value)
        errors = values.get("error")
        if errors is not None and len(errors) > 1:
            raise UsageError("--filter error=... may be given once (it matches a part of the error text)")
        return cls(
            types=_frozen(values.get("type")),
            groups=_frozen(values.get("group")),
            exceptions=_frozen(values.get("exception")),
            error_contains=next(iter(errors)) if errors else None,
        )

    @property
    def empty(self) -> bool:
        return not (self.types or self.groups or self.exceptions or self.error_contains)

    def matches(self, envelope: DeadLetterEnvelope) -> bool:
        if self.types is not None and envelope.type not in self.types:
            return False
        if self.groups is not None and envelope.group not in self.groups:
            return False
        if self.exceptions is not None and not any(
            envelope.exception == name or envelope.exception.endswith(f".{name}") for name in self.exceptions
        ):
            return False
        return self.error_contains is None or self.error_contains in envelope.error


def _frozen(values: set[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


class DeadLetter(BaseModel):
    """One entry of the dead-letter stream."""

    id: str = Field(description="Its ID in the dead-letter stream")
    envelope: DeadLetterEnvelope | None = Field(
        description="None when the entry is not a streampipe envelope"
    )
    fields: dict[str, str] = Field(description="The entry as stored")


class DeadLetterPage(BaseModel):
    """What ``dlq list --output json`` prints."""

    dead_letter: str
    length: int = Field(description="Entries in the dead-letter stream (all, not only those listed)")
    matched: int = Field(description="Entries that match the filters (all of them, not only those listed)")
    entries: list[DeadLetter]


class PurgeResult(BaseModel):
    dead_letter: str
    matched: int
    deleted: int


def parse_entry(entry_id: str, fields: dict[str, str]) -> DeadLetter:
    try:
        envelope: DeadLetterEnvelope | None = DeadLetterEnvelope.from_fields(fields)
    except (ValueError, TypeError):
        envelope = None
    return DeadLetter(id=entry_id, envelope=envelope, fields=fields)


def _matching(client: Any, key: str, where: DeadLetterFilter, *, end: str = "+") -> Iterator[DeadLetter]:
    for entry_id, fields in scan(client, key, end=end, size=PAGE):
        entry = parse_entry(entry_id, fields)
        if entry.envelope is None:
            if where.empty:
                yield entry  # shown and purged, never replayed (replay needs an envelope)
            continue
        if where.matches(entry.envelope):
            yield entry


def list_dead_letters(client: Any, key: str, where: DeadLetterFilter, *, limit: int) -> DeadLetterPage:
    """The oldest ``limit`` matching dead letters, and how many match in all."""
    entries: list[DeadLetter] = []
    matched = 0
    for entry in _matching(client, key, where):
        matched += 1
        if len(entries) < limit:
            entries.append(entry)
    return DeadLetterPage(dead_letter=key, length=int(client.xlen(key)), matched=matched, entries=entries)


def show_dead_letter(client: Any, key: str, entry_id: str) -> DeadLetter:
    """One dead letter by its ID in the dead-letter stream; :class:`CommandError` when absent."""
    try:
        found = client.xrange(key, min=entry_id, max=entry_id, count=1)
    except Exception as exc:
        if "Invalid stream ID" in str(exc):
            raise UsageError(f"{entry_id!r} is not a stream entry ID (e.g. 1700000000000-0)") from None
        raise
    if not found:
        raise CommandError(
            f"no entry {entry_id} in {key} (replayed or purged already? `streampipe dlq list` shows the IDs)"
        )
    return parse_entry(*found[0])


def replay_dead_letters(
    client: Any,
    key: str,
    where: DeadLetterFilter,
    *,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    target_stream: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay matching dead letters, a page at a time, through the worker's ``replay``.

    ``progress(done, total)`` is called after each page; ``total`` is the number that matched when the
    replay started (entries dead-lettered meanwhile wait for the next replay).
    """
    candidates = [entry.id for entry in _matching(client, key, where) if entry.envelope is not None]
    matched = candidates if limit is None else candidates[:limit]
    total = ReplayResult(dead_letter=key, dry_run=dry_run, matched=len(candidates))
    done = 0
    for start in range(0, len(matched), PAGE):
        ids = matched[start : start + PAGE]
        page = replay(
            client,
            key,
            target_stream=target_stream,
            ids=ids,
            start=ids[0],
            end=ids[-1],
            rate=rate,
            dry_run=dry_run,
        )
        total.scanned += page.scanned
        total.replayed += page.replayed
        # An ID that vanished between our scan and the replay was taken by another replay (or purged).
        total.already_replayed += page.already_replayed + len(ids) - page.matched
        total.entries.extend(page.entries)
        done += len(ids)
        if progress is not None:
            progress(done, len(matched))
    return total


def purge_candidates(client: Any, key: str, where: DeadLetterFilter) -> list[str]:
    """The IDs a purge would delete now (entries added after this call are not among them)."""
    return [entry.id for entry in _matching(client, key, where)]


def purge_dead_letters(
    client: Any, key: str, ids: Sequence[str], progress: Callable[[int, int], None] | None = None
) -> PurgeResult:
    """XDEL exactly ``ids`` (what the person confirmed), in chunks."""
    deleted = 0
    for start in range(0, len(ids), PAGE):
        deleted += int(client.xdel(key, *ids[start : start + PAGE]))
        if progress is not None:
            progress(min(start + PAGE, len(ids)), len(ids))
    return PurgeResult(dead_letter=key, matched=len(ids), deleted=deleted)


def payload_text(payload: str) -> str:
    """A JSON payload indented for reading; anything else as it is."""
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload
