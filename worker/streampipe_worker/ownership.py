"""Partition ownership for per-key ordering: one owner per partition, through a fenced lease.

The primitive ``ordering: PerKey`` stands on: :mod:`streampipe_worker.ordered` runs a
:class:`PartitionOwner` and works the partitions it owns under these leases.

Keys (``T(i)`` is partition ``i``'s hash tag, :mod:`streampipe_worker.partitions`), so that on a
cluster everything one partition's scripts touch lives in that partition's slot:

- ``{T(i)}:owner`` holds ``<consumer>|<generation>`` with a time to live: the lease.
- ``{T(i)}:generation`` is a counter, INCRed on every new acquisition and never reset, so each
  acquisition of a partition has a number no earlier one had.
- ``{B}:members`` (its own slot; no partition script touches it) is a sorted set of live members
  scored by the server time (ms) at which each one's heartbeat runs out; the key expires with its
  last member.

A free lease is taken only while the partition's stream exists, so workers that outlive their
pipeline's deletion (``deletionPolicy: Delete``) do not write its lease keys again.

Fencing: every read, ack and reclaim of a partition runs as a script that first checks the owner key
still holds the caller's ``consumer|generation`` and does nothing (it answers ``FENCED``) otherwise.
So a pod whose lease expired or was taken cannot read or ack that partition any more, whatever it
believes. Its own belief runs out first: :class:`PartitionLease` keeps a local deadline measured from
*before* the acquire or renew was sent, minus a safety margin, so :meth:`PartitionLease.valid` turns
False before the server's key can expire, and the pod stops its handlers' work on the partition
before anyone else may take it.

Consumer names must be unique per process: two processes under one name would share a lease.

Limit: replication is asynchronous. A failover can lose the latest acquire or renew (the owner key
and the counter's INCR alike), so another consumer may take a partition whose old holder still
trusts its local deadline, and a generation number may be handed out twice. The server's fence still
compares ``consumer|generation`` as a whole, so the old holder's reads and acks are refused; only its
handlers already running may overlap the new owner's for up to one ttl.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streampipe_worker.partitions import PartitionLayout

OWNER_SUFFIX = ":owner"
GENERATION_SUFFIX = ":generation"
MEMBERS_SUFFIX = ":members"
FENCED = "FENCED"  # what a fenced script answers when the lease is not the caller's
ACK_CHUNK = 1000  # ids per fenced XACK (Lua's unpack has a stack limit)
MAX_PAGE = 1000  # entries per fenced read or reclaim page, for the same reason
MIN_MARGIN_MS = 50

# KEYS[1] owner, KEYS[2] generation, KEYS[3] the partition's stream; ARGV[1] consumer, ARGV[2] ttl ms.
# {1, generation} when the caller holds the lease now (taken or renewed), {0, holder value} when
# another consumer does, {2, ''} when it is free but the stream does not exist (not created yet, or
# deleted with its pipeline: taking it would write the lease keys again).
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local holder, generation = string.match(held, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(generation)}
  end
  return {0, held}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {2, ''}
end
local generation = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. generation, 'PX', ARGV[2])
return {1, generation}
"""

