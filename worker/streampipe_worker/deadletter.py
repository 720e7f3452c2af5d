"""The dead-letter stream: envelope, atomic move, and replay.

Envelope fields (one DLQ entry per failed entry):

``original_id``, ``original_stream``, ``type``, ``payload``, ``error`` (the tutorial's), plus
``group``, ``consumer``, ``deliveries``, ``failed_at`` (ISO 8601 UTC), ``exception`` (class name),
``original_fields`` (JSON list of the original field names, in order) and every original field.

Original fields keep their names, except three cases that would be ambiguous:
``type`` and ``payload`` ARE the envelope's ``type``/``payload`` (when the original has none they
read ``unknown`` / empty, and ``original_fields`` says they were absent); any other original field
whose name is an envelope name, or starts with ``original.``, is stored as ``original.<name>``.
``original_fields`` makes the mapping exact, so :func:`replay` re-adds exactly what was dead-lettered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from streampipe_worker import crash_points
from streampipe_worker.metrics import WorkerMetrics
from streampipe_worker.pending import PendingEntries
from streampipe_worker.redis_errors import retry_while_transient
from streampipe_worker.router import PAYLOAD_FIELD, TYPE_FIELD, Entry

log = logging.getLogger("streampipe.worker")

ENVELOPE_FIELDS = (
    "original_id",
    "original_stream",
    "type",
    "payload",
    "error",
    "group",
    "consumer",
    "deliveries",
    "failed_at",
    "exception",
    "original_fields",
)
PASS_THROUGH = (TYPE_FIELD, PAYLOAD_FIELD)
PREFIX = "original."
REPLAYED_FROM = "replayed_from"
MAX_ERROR_CHARS = 4000


def stored_name(field: str) -> str:
    """Where an original field lives in the envelope."""
    if field in PASS_THROUGH:
        return field
    if field in ENVELOPE_FIELDS or field.startswith(PREFIX):
        return PREFIX + field
    return field


def exception_name(exc: BaseException) -> str:
    """The class of ``exc`` as the envelope records it: ``ValueError``, ``shop.billing.Declined``."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class DeadLetterEnvelope(BaseModel):
    """One dead-lettered entry, as written to and read from the dead-letter stream."""

    model_config = ConfigDict(frozen=True)

    original_id: str
    original_stream: str
    type: str = "unknown"
    payload: str = ""
    error: str
    group: str
    consumer: str
    deliveries: int = Field(ge=0)
    failed_at: datetime
    exception: str
    original: dict[str, str] = Field(default_factory=dict, description="The original entry's fields")

    @classmethod
    def for_failure(
        cls,
        *,
        entry_id: str,
        fields: Mapping[str, str],
        stream: str,
        group: str,
        consumer: str,
        deliveries: int,
        error: BaseException | str,
        now: datetime | None = None,
    ) -> DeadLetterEnvelope:
        message = error if isinstance(error, str) else (str(error) or exception_name(error))
        return cls(
            original_id=entry_id,
            original_stream=stream,
            type=fields.get(TYPE_FIELD, "unknown"),
            payload=fields.get(PAYLOAD_FIELD, ""),
            error=message[:MAX_ERROR_CHARS],
            group=group,
            consumer=consumer,
            deliveries=deliveries,
            failed_at=now or datetime.now(UTC),
            exception="" if isinstance(error, str) else exception_name(error),
            original=dict(fields),
        )

    @property
    def short_exception(self) -> str:
        """The exception class without its module (``InvalidEventError``); empty when the entry was
        dead-lettered for a reason rather than an exception."""
        return self.exception.rsplit(".", 1)[-1]

    def to_fields(self) -> dict[str, str]:
        """The stream entry: envelope fields plus every original field (see the module docstring)."""
        fields = {
            "original_id": self.original_id,
            "original_stream": self.original_stream,
            "type": self.type,
            "payload": self.payload,
            "error": self.error,
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": str(self.deliveries),
            "failed_at": self.failed_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            "exception": self.exception,
            "original_fields": json.dumps(list(self.original)),
        }
        for name, value in self.original.items():
            if name not in PASS_THROUGH:
                fields[stored_name(name)] = value
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> DeadLetterEnvelope:
        """Parse a dead-letter entry back (``ValueError`` when it is not one of ours)."""
        missing = [name for name in ("original_id", "original_stream", "error") if name not in fields]
        if missing:
            raise ValueError(f"not a streampipe dead-letter entry: missing {', '.join(missing)}")
        names = fields.get("original_fields")
        if names is None:
            # Written by another tool (e.g. the tutorial's loop): everything that is not envelope.
            original_names = [n for n in fields if n not in ENVELOPE_FIELDS or n in PASS_THROUGH]
        else:
            original_names = json.loads(names)
        original = {name: fields[stored_name(name)] for name in original_names if stored_name(name) in fields}
        return cls(
            original_id=fields["original_id"],
            original_stream=fields["original_stream"],
            type=fields.get("type", "unknown"),
            payload=fields.get("payload", ""),
            error=fields["error"],
            group=fields.get("group", ""),
            consumer=fields.get("consumer", ""),
            deliveries=int(fields.get("deliveries", "0") or 0),
            failed_at=datetime.fromisoformat(fields["failed_at"])
            if "failed_at" in fields
            else datetime.now(UTC),
            exception=fields.get("exception", ""),
            original=original,
        )


