"""Typed, pipelined producers: the ``type`` / ``version`` / ``payload`` envelope a Router reads.

Payloads are validated by the same pydantic models the consumer's Router uses (pass ``router=``), so a
producer cannot write an event the consumer would dead-letter as invalid.

``send_many`` packs each event's XADD as hiredis would (``_XaddPacker``: a prefix packed once per type
and version, then the payload's JSON bytes; building each command and packing it with hiredis took
40% of its time), joins a chunk's into one buffer and writes it on one pooled connection; the replies
are taken from the connection's hiredis reader in one loop (``_read_xadd_replies``), and an error
reply fails that entry only (``SendManyError``). redis-py's pipeline did the same round trip with a
Python call chain per command, which took a third of ``send_many``'s time. Cluster clients, which
route by slot, keep redis-py's pipeline.

Payloads are written as compact JSON by pydantic-core's Rust encoder (five times the standard
library's C encoder on the example event): values JSON has no type for are written as pydantic
writes them (datetimes in ISO 8601, UUIDs and enums by value), anything else as ``str(value)``;
NaN and infinities as ``NaN``/``Infinity``, as ``json.dumps`` writes them.

Given a ``PartitionLayout`` instead of a stream key, a producer routes each event to its partition's
stream by the layout's key field (``partitions.py``), or takes the partitions in turn when the layout
has no key field. Routing happens with the encoding, so an event without its key field is refused
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import hiredis
import redis.exceptions
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from streampipe_worker.connection import pack_command
from streampipe_worker.partitions import PartitionLayout, partition_of
from streampipe_worker.router import (
    DEFAULT_VERSION,
    PAYLOAD_FIELD,
    TYPE_FIELD,
    VERSION_FIELD,
    InvalidEventError,
    Router,
)

DEDUPE_KEY_FIELD = "dedupe_key"


class Event(BaseModel):
    """One event to send."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    type: str = Field(min_length=1)
    payload: Any
    version: int = DEFAULT_VERSION
    dedupe_key: str | None = Field(default=None, description="Same key = same event for DEDUPE_TTL")
    fields: dict[str, str] = Field(default_factory=dict, description="Extra fields, sent as they are")


def encode_event(event: Event, router: Router | None = None) -> dict[str, str]:
    """The stream fields of an event; validated against the router's model when one is given."""
    return EventEncoder(router)(event)


class EventEncoder:
    """:func:`encode_event` for many events: the router's model for each type and version, with its
    pydantic-core validator and serializer, looked up once (those lookups cost as much as validating a
    small payload)."""

    def __init__(self, router: Router | None) -> None:
        self.router = router
        self._codecs: dict[tuple[str, int], tuple[type[BaseModel], Any, Any]] = {}

    def _codec(self, event: Event) -> tuple[type[BaseModel], Any, Any] | None:
        if self.router is None:
            return None
        key = (event.type, event.version)
        found = self._codecs.get(key)
        if found is None:
            model = self.router.model_for(event.type, event.version)  # InvalidEventError: no route
            found = self._codecs[key] = (model, model.__pydantic_validator__, model.__pydantic_serializer__)
        return found

    def __call__(self, event: Event) -> dict[str, str]:
        return self.fields(event, self.body(event).decode())

    def body(self, event: Event) -> bytes:
        """The payload field: the payload's JSON (UTF-8), validated when there is a router."""
        payload = event.payload
        # type() first: isinstance against BaseModel runs pydantic's metaclass check, in Python.
        plain = type(payload) is dict or not isinstance(payload, BaseModel)
        codec = self._codec(event)
        if codec is not None and (plain or not isinstance(payload, codec[0])):
            _, validator, serializer = codec
            try:
                # What model_validate / model_dump_json call, without their Python wrappers.
                plain_payload = payload if plain else payload.model_dump()
                validated = validator.validate_python(plain_payload, strict=False)
            except Exception as exc:
                raise InvalidEventError(f"{event.type} v{event.version}: {exc}") from exc
            body: bytes = serializer.to_json(validated)
            return body
        if plain:
            return to_json(payload, fallback=str, inf_nan_mode="constants")
        dumped: str = payload.model_dump_json()
        return dumped.encode()

    def bodies(self, events: Sequence[Event]) -> list[bytes]:
        """``body`` of each event, with the common case (a dict payload) in one loop: the codec is looked
        up again only when the type or version changes. Any failure is left to ``body``, which raises it
        as it would for that event alone."""
        bodies: list[bytes] = []
        append, body, router = bodies.append, self.body, self.router
        last: tuple[str, int] | None = None
        validate: Any = None
        serialize: Any = None
        for event in events:
            payload = event.payload
            if type(payload) is not dict:
                append(body(event))
            elif router is None:
                append(to_json(payload, fallback=str, inf_nan_mode="constants"))
            else:
                if last is None or event.type != last[0] or event.version != last[1]:
                    codec = self._codec(event)  # InvalidEventError: no route
                    assert codec is not None
                    validate, serialize = codec[1].validate_python, codec[2].to_json
                    last = (event.type, event.version)
                try:
                    append(serialize(validate(payload, strict=False)))
                except Exception:
                    append(body(event))  # raises the same error, as InvalidEventError where it is one
        return bodies

    @staticmethod
    def fields(event: Event, body: str) -> dict[str, str]:
        """The stream fields of an event whose payload field is ``body``."""
        fields = {TYPE_FIELD: event.type, VERSION_FIELD: str(event.version), PAYLOAD_FIELD: body}
        if event.dedupe_key is not None:
            fields[DEDUPE_KEY_FIELD] = event.dedupe_key
        if event.fields:
            for name, value in event.fields.items():
                fields.setdefault(name, value)
        return fields


