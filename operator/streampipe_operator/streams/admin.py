"""The operator's side of Redis: observe a stream, apply the planners' actions, explain failures.

An adapter over an already-built ``redis.asyncio`` client (``Redis`` or ``RedisCluster``, from the
worker's ``connection.create_async_client``, the one factory). It turns replies into the planners'
models (``plan.observed``) and plan actions into commands; it decides nothing itself.

Costs are bounded on purpose, because the operator polls every few seconds:

- observation is XINFO STREAM, XINFO GROUPS and the DLQ's XLEN, then one pipeline with XPENDING
  (summary) and XINFO CONSUMERS per group and MEMORY USAGE; both round trips are shared with the other
  pipelines of the same client observed in the same turn of the event loop (``round_trips``);
- a lag the server reports as nil (or that cannot be right, see ``plan.backlog``) is counted with
  ``XRANGE (last-delivered-id + COUNT lag_count_cap``; at the cap it becomes a lower bound. Choose the
  cap at least ``maxReplicas * backlogPerReplica`` and the scaling decision is the same as with the
  exact figure. A group positioned before the first entry needs no count (its lag is XLEN);
- retention counts are ``XRANGE ... COUNT cap`` too (see ``plan.retention.CountRequest``);
- approximate trims are sent in chunks of at most ``trim_chunk`` entries (``LIMIT``), at most
  ``max_trim_calls`` per action and pass, so no single call blocks the server for long.

Every Redis error leaves as a :class:`RedisAdminError` subclass whose message says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn, cast

import redis.exceptions

from streampipe_operator.plan.backlog import counted_lag, lag_from_server
from streampipe_operator.plan.consumers import DeleteConsumer
from streampipe_operator.plan.frozen import Frozen
from streampipe_operator.plan.groups import CreateGroup, DeleteKeys, DestroyGroup, GroupPlan
from streampipe_operator.plan.observed import (
    ConsumerState,
    GroupState,
    Lag,
    ServerState,
    StreamObservation,
    StreamState,
)
from streampipe_operator.plan.retention import (
    CountRequest,
    EntryCount,
    RetentionPlan,
    RetentionPolicy,
    TrimAction,
    plan_retention,
)
from streampipe_operator.streams import paging
from streampipe_operator.streams.round_trips import Queue, round_trips
from streampipe_worker.capabilities import ServerCapabilities, adetect_capabilities, keyless_target
from streampipe_worker.connection import AsyncClient
from streampipe_worker.entry_ids import EntryId

log = logging.getLogger(__name__)


# --- errors ------------------------------------------------------------------------------------------


class RedisAdminError(Exception):
    """A Redis operation failed; the message says what happened and what to check."""


class RedisUnreachableError(RedisAdminError):
    """No connection (refused, timed out, DNS, TLS, cluster down): retry later."""


class RedisAuthError(RedisAdminError):
    """The server refused the credentials (WRONGPASS, NOAUTH) or the ACL user lacks a permission (NOPERM)."""


class GroupMissingError(RedisAdminError):
    """NOGROUP: the consumer group (or the stream) is not there."""


class WrongKeyTypeError(RedisAdminError):
    """WRONGTYPE: the key exists and is not a stream."""


class RedisCommandError(RedisAdminError):
    """Any other error reply."""


def _address(client: Any) -> str:
    try:
        if hasattr(client, "get_default_node"):
            node = client.get_default_node()
            return f"cluster node {node.host}:{node.port}"
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    except Exception:  # only words an error message; never worth failing for
        return "the configured server"


def translate_error(
    exc: Exception, *, doing: str, where: str, stream: str | None = None, group: str | None = None
) -> RedisAdminError:
    """The typed, actionable error for a redis-py exception raised while ``doing`` something."""
    text = str(exc)
    upper = text.upper()
    rules: list[tuple[bool, type[RedisAdminError], str]] = [
        (
            isinstance(exc, redis.exceptions.AuthenticationError)
            or upper.startswith(("WRONGPASS", "NOAUTH")),
            RedisAuthError,
            f"Redis at {where} refused the credentials while {doing} ({text}); check the username and "
            f"password in the StreamPipeline's auth Secret",
        ),
        (
            isinstance(exc, redis.exceptions.NoPermissionError) or upper.startswith("NOPERM"),
            RedisAuthError,
            f"Redis at {where}: the ACL user may not do this while {doing} ({text}); grant it the stream "
            f"commands (e.g. +@stream +@read +@write +info +memory +eval) on the pipeline's keys",
        ),
        (
            # Not a RedisError: raised when a cluster client meets a server without cluster mode.
            isinstance(exc, redis.exceptions.RedisClusterException),
            RedisUnreachableError,
            f"Redis at {where} cannot be used as a cluster while {doing} ({text}); set spec.redis.mode "
            f"to the server's topology (standalone, sentinel or cluster)",
        ),
        (
            isinstance(exc, redis.exceptions.ClusterDownError),
            RedisUnreachableError,
            f"Redis cluster at {where} is down while {doing} ({text})",
        ),
        (
            isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError),
            RedisUnreachableError,
            f"cannot reach Redis at {where} while {doing} ({text or type(exc).__name__}); is the server "
            f"running and the URL in spec.redis right?",
        ),
        (
            upper.startswith("NOGROUP"),
            GroupMissingError,
            f"stream {stream}: group {group} missing (NOGROUP); the operator creates groups - is the "
            f"StreamPipeline applied?",
        ),
        (
            upper.startswith("WRONGTYPE"),
            WrongKeyTypeError,
            f"key {stream} exists and is not a stream (WRONGTYPE); choose another spec.stream or remove "
            f"that key",
        ),
    ]
    for matched, kind, message in rules:
        if matched:
            return kind(message)
    return RedisCommandError(f"Redis at {where} answered an error while {doing}: {text}")


# --- observation -------------------------------------------------------------------------------------


class ConsumerDeletion(Frozen):
    group: str
    consumer: str
    deleted: bool
    reason: str


class GroupResult(Frozen):
    """What applying one group action did (``changed=False``: it was already so)."""

    group: str
    action: str
    changed: bool
    reason: str


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _entry_id(value: Any) -> EntryId | None:
    if value is None:
        return None
    return EntryId.parse(_text(value))


def _edge_id(entry: Any) -> EntryId | None:
    """The ID of XINFO STREAM's first-entry / last-entry (an ``(id, fields)`` pair or None)."""
    if not entry:
        return None
    return _entry_id(entry[0])


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