def queue_dead_letter_move(
    transaction: Any, *, stream: str, group: str, dead_letter: str, envelopes: Sequence[DeadLetterEnvelope]
) -> None:
    """Queue the atomic move on a ``pipeline(transaction=True)``: XADD every envelope, one XACK.

    Both keys are in one hash slot (the settings refuse anything else in cluster mode), so MULTI/EXEC
    keeps the pair atomic: an entry is either still pending or in the dead-letter stream and acked.
    """
    for envelope in envelopes:
        transaction.xadd(dead_letter, envelope.to_fields())
    transaction.xack(stream, group, *[envelope.original_id for envelope in envelopes])


class DeadLetter(NamedTuple):
    """An entry on its way to the dead-letter stream, and why."""

    entry: Entry
    error: BaseException | str  # what the handler raised, or why the entry never ran
    rejected: bool  # refused as such (PermanentError, invalid event): counted as reason="rejected"


class DeadLetterMover:
    """Moves entries of one consumer to the dead-letter stream: ``MULTI { XADD envelope ... ; XACK }``.

    A move includes only the ids still pending for this consumer, checked with XPENDING before it
    and again after a lost EXEC reply: a move that landed is not redone, and an entry a peer took
    after this worker's lease lapsed is left to that peer.
    """

    def __init__(
        self,
        pel: PendingEntries,
        dead_letter: str,
        metrics: WorkerMetrics,
        stopping: Callable[[], bool],
        crash_at: str | None = None,
    ) -> None:
        self.pel = pel
        self.client = pel.client
        self.dead_letter = dead_letter
        self.metrics = metrics
        self._stopping = stopping
        self._crash_at = crash_at  # a test hook, off unless the fault suite sets it

    async def move(self, dead: Sequence[DeadLetter]) -> int:
        """Move ``dead``; returns how many this consumer moved (a peer's are left to it)."""
        pel = self.pel
        envelopes = [
            DeadLetterEnvelope.for_failure(
                entry_id=item.entry.id,
                fields=item.entry.fields,
                stream=pel.stream,
                group=pel.group,
                consumer=pel.consumer,
                deliveries=item.entry.deliveries,
                error=item.error,
            )
            for item in dead
        ]
        todo = envelopes
        taken: set[str] = set()  # no longer ours before we tried: a peer took them (lease lapsed)
        failures = 0

        async def attempt() -> None:
            nonlocal todo, taken
            # Only ids still pending for this consumer: after a lost EXEC reply the move may have
            # happened; after a lease lapsed (a partition, a stall) a peer may have taken the
            # entry and moved it. Either way a second envelope would be a duplicate.
            owners = await pel.owners([envelope.original_id for envelope in todo])
            pending = [envelope for envelope in todo if owners.get(envelope.original_id) == pel.consumer]
            if not failures and len(pending) < len(todo):
                taken = {e.original_id for e in todo} - {e.original_id for e in pending}
            todo = pending
            if not todo:
                return
            transaction = self.client.pipeline(transaction=True)
            queue_dead_letter_move(
                transaction, stream=pel.stream, group=pel.group, dead_letter=self.dead_letter, envelopes=todo
            )
            if self._crash_at == "inside-dlq-move":
                await crash_points.crash_inside_transaction(self.client, transaction)
            await transaction.execute()
            todo = []

        def failed(exc: BaseException, attempts: int) -> None:
            nonlocal failures
            failures = attempts
            self.metrics.connection_errors.inc()
            log.warning("dead-letter move of %d entries: %s; checking the PEL and retrying", len(todo), exc)

        gave_up = await retry_while_transient(
            attempt,
            delay=lambda attempts: min(0.1 * 2**attempts, 5.0),
            give_up=lambda attempts: self._stopping() and attempts > 20,
            on_error=failed,
        )
        if gave_up is not None:
            log.error(
                "could not move %d entries to %s (%s); they stay pending for a peer",
                len(todo),
                self.dead_letter,
                gave_up,
            )
            return 0
        for entry, error, rejected in dead:
            if entry.id in taken:
                log.info("entry %s is no longer pending here (a peer took it): not moved here", entry.id)
                continue
            (self.metrics.dead_rejected if rejected else self.metrics.dead_max_deliveries).inc()
            log.warning(
                "entry %s moved to %s after %d deliveries: %s",
                entry.id,
                self.dead_letter,
                entry.deliveries,
                error if isinstance(error, str) else f"{type(error).__name__}: {error}",
            )
        return len(dead) - len(taken)