# The tail hiredis packs for an empty last argument: cut off a template's, the payload goes there.
_EMPTY_BULK = b"$0\r\n\r\n"


class _XaddPacker:
    """Each event's XADD in RESP, as ``hiredis.pack_command`` packs ``(*head, *fields)``, with less
    work per event: an event with no dedupe key and no extra fields is a packed
    prefix, made once per type and version, and its payload's JSON.

    A command hiredis cannot pack (a string that is not UTF-8, read with surrogateescape) is kept as
    the command: ``packed`` packs it with the connection's encoder, as ``connection.pack_command`` does.
    """

    def __init__(self, head: tuple[Any, ...]) -> None:
        self.head = head
        self._prefixes: dict[tuple[str, int], bytes] = {}

    def entry(self, event: Event, body: bytes) -> bytes | tuple[Any, ...]:
        if event.dedupe_key is None and not event.fields:
            prefix = self._prefixes.get((event.type, event.version))
            if prefix is not None:
                return b"%b$%d\r\n%b\r\n" % (prefix, len(body), body)
        fields = EventEncoder.fields(event, body.decode())
        command = (*self.head, *chain.from_iterable(fields.items()))
        try:
            if fields.keys() == {TYPE_FIELD, VERSION_FIELD, PAYLOAD_FIELD}:
                template = hiredis.pack_command((*command[:-1], ""))
                self._prefixes[(event.type, event.version)] = template[: -len(_EMPTY_BULK)]
            packed: bytes = hiredis.pack_command(command)
        except (UnicodeEncodeError, TypeError):
            return command
        return packed

    def packed(self, connection: Any, events: Sequence[Event], bodies: Sequence[bytes]) -> bytes:
        """The XADDs of these events, whose payload fields are ``bodies``, in one buffer."""
        entry = self.entry
        return _joined(connection, [entry(event, body) for event, body in zip(events, bodies, strict=True)])


def _joined(connection: Any, entries: list[bytes | tuple[Any, ...]]) -> bytes:
    """``_XaddPacker.entry`` results in one buffer (a command among them packed by the connection)."""
    try:
        return b"".join(entries)  # type: ignore[arg-type]  # TypeError: a command is among them
    except TypeError:
        encoder = connection.encoder
        return b"".join(
            [entry if isinstance(entry, bytes) else pack_command(entry, encoder) for entry in entries]
        )


