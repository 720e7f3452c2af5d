"""Growing a partitioned layout under per-key ordering: the layout record and its epoch switches.

Growing ``count`` moves keys: a key in partition ``partition_of(key, N)`` goes to
``partition_of(key, M)``. Under ``ordering: PerKey`` a key's new entries must not run before its older
entries still unprocessed in the old partition. The record says where that line is.

``{B}:layout`` (next to ``{B}:members``, in its own slot) holds, as JSON, the count the layout was
last grown to and the *switches* still in force. A switch names the count before the growth and, per
old partition ``i``, its cutoff: that stream's ``last-generated-id`` when the switch was recorded
(``0-0`` when the stream did not exist). Every entry a producer routed with the old count before the
switch is at or below its partition's cutoff.

:func:`record_growth` (the operator's housekeeping pass, every pass) writes the record; a worker's
:class:`LayoutEpochs` reads it and holds an entry of key ``k`` in partition ``j`` while, for some
switch, ``o = partition_of(k, old count)`` differs from ``j`` and old partition ``o`` is not
:func:`settled` for the worker's group up to its cutoff. :func:`retire_settled_switches` drops a
switch once every old partition is settled for every group.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from streampipe_worker.entry_ids import EntryId
from streampipe_worker.partitions import MAX_PARTITIONS, PartitionLayout, layout_key, partition_of

NO_ENTRY = "0-0"  # the cutoff of a partition that had no stream at the switch
POLL_INTERVAL = 0.2  # seconds between two looks at the old partitions a held key waits for
RECORD_ATTEMPTS = 10  # compare-and-set rounds before a concurrent writer is reported

# KEYS[1] the layout record; ARGV[1] the value the caller read ('' when absent), ARGV[2] the new value.
# A compare-and-set: two operators (or an operator and `streampipe up`) cannot interleave a read and
# a write. 1 written, 0 the record changed since it was read.
_SWAP = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class LayoutShrinkError(ValueError):
    """The record says the layout already has more partitions than asked for: a count never shrinks."""


class LayoutRecordConflictError(RuntimeError):
    """Another writer kept changing the layout record while this one tried to update it."""


@dataclass(frozen=True)
class Switch:
    """One growth still in force: the count before it and each old partition's cutoff id."""

    old_count: int
    cutoffs: tuple[str, ...]

    def cutoff(self, partition: int) -> str:
        return self.cutoffs[partition]