_capabilities_cache: weakref.WeakKeyDictionary[Any, ServerCapabilities] = weakref.WeakKeyDictionary()
# Clients whose user may not run CONFIG GET: not asked again.
_config_refused: weakref.WeakSet[Any] = weakref.WeakSet()
# The last server-state reading per client: (time.monotonic(), state).
_server_states: weakref.WeakKeyDictionary[Any, tuple[float, ServerState]] = weakref.WeakKeyDictionary()


def _no_such_key(error: Exception) -> bool:
    return isinstance(error, redis.exceptions.ResponseError) and "no such key" in str(error).lower()


def _stream_state(info: Mapping[str, Any]) -> StreamState:
    return StreamState(
        length=int(info["length"]),
        first_entry_id=_edge_id(info.get("first-entry")),
        last_entry_id=_edge_id(info.get("last-entry")),
        last_generated_id=_entry_id(info["last-generated-id"]) or EntryId(0),
        entries_added=_optional_int(info.get("entries-added")),
        max_deleted_entry_id=_entry_id(info.get("max-deleted-entry-id")),
    )


def forget_server(client: Any) -> None:
    """Drop what is cached about ``client``'s server (after a failure: it may be another server now)."""
    _capabilities_cache.pop(client, None)
    _config_refused.discard(client)
    _server_states.pop(client, None)


async def _appendfsync(client: Any, node: Mapping[str, Any]) -> str | None:
    """CONFIG GET appendfsync; None for a user without ``+config|get`` (the documented ACL: CONFIG GET
    also reads passwords) or a server that renamed CONFIG, asked once per client."""
    if client in _config_refused:
        return None
    try:
        reply = await client.config_get("appendfsync", **node)
    except (redis.exceptions.NoPermissionError, redis.exceptions.ResponseError):
        _config_refused.add(client)
        return None
    return _decoded_config(reply).get("appendfsync") or None


def _server_state(info: Mapping[str, Any], appendfsync: str | None) -> ServerState:
    """From one ``INFO memory persistence`` reply (both sections in one mapping)."""
    policy = info.get("maxmemory_policy")
    return ServerState(
        used_memory=_optional_int(info.get("used_memory")),
        maxmemory=_optional_int(info.get("maxmemory")),
        maxmemory_policy=None if policy is None else _text(policy),
        aof_enabled=str(info["aof_enabled"]) == "1" if "aof_enabled" in info else None,
        appendfsync=appendfsync,
    )