class SendManyError(redis.exceptions.ResponseError):
    """The server refused some XADDs of a ``send_many`` (OOM, WRONGTYPE, ...): which, and why.

    ``ids`` holds the new entry id of every event sent, in order, ``None`` where the server refused
    it; ``errors`` maps those positions to the server's error. Events after the chunk that had the
    errors (or, with two chunks in flight, after the one behind it) were not sent (``len(ids)`` of
    ``total`` were).
    """

    def __init__(self, stream: str, ids: list[str | None], errors: dict[int, Exception], total: int) -> None:
        self.stream = stream
        self.ids = ids
        self.errors = errors
        self.total = total
        shown = "; ".join(f"#{index}: {error}" for index, error in list(errors.items())[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        unsent = total - len(ids)
        super().__init__(
            f"stream {stream}: the server refused {len(errors)} of {len(ids)} XADDs: {shown}{more}"
            + (f"; the remaining {unsent} events were not sent" if unsent else "")
        )


def _ids_of(stream: str, replies: Sequence[Any], before: list[str], total: int) -> list[str]:
    """A chunk's new entry ids; ``SendManyError`` if the server refused any of its XADDs."""
    ids: list[str | None] = list(before)
    errors: dict[int, Exception] = {}
    _collect(replies, ids, errors)
    if errors:
        raise SendManyError(stream, ids, errors, total)
    return [str(entry_id) for entry_id in ids[len(before) :]]


def _collect(replies: Sequence[Any], ids: list[str | None], errors: dict[int, Exception]) -> None:
    """Append a chunk's replies to ``ids`` (``None`` for a refusal, whose error goes to ``errors``)."""
    for reply in replies:
        if isinstance(reply, Exception):
            errors[len(ids)] = reply
            ids.append(None)
        else:
            # XADD's reply needs no response callback: the id as the client decodes it.
            ids.append(str(reply))


def _read_xadd_replies(connection: Any, count: int) -> list[Any]:
    """``count`` XADD replies of ``connection``: entry ids, an error reply (``ResponseError``) as a
    value in its place.

    With redis-py's hiredis parser on RESP2 the replies come straight from its reader, which returns
    error replies as exception objects; whenever the reader's buffer runs dry the parser reads the
    socket once more. This skips redis-py's per-reply call chain (``read_response`` twice, its health
    bookkeeping): 4 µs of the 13 µs ``send_many`` spent per event. An XADD without NOMKSTREAM
    answers an id (a string) or an error, so anything else the reader hands back is its "no whole
    reply buffered yet" marker (``False`` or a sentinel object, by redis-py version). Other parsers,
    and RESP3 (whose push messages redis-py must see), take the public ``read_response``.
    """
    parser: Any = getattr(connection, "_parser", None)
    reader: Any = getattr(parser, "_reader", None)
    if reader is None or not hasattr(parser, "read_from_socket") or str(connection.protocol or 2) != "2":
        return [_read_one(connection) for _ in range(count)]
    replies: list[Any] = []
    gets = reader.gets
    while len(replies) < count:
        reply = gets()
        if isinstance(reply, (str, bytes, redis.exceptions.ResponseError)):
            replies.append(reply)
        elif isinstance(reply, Exception):
            raise reply  # the server is loading, or the like: as read_response would raise it
        else:
            parser.read_from_socket()
    return replies


def _read_one(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as exc:
        return exc


class _Base:
    def __init__(
        self,
        client: Any,
        stream: str | PartitionLayout,
        *,
        router: Router | None = None,
        maxlen: int | None = None,
        approximate: bool = True,
        chunk_size: int = 1000,
    ) -> None:
        self.client = client
        self.layout = stream if isinstance(stream, PartitionLayout) else None
        # The stream key; for a partitioned pipeline its base name (errors name it).
        self.stream = stream.base if isinstance(stream, PartitionLayout) else stream
        self._turn = 0  # the next partition, when the layout spreads events evenly
        self.router = router
        self.encoder = EventEncoder(router)
        self.maxlen = maxlen
        self.approximate = approximate
        self.chunk_size = chunk_size

    def _xadd_args(self) -> dict[str, Any]:
        if self.maxlen is None:
            return {}
        return {"maxlen": self.maxlen, "approximate": self.approximate}

    def _xadd_head(self, stream: str) -> tuple[Any, ...]:
        """The arguments before the fields of the XADDs redis-py's ``xadd`` would send (same
        arguments, same order)."""
        trim: tuple[Any, ...] = ()
        if self.maxlen is not None:
            trim = ("MAXLEN", "~", self.maxlen) if self.approximate else ("MAXLEN", self.maxlen)
        return ("XADD", stream, *trim, "*")

    def partitions_of(self, events: Sequence[Event]) -> list[int] | None:
        """Each event's partition (None when the producer writes one stream). Without a key field the
        events take the partitions in turn, and the turn moves on.

        Raises ``InvalidEventError`` for an event without the layout's key field."""
        layout = self.layout
        if layout is None:
            return None
        count = layout.count
        if layout.key is None:
            start = self._turn
            self._turn = (start + len(events)) % count
            return [(start + offset) % count for offset in range(len(events))]
        field = layout.key
        partitions: list[int] = []
        for event in events:
            value = event.fields.get(field)
            if value is None:
                raise InvalidEventError(
                    f"{event.type} v{event.version}: no {field!r} field; the partitions of "
                    f"{layout.base} are chosen by it (pass key= to send, or fields={{{field!r}: ...}})"
                )
            partitions.append(partition_of(value, count))
        return partitions

    def _streams(self, events: Sequence[Event]) -> list[str]:
        """Each event's stream key."""
        partitions = self.partitions_of(events)
        if partitions is None:
            return [self.stream] * len(events)
        layout = self.layout
        assert layout is not None
        return [layout.stream(index) for index in partitions]

    def _event(
        self,
        type: str,
        payload: Any,
        version: int,
        dedupe_key: str | None,
        fields: Mapping[str, str] | None,
        *,
        key: str | None = None,
    ) -> Event:
        extra = dict(fields or {})
        if key is not None:
            if self.layout is None or self.layout.key is None:
                where = (
                    "one stream"
                    if self.layout is None
                    else "partitions in turn (its layout has no key field)"
                )
                raise ValueError(f"key={key!r}: this producer writes {where}, nothing routes by a key")
            extra[self.layout.key] = key
        return Event(type=type, payload=payload, version=version, dedupe_key=dedupe_key, fields=extra)


class Producer(_Base):
    """Send events with a synchronous client (``connection.create_client``).

    ``send`` is one XADD; ``send_many`` pipelines them in chunks (one round trip per ``chunk_size``).
    ``maxlen`` adds ``MAXLEN ~ n`` to every XADD.
    """

    def send(
        self,
        type: str,
        payload: Any,
        *,
        version: int = DEFAULT_VERSION,
        dedupe_key: str | None = None,
        fields: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> str:
        """One XADD. ``key`` sets the layout's key field (partitioned producers)."""
        event = self._event(type, payload, version, dedupe_key, fields, key=key)
        [stream] = self._streams([event])
        return str(self.client.xadd(stream, self.encoder(event), **self._xadd_args()))

    def send_many(self, events: Iterable[Event]) -> list[str]:
        """Validate everything first (nothing is sent if one event is invalid), then send the XADDs
        ``chunk_size`` at a time. Returns the new entry ids, in order; raises ``SendManyError`` once
        the server refused some (the chunk after theirs may have been sent already, none later).

        Two chunks are in flight on a plain client: the next chunk is packed and sent before the
        replies to the previous one are read, so the server works on one while the client packs the
        other (cluster clients take redis-py's pipeline, one chunk per round trip)."""
        events = list(events)
        pool = getattr(self.client, "connection_pool", None)  # cluster clients have none
        if pool is not None:
            partitions = self.partitions_of(events)
            return self._send_overlapped(pool, events, self.encoder.bodies(events), partitions)
        streams = self._streams(events)
        encoded = list(map(self.encoder, events))
        ids: list[str] = []
        for start in range(0, len(encoded), self.chunk_size):
            end = start + self.chunk_size
            replies = self._pipelined(encoded[start:end], streams[start:end])
            ids.extend(_ids_of(self.stream, replies, ids, len(encoded)))
        return ids

    def _packer(self, packers: dict[int, _XaddPacker], index: int) -> _XaddPacker:
        """Partition ``index``'s packer (index 0 is the one stream of an unpartitioned producer)."""
        found = packers.get(index)
        if found is None:
            stream = self.stream if self.layout is None else self.layout.stream(index)
            found = packers[index] = _XaddPacker(self._xadd_head(stream))
        return found

    def _packed(
        self,
        connection: Any,
        packers: dict[int, _XaddPacker],
        events: Sequence[Event],
        bodies: Sequence[bytes],
        partitions: Sequence[int] | None,
    ) -> bytes:
        """A chunk's XADDs in one buffer, each packed for its partition's stream."""
        if partitions is None:
            return self._packer(packers, 0).packed(connection, events, bodies)
        packer = self._packer
        return _joined(
            connection,
            [
                packer(packers, index).entry(event, body)
                for event, body, index in zip(events, bodies, partitions, strict=True)
            ],
        )

    def _send_overlapped(
        self, pool: Any, events: Sequence[Event], bodies: Sequence[bytes], partitions: list[int] | None
    ) -> list[str]:
        """Each chunk is packed (``_XaddPacker``, which cannot fail on a validated event) while the
        server works on the previous one."""
        packers: dict[int, _XaddPacker] = {}
        ids: list[str | None] = []
        errors: dict[int, Exception] = {}
        connection = pool.get_connection()
        try:
            unread = 0  # XADDs sent whose replies are not read yet (the previous chunk)
            for start in range(0, len(events), self.chunk_size):
                end = start + self.chunk_size
                routed = None if partitions is None else partitions[start:end]
                buffer = self._packed(connection, packers, events[start:end], bodies[start:end], routed)
                connection.send_packed_command([buffer])
                if unread:
                    _collect(_read_xadd_replies(connection, unread), ids, errors)
                unread = min(end, len(events)) - start
                if errors:
                    break  # this chunk went out already: its replies are read below, nothing more is sent
            if unread:
                _collect(_read_xadd_replies(connection, unread), ids, errors)
        except BaseException:
            # Replies may still be on their way: this socket must not serve another command.
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
        if errors:
            raise SendManyError(self.stream, ids, errors, len(events))
        return [str(entry_id) for entry_id in ids]

    def _pipelined(self, chunk: Sequence[dict[str, str]], streams: Sequence[str]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for fields, stream in zip(chunk, streams, strict=True):
            pipe.xadd(stream, fields, **self._xadd_args())
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies


class AsyncProducer(_Base):
    """``Producer`` for a ``redis.asyncio`` client (``connection.create_async_client``)."""

    async def send(
        self,
        type: str,
        payload: Any,
        *,
        version: int = DEFAULT_VERSION,
        dedupe_key: str | None = None,
        fields: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> str:
        event = self._event(type, payload, version, dedupe_key, fields, key=key)
        [stream] = self._streams([event])
        return str(await self.client.xadd(stream, self.encoder(event), **self._xadd_args()))

    async def send_many(self, events: Iterable[Event]) -> list[str]:
        """``Producer.send_many`` through redis.asyncio's pipeline (its commands are packed by
        ``connection.pack_command`` too); refused XADDs raise ``SendManyError`` the same way."""
        events = list(events)
        streams = self._streams(events)
        encoded = list(map(self.encoder, events))
        ids: list[str] = []
        for start in range(0, len(encoded), self.chunk_size):
            end = start + self.chunk_size
            pipe = self.client.pipeline(transaction=False)
            for fields, stream in zip(encoded[start:end], streams[start:end], strict=True):
                pipe.xadd(stream, fields, **self._xadd_args())
            ids.extend(_ids_of(self.stream, await pipe.execute(raise_on_error=False), ids, len(encoded)))
        return ids