# KEYS[1] owner; ARGV[1] consumer|generation, ARGV[2] ttl ms. 1 renewed, 0 lost.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] owner; ARGV[1] consumer|generation. 1 released, 0 not ours (any more).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] owner, KEYS[2] stream; ARGV[1] consumer|generation, ARGV[2] group, ARGV[3] consumer,
# ARGV[4] count, ARGV[5] '>' (new entries) or '0' (this consumer's pending ones).
# Never BLOCK: a script cannot wait, and the fence must hold at the moment of the read.
_READ = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.status_reply('FENCED')
end
local reply = redis.call(
  'XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], ARGV[5])
if not reply then
  return {}
end
return reply[1][2]
"""

# KEYS[1] owner, KEYS[2] stream; ARGV[1] consumer|generation, ARGV[2] group, ARGV[3..] ids.
_ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.status_reply('FENCED')
end
return redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
"""

# KEYS[1] owner, KEYS[2] stream; ARGV[1] consumer|generation, ARGV[2] group, ARGV[3] consumer,
# ARGV[4] start of the PEL page ('-' or '(<id>'), ARGV[5] page size.
# Claims the page's entries that other consumers hold, in id order: {next cursor or '', entries}.
_RECLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.status_reply('FENCED')
end
local rows = redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[4], '+', ARGV[5])
local ids = {}
for _, row in ipairs(rows) do
  if row[2] ~= ARGV[3] then
    ids[#ids + 1] = row[1]
  end
end
local last = ''
if #rows == tonumber(ARGV[5]) then
  last = rows[#rows][1]
end
local entries = {}
if #ids > 0 then
  entries = redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, unpack(ids))
end
return {last, entries}
"""

# KEYS[1] owner, KEYS[2] stream, KEYS[3] dead-letter stream; ARGV[1] consumer|generation, ARGV[2] group,
# ARGV[3] id, ARGV[4..] the envelope's field/value pairs. XACK first: an entry no longer pending (the
# move landed and its reply was lost) is not added twice. 1 moved, 0 not pending.
_DEAD_LETTER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.status_reply('FENCED')
end
if redis.call('XACK', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4))
return 1
"""

# KEYS[1] owner, KEYS[2] stream; ARGV[1] consumer|generation, ARGV[2] group, ARGV[3] consumer,
# ARGV[4] delivery count, ARGV[5..] ids this consumer holds. Sets their delivery count (XCLAIM to
# itself, RETRYCOUNT, JUSTID) and returns how many were still pending.
_HAND_BACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.status_reply('FENCED')
end
local args = {}
for index = 5, #ARGV do
  args[#args + 1] = ARGV[index]
end
args[#args + 1] = 'RETRYCOUNT'
args[#args + 1] = ARGV[4]
args[#args + 1] = 'JUSTID'
return #redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, unpack(args))
"""

# KEYS[1] members; ARGV[1] member, ARGV[2] ttl ms. Scores are the server's clock, so pods whose
# clocks disagree still agree on who is alive. The key lives as long as its longest-lived member, so
# a registry nobody renews (its pipeline deleted) goes by itself. Returns the live members.
_HEARTBEAT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def owner_key(layout: PartitionLayout, partition: int) -> str:
    """The lease of ``partition``: ``{T(i)}:owner``."""
    return layout.stream(partition) + OWNER_SUFFIX


def generation_key(layout: PartitionLayout, partition: int) -> str:
    """The generation counter of ``partition``: ``{T(i)}:generation``."""
    return layout.stream(partition) + GENERATION_SUFFIX


def members_key(layout: PartitionLayout) -> str:
    """The membership registry of a layout's workers: ``{B}:members``."""
    return "{" + layout.base + "}" + MEMBERS_SUFFIX


def safety_margin_ms(ttl_ms: int) -> int:
    """How much earlier than the server a holder gives its lease up: ``max(ttl/10, 50 ms)``.

    The holder measures from before it sent the acquire or renew; the server from when it ran it, so
    the server's expiry is always later by the round trip. The margin covers the two clocks running
    at different rates (monotonic clocks drift by parts per million, far inside 10 %) and the
    server's expiry resolution (1 ms). It does not cover a step of the server's wall clock, which
    its key expiry follows: a clock set forward by more than the margin ends leases early.
    """
    return max(ttl_ms // 10, MIN_MARGIN_MS)


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _is_fenced(reply: Any) -> bool:
    return isinstance(reply, str | bytes) and _text(reply) == FENCED


class LeaseFencedError(Exception):
    """The lease is not (or no longer) the caller's: nothing was read, acked or claimed.

    Raised without asking the server when the lease's local deadline has passed, and when the server's
    fence refuses the script. Either way the caller must stop touching the partition.
    """

    def __init__(self, lease: PartitionLease, by: str) -> None:
        super().__init__(
            f"partition {lease.partition}: lease {lease.value} is no longer held ({by}); "
            "stop working on this partition"
        )
        self.lease = lease


@dataclass
class PartitionLease:
    """One holder's view of its lease on one partition.

    ``deadline`` is on the ``clock`` (monotonic seconds): when the last acquire or renew that
    succeeded was *sent*, plus the ttl, minus :func:`safety_margin_ms`. Past it, :meth:`valid` is
    False even if no reply ever came back, and the holder must stop touching the partition.
    """

    partition: int
    consumer: str
    generation: int
    ttl_ms: int
    deadline: float
    sent_at: float  # when the last successful acquire or renew was sent
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @property
    def value(self) -> str:
        """What the owner key holds while this lease is current: ``consumer|generation``."""
        return f"{self.consumer}|{self.generation}"

    def valid(self) -> bool:
        return self.clock() < self.deadline

    def renewal_due(self) -> bool:
        """A renewal is due every ttl/3, so two may fail before the local deadline passes."""
        return self.clock() >= self.sent_at + self.ttl_ms / 3000

    def extend(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.deadline = sent_at + (self.ttl_ms - safety_margin_ms(self.ttl_ms)) / 1000

    def end(self) -> None:
        """Stop trusting this lease at once (released, or found lost)."""
        self.deadline = -math.inf


@dataclass(frozen=True)
class HeldElsewhere:
    """An acquire that found the partition held by another consumer."""

    partition: int
    holder: str
    generation: int


@dataclass(frozen=True)
class NoStream:
    """An acquire that found the partition free but its stream missing: not created yet, or deleted
    with its pipeline. Nothing was written; the owner asks again next round."""

    partition: int


@dataclass(frozen=True)
class PartitionEntry:
    """One entry read or claimed under a lease; ``fields`` is None when the stream entry was deleted
    while it was pending."""

    id: str
    fields: dict[str, str] | None


@dataclass(frozen=True)
class ReclaimPage:
    """The entries one reclaim call moved to the new owner (id order), and where the next page
    starts (None: the pending entries list has been scanned to its end)."""

    entries: list[PartitionEntry]
    next_start: str | None


def _entries(rows: Any) -> list[PartitionEntry]:
    entries = []
    for entry_id, flat in rows or ():
        fields = None
        if flat:
            # The worker's client decodes replies (all str); a bytes client's are decoded here.
            values = flat if type(flat[0]) is str else [_text(item) for item in flat]
            fields = dict(zip(values[::2], values[1::2], strict=True))
        entries.append(PartitionEntry(_text(entry_id), fields))
    return entries


class PartitionLeases:
    """Acquire, renew and release the leases of one layout's partitions, and read, ack and reclaim
    entries under them, as ``consumer`` of ``group``.

    ``client`` is a ``redis.asyncio`` client (standalone, Sentinel or cluster). The scripts are
    registered once, here; redis-py loads them on each server the first time it needs them.
    """

    def __init__(
        self,
        client: Any,
        layout: PartitionLayout,
        group: str,
        consumer: str,
        *,
        ttl_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_ms <= 2 * safety_margin_ms(ttl_ms):
            raise ValueError(f"lease ttl {ttl_ms} ms is too short: it must exceed twice its safety margin")
        self.client = client
        self.layout = layout
        self.group = group
        self.consumer = consumer
        self.ttl_ms = ttl_ms
        self.clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._read = client.register_script(_READ)
        self._ack = client.register_script(_ACK)
        self._reclaim = client.register_script(_RECLAIM)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._hand_back = client.register_script(_HAND_BACK)

    async def acquire(self, partition: int) -> PartitionLease | HeldElsewhere | NoStream:
        """Take ``partition`` if its lease is free (a new generation) and its stream exists, renew it
        if this consumer holds it already (same generation), or report who holds it."""
        keys = [
            owner_key(self.layout, partition),
            generation_key(self.layout, partition),
            self.layout.stream(partition),
        ]
        sent_at = self.clock()
        taken, value = await self._acquire(keys=keys, args=[self.consumer, self.ttl_ms])
        if int(taken) == 2:
            return NoStream(partition)
        if int(taken) != 1:
            holder, _, generation = _text(value).rpartition("|")
            return HeldElsewhere(partition, holder, int(generation))
        lease = PartitionLease(
            partition, self.consumer, int(value), self.ttl_ms, -math.inf, sent_at, clock=self.clock
        )
        lease.extend(sent_at)
        return lease

    async def renew(self, lease: PartitionLease) -> bool:
        """Extend ``lease`` if the server still holds it for this generation; False (and the lease
        ended) when it was lost. A renewal that fails in transit leaves the deadline where it was."""
        sent_at = self.clock()
        renewed = await self._renew(
            keys=[owner_key(self.layout, lease.partition)], args=[lease.value, lease.ttl_ms]
        )
        if int(renewed) == 1:
            lease.extend(sent_at)
            return True
        lease.end()
        return False

    async def release(self, lease: PartitionLease) -> bool:
        """Give ``lease`` up (another consumer may take it at once); False when it was no longer ours."""
        lease.end()
        released = await self._release(keys=[owner_key(self.layout, lease.partition)], args=[lease.value])
        return int(released) == 1

    async def holder(self, partition: int) -> str | None:
        """The owner key's value (``consumer|generation``), None when the partition is free."""
        value = await self.client.get(owner_key(self.layout, partition))
        return None if value is None else _text(value)

    def _fenced_keys(self, lease: PartitionLease, count: int = 1) -> list[str]:
        if not 1 <= count <= MAX_PAGE:
            raise ValueError(f"count {count} is outside 1..{MAX_PAGE}")
        if not lease.valid():
            raise LeaseFencedError(lease, "its local deadline has passed")
        return [owner_key(self.layout, lease.partition), self.layout.stream(lease.partition)]

    async def read(self, lease: PartitionLease, *, count: int, pending: bool = False) -> list[PartitionEntry]:
        """Up to ``count`` new entries of the partition (``XREADGROUP ... >``), or with ``pending`` the
        ones this consumer already holds (``0``), in id order. Never blocks."""
        keys = self._fenced_keys(lease, count)
        args = [lease.value, self.group, lease.consumer, count, "0" if pending else ">"]
        reply = await self._read(keys=keys, args=args)
        if _is_fenced(reply):
            raise LeaseFencedError(lease, "the server's fence refused the read")
        return _entries(reply)

    async def ack(self, lease: PartitionLease, ids: Sequence[str]) -> int:
        """XACK ``ids`` under the lease; how many were pending. Ids go in chunks of ``ACK_CHUNK``:
        when the fence refuses a later chunk, the earlier ones were acked while the lease held."""
        acked = 0
        for start in range(0, len(ids), ACK_CHUNK):
            keys = self._fenced_keys(lease)
            reply = await self._ack(
                keys=keys, args=[lease.value, self.group, *ids[start : start + ACK_CHUNK]]
            )
            if _is_fenced(reply):
                raise LeaseFencedError(lease, "the server's fence refused the ack")
            acked += int(reply)
        return acked

    async def dead_letter(self, lease: PartitionLease, entry_id: str, envelope: Mapping[str, str]) -> bool:
        """Move one entry to the partition's dead-letter stream under the lease: XACK it and XADD
        ``envelope`` in one script (the three keys share the partition's slot). False when the entry
        was no longer pending (nothing added)."""
        keys = [*self._fenced_keys(lease), self.layout.dead_letter(lease.partition)]
        flat = [item for pair in envelope.items() for item in pair]
        reply = await self._dead_letter(keys=keys, args=[lease.value, self.group, entry_id, *flat])
        if _is_fenced(reply):
            raise LeaseFencedError(lease, "the server's fence refused the dead-letter move")
        return int(reply) == 1

    async def hand_back(self, lease: PartitionLease, attempts: Mapping[int, Sequence[str]]) -> int:
        """Before a hand-over: set the delivery count of entries read here and not started to the
        attempts they really had (``attempts``: count -> ids), so that the next owner's claim counts
        only its own delivery. Reading an entry is not trying it: without this, every graceful
        hand-over would count one more delivery for each entry waiting in memory, and a few
        rebalances would dead-letter healthy entries. Returns how many were still pending."""
        kept = 0
        for count, ids in attempts.items():
            for start in range(0, len(ids), ACK_CHUNK):
                keys = self._fenced_keys(lease)
                chunk = ids[start : start + ACK_CHUNK]
                reply = await self._hand_back(
                    keys=keys, args=[lease.value, self.group, lease.consumer, count, *chunk]
                )
                if _is_fenced(reply):
                    raise LeaseFencedError(lease, "the server's fence refused the hand-back")
                kept += int(reply)
        return kept

    async def reclaim(
        self, lease: PartitionLease, *, count: int = 100, start: str | None = None
    ) -> ReclaimPage:
        """Claim, in id order, the pending entries other consumers (earlier owners) hold in one page
        of ``count`` rows of the partition's pending entries list, beginning after ``start`` (the
        previous page's ``next_start``; None for the first page). A new owner runs these first."""
        keys = self._fenced_keys(lease, count)
        cursor = "-" if start is None else "(" + start
        reply = await self._reclaim(keys=keys, args=[lease.value, self.group, lease.consumer, cursor, count])
        if _is_fenced(reply):
            raise LeaseFencedError(lease, "the server's fence refused the reclaim")
        last, rows = reply
        return ReclaimPage(_entries(rows), _text(last) or None)

    async def reclaim_all(self, lease: PartitionLease, *, count: int = 100) -> list[PartitionEntry]:
        """Every page of :meth:`reclaim`, in id order (for a partition's hand-over)."""
        entries: list[PartitionEntry] = []
        start: str | None = None
        while True:
            page = await self.reclaim(lease, count=count, start=start)
            entries += page.entries
            if page.next_start is None:
                return entries
            start = page.next_start


def _weight(member: str, partition: int) -> bytes:
    """A stable pseudo-random weight of (member, partition): the same in every process and release."""
    data = f"{member}\0{partition}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=8).digest()


def assign_partitions(count: int, members: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Which partitions each member owns: an even spread (counts differ by at most one) that every
    process computes alike from the same member names.

    Bounded rendezvous hashing: every (member, partition) pair gets a stable hash weight, and the pairs
    are taken heaviest first; a pair is kept when its partition has no owner yet and its member is
    under its share (``count // n``, or one more while fewer than ``count % n`` members have taken an
    extra). A partition therefore stays with the member that weighs it most unless that member is full,
    so a member joining or leaving moves few partitions besides its own share. With more members than
    partitions, some members own none.
    """
    names = sorted(set(members))
    owned: dict[str, list[int]] = {name: [] for name in names}
    if not names:
        return {}
    share, extras = divmod(count, len(names))
    pairs = sorted(
        ((_weight(name, partition), name, partition) for name in names for partition in range(count)),
        reverse=True,
    )
    owner_of: dict[int, str] = {}
    for _, name, partition in pairs:
        if partition in owner_of:
            continue
        load = len(owned[name])
        if load < share or (load == share and extras > 0):
            if load == share:
                extras -= 1
            owner_of[partition] = name
            owned[name].append(partition)
        if len(owner_of) == count:
            break
    return {name: tuple(sorted(parts)) for name, parts in owned.items()}


class Membership:
    """One member's heartbeat in the layout's registry (``{B}:members``), and the live members.

    Give ``ttl_ms`` at least the lease ttl: :class:`PartitionOwner` heartbeats once a step (every lease
    ttl/3), so a live member is never pruned between two of its heartbeats.
    """

    def __init__(self, client: Any, layout: PartitionLayout, member: str, *, ttl_ms: int) -> None:
        self.client = client
        self.key = members_key(layout)
        self.member = member
        self.ttl_ms = ttl_ms
        self._heartbeat = client.register_script(_HEARTBEAT)

    async def heartbeat(self) -> list[str]:
        """Renew this member, drop the expired ones, and return the live members, sorted."""
        names = await self._heartbeat(keys=[self.key], args=[self.member, self.ttl_ms])
        return sorted(_text(name) for name in names)

    async def leave(self) -> None:
        """Leave the registry now (at shutdown), so the others rebalance without waiting for expiry."""
        await self.client.zrem(self.key, self.member)


class PartitionOwner:
    """Keeps one member's leases in line with the assignment: each :meth:`step` heartbeats, computes
    :func:`assign_partitions` over the live members, releases the partitions no longer assigned here,
    renews the held ones that are due, and acquires the assigned ones that are free (one held
    elsewhere is left until its holder releases it or its lease expires).

    ``release_when(partition)`` is asked before a partition no longer assigned here is released: False
    keeps (and renews) its lease for another round, so that a consumer can finish and ack what it
    is handling there before the next owner starts."""

    def __init__(
        self,
        leases: PartitionLeases,
        membership: Membership,
        *,
        release_when: Callable[[int], bool] = lambda partition: True,
    ) -> None:
        if leases.consumer != membership.member:
            raise ValueError("the member name and the lease's consumer name must be the same")
        self.leases = leases
        self.membership = membership
        self.release_when = release_when
        self.held: dict[int, PartitionLease] = {}

    def owned(self) -> list[int]:
        """The partitions whose leases are valid here now."""
        return sorted(partition for partition, lease in self.held.items() if lease.valid())

    async def step(self) -> list[int]:
        """One round (see the class docstring); the partitions owned afterwards."""
        members = await self.membership.heartbeat()
        assigned = set(assign_partitions(self.leases.layout.count, members).get(self.leases.consumer, ()))
        for partition in sorted(set(self.held) - assigned):
            if self.release_when(partition):
                await self.leases.release(self.held.pop(partition))
        for partition, lease in sorted(self.held.items()):
            if (lease.renewal_due() or not lease.valid()) and not await self.leases.renew(lease):
                del self.held[partition]
        for partition in sorted(assigned - set(self.held)):
            taken = await self.leases.acquire(partition)
            if isinstance(taken, PartitionLease):
                self.held[partition] = taken
        return self.owned()

    async def release_all(self) -> None:
        """Release every lease and leave the registry (a graceful shutdown's hand-over)."""
        for partition in sorted(self.held):
            await self.leases.release(self.held.pop(partition))
        await self.membership.leave()

    async def run(self, stop: asyncio.Event) -> None:
        """:meth:`step` every ttl/3 until ``stop`` is set, then :meth:`release_all`."""
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.leases.ttl_ms / 3000)
        finally:
            await self.release_all()