def _decoded_config(reply: Any) -> dict[str, str]:
    """CONFIG GET's reply as str -> str, whatever the decoding and the protocol (dict or flat list)."""
    if isinstance(reply, Mapping):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    return {_text(key): _text(value) for key, value in items}


# Delete a consumer only if it has nothing pending *at that moment*: XGROUP DELCONSUMER would drop its
# pending entries, and a consumer can read between our observation and the deletion.
_DELETE_IF_NOTHING_PENDING = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def _group_details(stream: str, raw_groups: Sequence[Any], memory: bool) -> Queue:
    """Observation's second round trip: per group its pending summary, consumers and oldest unread entry,
    then the stream's memory."""

    def queue(pipe: Any) -> None:
        for raw in raw_groups:
            name = _text(raw["name"])
            pipe.xpending(stream, name)
            pipe.xinfo_consumers(stream, name)
            # The oldest entry the group has not read: its ID's time is the lag's age.
            pipe.xrange(stream, min=paging.after(_text(raw["last-delivered-id"])), max="+", count=1)
        if memory:
            pipe.memory_usage(stream)

    return queue


class RedisAdmin:
    """Observe and change one server's streams for the operator. Holds no state besides caches."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        lag_count_cap: int = 10_000,
        retention_count_cap: int = 10_000,
        trim_chunk: int = 10_000,
        max_trim_calls: int = 100,
        server_state_ttl: float = 0.0,
    ) -> None:
        self.client = client
        self.server_state_ttl = server_state_ttl  # see server_state
        self.lag_count_cap = lag_count_cap
        self.retention_count_cap = retention_count_cap
        self.trim_chunk = trim_chunk
        self.max_trim_calls = max_trim_calls
        self.where = _address(client)

    @contextlib.asynccontextmanager
    async def _errors(
        self, doing: str, stream: str | None = None, group: str | None = None
    ) -> AsyncIterator[None]:
        try:
            yield
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise translate_error(exc, doing=doing, where=self.where, stream=stream, group=group) from exc

    def _raise(
        self, exc: Exception, doing: str, stream: str | None = None, group: str | None = None
    ) -> NoReturn:
        raise translate_error(exc, doing=doing, where=self.where, stream=stream, group=group) from exc

    async def ping(self) -> None:
        """Raise :class:`RedisUnreachableError` / :class:`RedisAuthError` unless the server answers."""
        async with self._errors("checking the connection (PING)"):
            await self.client.ping()

    async def capabilities(self) -> ServerCapabilities:
        """What the server supports, asked once per client object and cached."""
        cached = _capabilities_cache.get(self.client)
        if cached is None:
            async with self._errors("detecting server capabilities (INFO, COMMAND DOCS)"):
                cached = await adetect_capabilities(self.client)
            _capabilities_cache[self.client] = cached
        return cached

    async def server_state(self) -> ServerState:
        """INFO memory / persistence and ``appendfsync`` where the user may read it (see
        :func:`_appendfsync`): read now, or with ``server_state_ttl`` (the operator's shared clients) a
        reading of this client's server at most that many seconds old, whichever admin took it."""
        read = _server_states.get(self.client)
        if read is not None and time.monotonic() - read[0] < self.server_state_ttl:
            return read[1]
        node = keyless_target(self.client)
        async with self._errors("reading INFO memory persistence, CONFIG GET appendfsync"):
            # One INFO for both sections: one round trip for the documented ACL user, two with CONFIG.
            info = await self.client.info("memory", "persistence", **node)
            appendfsync = await _appendfsync(self.client, node)
        state = _server_state(info, appendfsync)
        _server_states[self.client] = (time.monotonic(), state)
        return state

    # --- observe -------------------------------------------------------------------------------------

    async def observe_stream(
        self, stream: str, *, dead_letter: str | None = None, memory: bool = True
    ) -> StreamObservation:
        """Stream, groups (lag made trustworthy), pending summaries, consumers, memory and DLQ length."""

        # XINFO STREAM, XINFO GROUPS and the dead-letter stream's XLEN in one round trip, shared with
        # the other pipelines of this client observed in the same turn (``round_trips``).
        def head(pipe: Any) -> None:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            if dead_letter is not None:
                pipe.xlen(dead_letter)

        trips = round_trips(self.client)
        async with self._errors(f"reading XINFO STREAM / XINFO GROUPS {stream}", stream):
            info, raw_groups, *dead = await trips.execute(head)
            for reply in (info, raw_groups):
                if isinstance(reply, Exception) and not _no_such_key(reply):
                    raise reply
        dead_letter_length = None
        if dead_letter is not None:
            if isinstance(dead[0], Exception):
                self._raise(dead[0], f"reading XLEN {dead_letter}", dead_letter)
            dead_letter_length = int(dead[0])
        state = None if isinstance(info, Exception) else _stream_state(info)
        if state is None or isinstance(raw_groups, Exception):
            return StreamObservation(
                stream_key=stream,
                exists=False,
                dead_letter_key=dead_letter,
                dead_letter_length=dead_letter_length,
            )

        names = [_text(g["name"]) for g in raw_groups]
        async with self._errors(f"reading XPENDING / XINFO CONSUMERS of {stream}", stream):
            replies = await trips.execute(_group_details(stream, raw_groups, memory))

        groups: list[GroupState] = []
        for index, raw in enumerate(raw_groups):
            pending_reply, consumers_reply, unread_reply = replies[3 * index : 3 * index + 3]
            if self._group_gone(stream, names[index], pending_reply, consumers_reply):
                continue
            group = await self._group_state(stream, state, raw, pending_reply, consumers_reply)
            if unread_reply and not isinstance(unread_reply, Exception):
                group = group.model_copy(update={"oldest_unread_id": _entry_id(unread_reply[0][0])})
            groups.append(group)
        rest = replies[3 * len(names) :]
        # MEMORY USAGE is a nicety: an ACL user without +memory still gets everything else.
        memory_reply = rest.pop(0) if memory else None
        memory_bytes = (
            None if memory_reply is None or isinstance(memory_reply, Exception) else int(memory_reply)
        )
        return StreamObservation(
            stream_key=stream,
            exists=True,
            stream=state,
            groups=tuple(groups),
            memory_bytes=memory_bytes,
            dead_letter_key=dead_letter,
            dead_letter_length=dead_letter_length,
        )

    async def stream_state(self, stream: str) -> StreamState | None:
        """XINFO STREAM as a ``StreamState``; None when the key does not exist."""
        async with self._errors(f"reading XINFO STREAM {stream}", stream):
            try:
                info = await self.client.xinfo_stream(stream)
            except redis.exceptions.ResponseError as exc:
                if not _no_such_key(exc):
                    raise
                return None
        return _stream_state(info)

    async def value(self, key: str) -> str | None:
        """GET ``key`` (a partition's lease, say); None when it does not exist."""
        async with self._errors(f"reading {key}"):
            return cast(str | None, await self.client.get(key))

    async def entries_after(self, key: str, after: str, *, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries of ``key`` after the ID ``after`` (none when the key is missing)."""
        async with self._errors(f"reading XRANGE {key}", key):
            page = await self.client.xrange(key, min=paging.after(after), max="+", count=count)
        return cast(list[tuple[str, dict[str, str]]], page)  # the client decodes replies

    async def scan_after(self, key: str, after: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every entry of ``key`` after the ID ``after``, page by page (none when the key is missing)."""
        async with self._errors(f"reading XRANGE {key}", key):
            async for entry in paging.ascan(self.client, key, start=paging.after(after)):
                yield entry

    def _group_gone(self, stream: str, group: str, *replies: Any) -> bool:
        """True if the group was destroyed since XINFO GROUPS; other errors are raised."""
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("NOGROUP"):
                return True
            if isinstance(reply, Exception):
                self._raise(reply, f"reading group {group} of {stream}", stream, group)
        return False

    async def _group_state(
        self,
        stream: str,
        state: StreamState,
        raw: Mapping[str, Any],
        pending: Mapping[str, Any],
        consumers: Any,
    ) -> GroupState:
        name = _text(raw["name"])
        last_delivered = _entry_id(raw["last-delivered-id"]) or EntryId(0)
        entries_read = _optional_int(raw.get("entries-read"))
        lag = lag_from_server(
            _optional_int(raw.get("lag")),
            last_delivered_id=last_delivered,
            entries_read=entries_read,
            stream=state,
        )
        if lag is None:
            lag = await self.count_lag(stream, last_delivered)
        consumer_states = []
        for consumer in consumers:
            inactive = consumer.get("inactive")
            consumer_states.append(
                ConsumerState(
                    name=_text(consumer["name"]),
                    pending=int(consumer["pending"]),
                    idle=int(consumer["idle"]) / 1000,
                    inactive=None if inactive is None or int(inactive) < 0 else int(inactive) / 1000,
                )
            )
        return GroupState(
            name=name,
            last_delivered_id=last_delivered,
            entries_read=entries_read,
            lag=lag,
            pending=int(pending["pending"]),
            oldest_pending_id=_entry_id(pending.get("min")),
            consumers=tuple(consumer_states),
        )

    async def count_lag(self, stream: str, last_delivered_id: EntryId) -> Lag:
        """Count the entries after ``last_delivered_id`` (``XRANGE (id + COUNT lag_count_cap``)."""
        found = await self.count_entries(
            stream, CountRequest(start=last_delivered_id.successor(), cap=self.lag_count_cap)
        )
        return counted_lag(found.value, self.lag_count_cap)

    async def count_entries(self, stream: str, request: CountRequest) -> EntryCount:
        """Entries with ``start <= ID <= end`` up to ``request.cap`` (XRANGE; the cap bounds the cost)."""
        start = "-" if request.start is None else str(request.start)
        end = "+" if request.end is None else str(request.end)
        async with self._errors(f"counting entries of {stream} (XRANGE {start} {end})", stream):
            entries = await self.client.xrange(stream, start, end, count=request.cap)
        found = len(entries or ())
        return EntryCount(value=found, exact=found < request.cap)

    # --- groups and consumers ------------------------------------------------------------------------

    async def create_group(self, stream: str, action: CreateGroup) -> GroupResult:
        """XGROUP CREATE ... MKSTREAM [ENTRIESREAD n]; an existing group is left as it is."""
        args: list[Any] = ["XGROUP", "CREATE", stream, action.group, action.start_id, "MKSTREAM"]
        if action.entries_read is not None and (await self.capabilities()).lag_in_xinfo:
            args += ["ENTRIESREAD", action.entries_read]
        async with self._errors(f"creating group {action.group} on {stream}", stream, action.group):
            try:
                await self.client.execute_command(*args)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
                return GroupResult(
                    group=action.group, action="create", changed=False, reason="already exists"
                )
        return GroupResult(group=action.group, action="create", changed=True, reason=action.reason)

    async def destroy_group(self, stream: str, action: DestroyGroup) -> GroupResult:
        """XGROUP DESTROY (its pending list goes with it)."""
        async with self._errors(f"destroying group {action.group} on {stream}", stream, action.group):
            try:
                destroyed = int(await self.client.xgroup_destroy(stream, action.group))
            except redis.exceptions.ResponseError as exc:
                if "no such key" not in str(exc).lower():
                    raise
                destroyed = 0
        return GroupResult(
            group=action.group, action="destroy", changed=bool(destroyed), reason=action.reason
        )

    async def apply_group_plan(self, stream: str, plan: GroupPlan) -> list[GroupResult]:
        """Run a ``plan.groups`` plan in order."""
        results = []
        for action in plan.actions:
            if isinstance(action, CreateGroup):
                results.append(await self.create_group(stream, action))
            else:
                results.append(await self.destroy_group(stream, action))
        return results

    async def delete_consumer(self, stream: str, action: DeleteConsumer) -> ConsumerDeletion:
        """XGROUP DELCONSUMER, only if the consumer has no pending entries when it runs (atomic script).

        Without EVAL permission it falls back to XPENDING then DELCONSUMER, which leaves a short window
        in which a consumer that just read could lose its new pending entries; a warning says so.
        """
        group, consumer = action.group, action.consumer
        doing = f"removing consumer {consumer} from group {group} of {stream}"
        try:
            result = int(await self.client.eval(_DELETE_IF_NOTHING_PENDING, 1, stream, group, consumer))
        except redis.exceptions.NoPermissionError:
            log.warning("%s: EVAL not permitted; checking and deleting in two steps (not atomic)", doing)
            async with self._errors(doing, stream, group):
                pending = await self.client.xpending_range(stream, group, "-", "+", 1, consumername=consumer)
                result = -1 if pending else int(await self.client.xgroup_delconsumer(stream, group, consumer))
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            self._raise(exc, doing, stream, group)
        if result < 0:
            return ConsumerDeletion(
                group=group, consumer=consumer, deleted=False, reason="kept: it has pending entries again"
            )
        return ConsumerDeletion(group=group, consumer=consumer, deleted=True, reason=action.reason)

    # --- retention -----------------------------------------------------------------------------------

    async def retention_plan(
        self,
        observation: StreamObservation,
        policy: RetentionPolicy,
        *,
        now: float,
        recreating: Mapping[str, EntryId] | None = None,
        max_rounds: int = 3,
    ) -> RetentionPlan:
        """``plan.retention.plan_retention`` with the counts it asks for made (bounded XRANGEs)."""
        if observation.stream is None:
            return RetentionPlan()
        caps = await self.capabilities()
        counts: dict[CountRequest, EntryCount] = {}
        plan = RetentionPlan()
        for _ in range(max_rounds):
            plan = plan_retention(
                policy,
                observation.stream,
                observation.groups,
                now=now,
                xtrim_acked=caps.xtrim_acked,
                counts=counts,
                recreating=recreating,
                count_cap=self.retention_count_cap,
            )
            if not plan.missing_counts:
                break
            for request in plan.missing_counts:
                counts[request] = await self.count_entries(observation.stream_key, request)
        return plan

    async def trim(self, key: str, action: TrimAction) -> int:
        """Run one trim action on ``key``; returns the entries removed.

        Exact trims are one call. Approximate trims go in chunks of at most ``trim_chunk`` entries
        (``LIMIT``), never more than ``action.limit`` in total, until a call removes nothing or
        ``max_trim_calls`` calls were made (the next pass continues).
        """
        if action.acked and not (await self.capabilities()).xtrim_acked:
            raise RedisAdminError(
                f"{self.where} has no XTRIM ... ACKED; the plan was made for another server"
            )
        base: list[Any] = [
            "XTRIM",
            key,
            action.strategy,
            "~" if action.approximate else "=",
            action.threshold,
        ]
        tail: list[Any] = ["ACKED"] if action.acked else []
        doing = f"trimming {key} ({action.strategy} {action.threshold})"
        if action.acked and action.max_length is not None:
            return await self._trim_acked_length(key, action.max_length, doing)
        if not action.approximate:
            async with self._errors(doing, key):
                return int(await self.client.execute_command(*base, *tail))
        removed = 0
        for _ in range(self.max_trim_calls):
            chunk = self.trim_chunk if action.limit is None else min(self.trim_chunk, action.limit - removed)
            if chunk <= 0:
                break
            async with self._errors(doing, key):
                deleted = int(await self.client.execute_command(*base, "LIMIT", chunk, *tail))
            removed += deleted
            if deleted == 0:
                break
        return removed

    async def _trim_acked_length(self, key: str, max_length: int, doing: str) -> int:
        """``XTRIM key MAXLEN = n ACKED`` in steps of at most ``trim_chunk`` entries.

        An exact trim takes no ``LIMIT``, and an ``ACKED`` one checks each entry against every group,
        so a single call over a long backlog would block the server; each step asks for the length
        less one chunk (the server then removes at most that many, acknowledged ones only).
        """
        removed = 0
        for _ in range(self.max_trim_calls):
            async with self._errors(doing, key):
                length = int(await self.client.xlen(key))
                if length <= max_length:
                    break
                step = max(max_length, length - self.trim_chunk)
                deleted = int(await self.client.execute_command("XTRIM", key, "MAXLEN", "=", step, "ACKED"))
            removed += deleted
            if deleted == 0:
                break
        return removed

    async def apply_trims(
        self, stream: str, dead_letter: str | None, actions: Sequence[TrimAction]
    ) -> dict[str, int]:
        """Run trims in order (the order matters, see ``plan.retention``); entries removed per key."""
        removed: dict[str, int] = {}
        for action in actions:
            key = stream if action.target == "stream" else dead_letter
            if key is None:
                raise ValueError("a dead-letter trim needs the dead-letter stream's name")
            removed[key] = removed.get(key, 0) + await self.trim(key, action)
        return removed

    async def delete_keys(self, action: DeleteKeys) -> int:
        """DEL each key (one by one: in a cluster the keys may live in different slots)."""
        deleted = 0
        for key in action.keys:
            async with self._errors(f"deleting {key}", key):
                deleted += int(await self.client.delete(key))
        return deleted
