"""The one Redis client factory: standalone, Sentinel or Cluster; TLS; ACL user and password.

The worker's clients (``create_async_client``, Cluster included) are made with redis-py's own retries
switched off. The consumer decides what is safe to repeat (an XACK is; a dead-letter XADD is only after
checking the PEL), so a command is never re-sent behind its back. The synchronous cluster client
(producers, CLI) keeps redis-py's cluster retries: a re-sent XADD is a duplicate, as a retry by the
caller would be.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import hiredis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

import redis
from streampipe_worker.settings import redact_url

if TYPE_CHECKING:
    from streampipe_worker.settings import WorkerSettings

# Both flavours the factory returns; the consumer uses only what they share (commands, pipelines).
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


class ConnectionSettings(BaseModel):
    """What it takes to reach the data. Built from ``WorkerSettings`` or by a CLI from its options."""

    model_config = ConfigDict(frozen=True)

    url: str = "redis://127.0.0.1:6379/0"
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    sentinel_master: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_insecure_skip_verify: bool = False
    client_name: str | None = None
    socket_timeout: float = Field(default=15.0, gt=0, description="Must exceed the XREADGROUP BLOCK time")

    @classmethod
    def from_worker(cls, settings: WorkerSettings) -> ConnectionSettings:
        return cls(
            url=settings.redis_url,
            mode=settings.redis_mode,
            sentinel_master=settings.sentinel_master,
            username=settings.redis_username,
            password=settings.redis_password,
            tls_ca_file=settings.tls_ca_file,
            tls_insecure_skip_verify=settings.tls_insecure_skip_verify,
            client_name=settings.consumer,
            socket_timeout=(settings.block + timedelta(seconds=10)).total_seconds(),
        )


class ParsedUrl(BaseModel):
    tls: bool
    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def parse_url(url: str, default_port: int = 6379) -> ParsedUrl:
    """``redis[s]://[user:pass@]host[:port][,host[:port]...][/db]``; several hosts for Sentinel."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"{redact_url(url)!r}: expected redis://host:port/db or rediss://host:port/db")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    hostpart, _, path = hostpart.partition("/")
    path = path.partition("?")[0]
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    for item in hostpart.split(","):
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        host = host or "127.0.0.1"
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"{redact_url(url)!r}: port {port!r} is not a number") from None
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"{redact_url(url)!r}: database {path!r} is not a number") from None
    return ParsedUrl(tls=scheme == "rediss", hosts=hosts, db=db, username=username, password=password)


def _common_options(cs: ConnectionSettings, parsed: ParsedUrl) -> dict[str, Any]:
    password = cs.password.get_secret_value() if cs.password is not None else parsed.password
    options: dict[str, Any] = {
        "username": cs.username or parsed.username,
        "password": password,
        "decode_responses": True,
        # Entries are not required to be UTF-8: odd bytes survive the round trip to the DLQ.
        "encoding_errors": "surrogateescape",
        "socket_timeout": cs.socket_timeout,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
    }
    if cs.client_name:
        options["client_name"] = cs.client_name
    if parsed.tls:
        options.update(_tls_options(cs))
    return options


