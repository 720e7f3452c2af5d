"""Command packing on the hot paths: hiredis, with redis-py's own packer as the fallback."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.connection import PythonRespSerializer
from redis.exceptions import DataError

from streampipe_worker.connection import ConnectionSettings, create_async_client, pack_command


def reference(*args: Any) -> bytes:
    """What redis-py's pure-Python packer writes (the wire format both must agree on)."""
    serializer = PythonRespSerializer(
        6000, lambda value: str(value).encode() if not isinstance(value, bytes) else value
    )
    return b"".join(serializer.pack(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("XACK", "{orders}:events", "billing", *(f"1700000000000-{i}" for i in range(1000))),
        ("XADD", "s", "MAXLEN", "~", 1000, "*", "type", "order.created", "payload", '{"total": 1.5}'),
        ("SET", b"key", b"\x00\xff", "PX", 60000),
        ("CLIENT SETNAME", "worker-1"),  # redis-py's one-argument command names
        ("XADD", "s", "*", "name", "Zoë ✓"),
    ],
    ids=["xack-1000", "xadd-maxlen", "bytes", "two-word-command", "utf-8"],
)
def test_hiredis_packs_what_redis_py_would(args: tuple[Any, ...]) -> None:
    assert pack_command(args) == reference(*args)


def async_connection() -> Any:
    client: Any = create_async_client(ConnectionSettings(url="redis://127.0.0.1:1/0"))
    pool = client.connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)
    assert isinstance(connection, Connection)
    return connection


def test_strings_hiredis_cannot_encode_fall_back_to_the_clients_encoder() -> None:
    # An entry whose bytes are not UTF-8 is read with surrogateescape; acking or dead-lettering it
    # must send the original bytes back.
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeEncodeError):
        pack_command(("XADD", "s", "*", "payload", odd))  # no encoder given: hiredis alone cannot
    packed = b"".join(async_connection().pack_command("XADD", "s", "*", "payload", odd))
    assert packed == reference("XADD", "s", "*", "payload", b"\xff\xfe")


def test_bytearray_arguments_are_sent_as_their_bytes() -> None:
    packed = b"".join(async_connection().pack_command("SET", "k", bytearray(b"\x00v")))
    assert packed == reference("SET", "k", b"\x00v")


def test_a_bad_argument_type_is_reported_as_redis_py_reports_it() -> None:
    with pytest.raises(DataError):
        async_connection().pack_command("SET", "k", None)