# --- replay -----------------------------------------------------------------------------------

# Atomic and idempotent: an entry is re-added only if this call is the one that removed it from the
# dead-letter stream (or, with keep, the one that recorded it in the replay marker hash).
_REPLAY_SCRIPT = """
local removed
if ARGV[2] == '1' then
  removed = redis.call('HSETNX', KEYS[3], ARGV[1], '')
else
  removed = redis.call('XDEL', KEYS[1], ARGV[1])
end
if removed == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
if ARGV[2] == '1' then redis.call('HSET', KEYS[3], ARGV[1], id) end
return id
"""


class ReplayedEntry(BaseModel):
    dead_letter_id: str
    original_id: str
    target_stream: str
    type: str
    new_id: str | None = Field(description="None in a dry run, or when another replay got there first")


class ReplayResult(BaseModel):
    """What a replay did (or, with dry_run, would do)."""

    dead_letter: str
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    already_replayed: int = 0
    dry_run: bool = False
    entries: list[ReplayedEntry] = Field(default_factory=list)


def _scan(
    client: Any, key: str, start: str, end: str, page_size: int
) -> Iterator[tuple[str, dict[str, str]]]:
    """XRANGE page by page; each page starts after the last id of the previous one."""
    low = start
    while True:
        page = client.xrange(key, min=low, max=end, count=page_size)
        yield from page
        if len(page) < page_size:
            return
        low = f"({page[-1][0]}"


def replay_marker_key(dead_letter: str) -> str:
    """Hash of dead-letter id -> new id, used by ``replay(keep=True)``."""
    return f"{dead_letter}:replayed"


def replay(
    client: Any,
    dead_letter: str,
    *,
    target_stream: str | None = None,
    ids: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    error_contains: str | None = None,
    where: Callable[[DeadLetterEnvelope], bool] | None = None,
    start: str = "-",
    end: str = "+",
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    keep: bool = False,
    page_size: int = 500,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """Re-add dead-lettered entries to their stream (or ``target_stream``) with ``replayed_from``.

    ``client`` is a synchronous redis-py client (``connection.create_client``). Filters combine
    (all must match): explicit ``ids``, ``types``, ``error_contains``, a ``where`` predicate, and an ID
    range ``start``..``end``. ``limit`` caps the number replayed, ``rate`` the entries per second.
    Each entry moves atomically: removed from the dead-letter stream and re-added in one script, so
    running the same replay twice (or two at once) never duplicates an entry. With ``keep=True`` the
    dead-letter entry stays and a marker hash (``<dead_letter>:replayed``) makes it replay only once.
    ``dry_run`` reports what would be replayed and writes nothing.
    """
    wanted_ids = set(ids) if ids is not None else None
    wanted_types = set(types) if types is not None else None

    def matches(entry_id: str, envelope: DeadLetterEnvelope) -> bool:
        return (
            (wanted_ids is None or entry_id in wanted_ids)
            and (wanted_types is None or envelope.type in wanted_types)
            and (error_contains is None or error_contains in envelope.error)
            and (where is None or where(envelope))
        )

    result = ReplayResult(dead_letter=dead_letter, dry_run=dry_run)
    script = None if dry_run else client.register_script(_REPLAY_SCRIPT)
    already = set(client.hkeys(replay_marker_key(dead_letter))) if keep else set()
    interval = 1.0 / rate if rate else 0.0
    for entry_id, fields in _scan(client, dead_letter, start, end, page_size):
        if limit is not None and len(result.entries) >= limit:
            break
        result.scanned += 1
        try:
            envelope = DeadLetterEnvelope.from_fields(fields)
        except ValueError:
            continue  # not an envelope (written by something else): never replayed blindly
        if not matches(entry_id, envelope):
            continue
        result.matched += 1
        if entry_id in already:
            result.already_replayed += 1
            continue
        target = target_stream or envelope.original_stream
        new_id: str | None = None
        if script is not None:
            values = {**envelope.original, REPLAYED_FROM: envelope.original_id}
            flat = [item for pair in values.items() for item in pair]
            keys = [dead_letter, target, replay_marker_key(dead_letter)]
            new_id = script(keys=keys, args=[entry_id, "1" if keep else "0", *flat])
            if new_id is None:
                result.already_replayed += 1
                continue
            result.replayed += 1
            if interval:
                sleep(interval)
        result.entries.append(
            ReplayedEntry(
                dead_letter_id=entry_id,
                original_id=envelope.original_id,
                target_stream=target,
                type=envelope.type,
                new_id=new_id,
            )
        )
    return result