def _tls_options(cs: ConnectionSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl": True}
    if cs.tls_insecure_skip_verify:
        options.update(ssl_cert_reqs=ssl.CERT_NONE, ssl_check_hostname=False)
    else:
        options.update(ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_check_hostname=True)
    if cs.tls_ca_file is not None:
        options["ssl_ca_certs"] = str(cs.tls_ca_file)
    return options


def _sentinel_options(options: dict[str, Any], parsed: ParsedUrl) -> dict[str, Any]:
    """Sentinels get TLS settings and the URL's own credentials, never the data nodes' password."""
    sentinel: dict[str, Any] = {
        key: value
        for key, value in options.items()
        if key not in ("username", "password", "db", "client_name")
    }
    if parsed.username or parsed.password:
        sentinel.update(username=parsed.username, password=parsed.password)
    return sentinel


def pack_command(args: Sequence[Any], encoder: Any = None) -> bytes:
    """One command in RESP, packed by hiredis (C): the packer of the hot paths (the async client's
    commands, ``Producer.send_many``'s XADDs).

    hiredis encodes strings as strict UTF-8 and takes str, bytes, int and float only. A string it
    cannot encode (an entry read with surrogateescape, sent back) is encoded by the client's
    ``encoder`` first, with the client's encoding and error handler; that encoder also reports an
    argument of another type (``None``) as ``DataError``, as redis-py does. Without an encoder such
    arguments raise ``UnicodeEncodeError`` / ``TypeError``.
    """
    first = args[0]
    if isinstance(first, str) and " " in first:
        # redis-py names a few commands as one argument ("CLIENT SETNAME"); split it, as it does.
        args = (*first.split(), *args[1:])
    elif isinstance(first, bytes) and b" " in first:
        args = (*first.split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(tuple(args))
    except (UnicodeEncodeError, TypeError):
        if encoder is None:
            raise
        encode = encoder.encode
        encoded: tuple[Any, ...] = tuple(
            bytes(arg) if isinstance(arg, bytearray) else encode(arg) for arg in args
        )
        packed = hiredis.pack_command(encoded)
    return packed


class _HiredisPacking:
    """Packs commands with hiredis (C) instead of redis.asyncio's Python packer.

    redis.asyncio builds a command by re-joining a growing bytes buffer per argument; for the
    1000-id XACK of every batch that was a third of the worker's CPU time. ``pack_command`` hands
    the arguments to hiredis as they are (redis-py's own hiredis serializer first copies them one by
    one in Python).
    """

    encoder: Any  # the connection's, set by redis-py

    def pack_command(self, *args: Any) -> list[bytes]:
        return [pack_command(args, self.encoder)]


class _EncoderPacker:
    """A sync connection's command packer: ``pack_command`` with the client's encoder."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder

    def pack(self, *args: Any) -> list[bytes]:
        return [pack_command(args, self._encoder)]


class _SurrogateSafePacking:
    """The synchronous twin of ``_HiredisPacking``: redis-py's sync connections pack with its own
    hiredis serializer, which encodes strictly, so fields read with surrogateescape (an entry that is
    not UTF-8, e.g. a dead letter being replayed) could not be written back."""

    encoder: Any  # the connection's, set by redis-py

    def _construct_command_packer(self, packer: Any) -> Any:
        return packer if packer is not None else _EncoderPacker(self.encoder)


_MIXED_CLASSES: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def _mix_into_connections(client: Any, mixin: type[Any]) -> None:
    """Make the client's pool open connections of its class with ``mixin`` in front (one class per
    pair, made once)."""
    pool = client.connection_pool
    base = pool.connection_class
    mixed = _MIXED_CLASSES.get((mixin, base))
    if mixed is None:
        name = f"{mixin.__name__.strip('_')}{base.__name__}"
        mixed = _MIXED_CLASSES[(mixin, base)] = type(name, (mixin, base), {})
    pool.connection_class = mixed


def create_async_client(cs: ConnectionSettings) -> AsyncClient:
    """A ``redis.asyncio`` client for the configured mode (connections are opened lazily)."""
    parsed = parse_url(cs.url, default_port=26379 if cs.mode == "sentinel" else 6379)
    options = _common_options(cs, parsed)
    # The same policy (no retries inside redis-py) in redis.asyncio's own class: given the sync one,
    # redis-py converts it and warns at every client's first connection.
    options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if cs.mode == "cluster":
        host, port = parsed.hosts[0]
        # The cluster client's default retries (10, through a topology refresh) re-sent a dead-letter
        # MULTI/EXEC whose reply was lost, past the consumer's PEL check: two envelopes. A failed
        # command still asks for the refresh, so the consumer's own retry finds the promoted replica.
        return redis.asyncio.cluster.RedisCluster(host=host, port=port, **options)
    if cs.mode == "sentinel":
        if not cs.sentinel_master:
            raise ValueError("sentinel mode needs a master name (STREAMPIPE_SENTINEL_MASTER)")
        sentinel_class: Any = redis.asyncio.sentinel.Sentinel  # redis-py leaves Sentinel untyped
        manager = sentinel_class(
            parsed.hosts, sentinel_kwargs=_sentinel_options(options, parsed), db=parsed.db, **options
        )
        master: AsyncClient = manager.master_for(cs.sentinel_master)
        _mix_into_connections(master, _HiredisPacking)
        return master
    host, port = parsed.hosts[0]
    client = redis.asyncio.Redis(host=host, port=port, db=parsed.db, **options)
    _mix_into_connections(client, _HiredisPacking)
    return client


def create_client(cs: ConnectionSettings) -> SyncClient:
    """The synchronous twin of ``create_async_client`` (producers, replay, CLI)."""
    parsed = parse_url(cs.url, default_port=26379 if cs.mode == "sentinel" else 6379)
    options = _common_options(cs, parsed)
    if cs.mode == "cluster":
        host, port = parsed.hosts[0]
        options.pop("retry")
        return redis.cluster.RedisCluster(host=host, port=port, **options)
    if cs.mode == "sentinel":
        if not cs.sentinel_master:
            raise ValueError("sentinel mode needs a master name (STREAMPIPE_SENTINEL_MASTER)")
        sentinel_class: Any = redis.sentinel.Sentinel  # redis-py leaves Sentinel untyped
        manager = sentinel_class(
            parsed.hosts, sentinel_kwargs=_sentinel_options(options, parsed), db=parsed.db, **options
        )
        sync_master: SyncClient = manager.master_for(cs.sentinel_master)
        _mix_into_connections(sync_master, _SurrogateSafePacking)
        return sync_master
    host, port = parsed.hosts[0]
    client = redis.Redis(host=host, port=port, db=parsed.db, **options)
    _mix_into_connections(client, _SurrogateSafePacking)
    return client