@dataclass(frozen=True)
class LayoutRecord:
    """What ``{B}:layout`` holds: the count and the switches in force, oldest first."""

    count: int
    switches: tuple[Switch, ...] = ()

    def to_json(self) -> str:
        switches = [{"from": switch.old_count, "cutoffs": list(switch.cutoffs)} for switch in self.switches]
        return json.dumps({"count": self.count, "switches": switches}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LayoutRecord:
        """Parse a record; a malformed one is a ValueError naming the key's expected shape."""
        try:
            data = json.loads(text)
            record = cls(
                int(data["count"]),
                tuple(
                    Switch(int(item["from"]), tuple(str(EntryId.parse(cutoff)) for cutoff in item["cutoffs"]))
                    for item in data.get("switches", [])
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                "the layout record is not {'count': N, 'switches': [{'from': N, 'cutoffs': [id, ...]}]}: "
                f"{exc}"
            ) from None
        for switch in record.switches:
            if len(switch.cutoffs) != switch.old_count or not 1 <= switch.old_count < record.count:
                raise ValueError(
                    f"the layout record's switch from {switch.old_count} does not fit count {record.count}"
                )
        return record


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


async def read_layout(client: Any, base: str) -> LayoutRecord | None:
    """The layout record of ``base``, or None when nothing recorded one yet."""
    raw = await client.get(layout_key(base))
    return None if raw is None else LayoutRecord.from_json(raw)


async def _swap(client: Any, base: str, expected: str | None, record: LayoutRecord) -> bool:
    reply = await client.eval(_SWAP, 1, layout_key(base), expected or "", record.to_json())
    return int(reply) == 1


async def _last_generated(client: Any, stream: str) -> str:
    try:
        info = await client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return NO_ENTRY
        raise
    return _text(info["last-generated-id"])


async def record_growth(client: Any, base: str, count: int) -> LayoutRecord:
    """Make the record say ``count`` partitions, and return it. Idempotent:

    - no record yet: write ``count`` with no switch (the layout starts here);
    - the same count: nothing is written (one GET);
    - a bigger count: append a switch from the recorded count, with each old partition's cutoff read
      first, then written only if the record is still what was read (a compare-and-set on the one
      key, so this works on a cluster, where the key and the partitions are in different slots);
    - a smaller count: :class:`LayoutShrinkError`.
    """
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partition count {count} is outside 1..{MAX_PARTITIONS}")
    for _ in range(RECORD_ATTEMPTS):
        raw = await client.get(layout_key(base))
        expected = None if raw is None else _text(raw)
        current = None if expected is None else LayoutRecord.from_json(expected)
        if current is not None and current.count == count:
            return current
        if current is None:
            wanted = LayoutRecord(count)
        elif count < current.count:
            raise LayoutShrinkError(
                f"{layout_key(base)} records {current.count} partitions; {count} would shrink it, and a "
                "partitioned layout may grow, never shrink"
            )
        else:
            old = PartitionLayout(base, current.count)
            cutoffs = tuple([await _last_generated(client, stream) for stream in old.streams])
            wanted = LayoutRecord(count, (*current.switches, Switch(current.count, cutoffs)))
        if await _swap(client, base, expected, wanted):
            return wanted
    raise LayoutRecordConflictError(
        f"{layout_key(base)} changed under every one of {RECORD_ATTEMPTS} attempts to record {count} "
        "partitions"
    )


async def settled(client: Any, stream: str, group: str, cutoff: str) -> bool:
    """True when ``group`` has handled every entry of ``stream`` up to ``cutoff``: every one was
    delivered (its last-delivered-id is at or past the cutoff, or no entry is left between the two:
    the rest were trimmed or deleted unread) and none of them is still pending. A cutoff of ``0-0``
    (no entry before the switch) and a stream that no longer exists are settled; a missing group is
    not (the operator creates groups, and it would start before the cutoff)."""
    if EntryId.parse(cutoff) == EntryId(0, 0):
        return True
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return True
        raise
    found = next((row for row in groups if _text(row["name"]) == group), None)
    if found is None:
        return False
    delivered = _text(found["last-delivered-id"])
    if EntryId.parse(delivered) < EntryId.parse(cutoff) and not await _none_left(
        client, stream, delivered, cutoff
    ):
        return False
    pending = await client.xpending_range(stream, group, "-", cutoff, 1)
    return len(pending) == 0


async def _none_left(client: Any, stream: str, after: str, cutoff: str) -> bool:
    """No entry between ``after`` (excluded) and ``cutoff`` (included). A plain non-blocking XREAD of
    the first entry after ``after``: the PerKey worker's ACL has it (for the doorbell), not XRANGE."""
    reply = await client.xread({stream: after}, count=1)
    if not reply:
        return True
    [(_, entries)] = reply if isinstance(reply, list) else list(reply.items())
    return not entries or EntryId.parse(_text(entries[0][0])) > EntryId.parse(cutoff)


async def switch_settled(client: Any, base: str, switch: Switch, groups: Iterable[str]) -> bool:
    """Every old partition of ``switch`` is :func:`settled` for every one of ``groups``."""
    old = PartitionLayout(base, switch.old_count)
    for group in groups:
        for index, stream in enumerate(old.streams):
            if not await settled(client, stream, group, switch.cutoff(index)):
                return False
    return True


async def retire_settled_switches(client: Any, base: str, groups: Iterable[str]) -> LayoutRecord | None:
    """Drop the switches whose old partitions are settled for every group (no worker would hold a key
    for them any more); the record afterwards. One compare-and-set: if the record changed meanwhile,
    nothing is dropped this time."""
    names = list(groups)
    raw = await client.get(layout_key(base))
    if raw is None:
        return None
    current = LayoutRecord.from_json(raw)
    kept = tuple(
        [switch for switch in current.switches if not await switch_settled(client, base, switch, names)]
    )
    if kept == current.switches:
        return current
    wanted = LayoutRecord(current.count, kept)
    return wanted if await _swap(client, base, _text(raw), wanted) else current


class LayoutEpochs:
    """A per-key worker's view of its layout's record: whether it may read at all, and which keys wait.

    :meth:`refresh` re-reads the record (the owner loop each round, each partition after a read that
    returned entries, so an entry a producer wrote after a switch is never judged with a record older
    than the switch). :meth:`held` answers from memory; the old partitions it found unsettled are
    looked at again by :meth:`poll`, at most every ``poll_interval``. Settled is cached: it never goes
    back (ids only grow), so each (switch, old partition) is asked about until it first settles.
    """

    def __init__(
        self, client: Any, layout: PartitionLayout, group: str, *, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self.client = client
        self.layout = layout
        self.group = group
        self.poll_interval = poll_interval
        self.record: LayoutRecord | None = None
        self._raw: str | None = None
        self._settled: set[tuple[int, int, str]] = set()  # (old count, old partition, cutoff)
        self._waiting: set[tuple[int, int, str]] = set()
        self._polled_at = 0.0

    def ready(self) -> bool:
        """False while the record names fewer partitions than this worker was started with: the
        operator has not recorded the growth yet, so no cutoff exists to hold moved keys behind. No
        record at all is a layout that never grew."""
        return self.record is None or self.record.count >= self.layout.count

    @property
    def holding(self) -> bool:
        """Some key waits for an old partition to settle."""
        return bool(self._waiting)

    async def refresh(self) -> LayoutRecord | None:
        raw = await self.client.get(layout_key(self.layout.base))
        text = None if raw is None else _text(raw)
        if text != self._raw:
            self.record = None if text is None else LayoutRecord.from_json(text)
            self._raw = text
            switches = self.record.switches if self.record is not None else ()
            live = {(s.old_count, i, s.cutoff(i)) for s in switches for i in range(s.old_count)}
            self._settled &= live
            self._waiting &= live
        return self.record

    @property
    def switching(self) -> bool:
        """Whether a switch is recorded: without one :meth:`held` is False for every key."""
        return self.record is not None and bool(self.record.switches)

    def held(self, key: str, partition: int) -> bool:
        """Whether an entry of ``key`` in ``partition`` must wait for its key's older entries elsewhere."""
        if self.record is None or not self.record.switches:
            return False
        waits = False
        for switch in self.record.switches:
            old = partition_of(key, switch.old_count)
            if old == partition:
                continue
            mark = (switch.old_count, old, switch.cutoff(old))
            if mark not in self._settled:
                self._waiting.add(mark)
                waits = True
        return waits

    async def poll(self) -> None:
        """Look again at the old partitions keys wait for, if ``poll_interval`` has passed."""
        now = time.monotonic()
        if not self._waiting or now - self._polled_at < self.poll_interval:
            return
        self._polled_at = now
        for mark in sorted(self._waiting):
            old_count, old, cutoff = mark
            stream = PartitionLayout(self.layout.base, old_count).stream(old)
            if await settled(self.client, stream, self.group, cutoff):
                self._settled.add(mark)
                self._waiting.discard(mark)
