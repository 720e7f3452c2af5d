"""``Producer.send_many`` on real servers: what it writes, and what it reports when the server refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis._parsers import _RESP2Parser

import redis
from streampipe_worker.connection import ConnectionSettings, create_async_client, create_client
from streampipe_worker.producer import AsyncProducer, Event, Producer, SendManyError, encode_event
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.timeout(60)

STREAM = "{orders}:events"


def events(count: int, **extra: object) -> list[Event]:
    return [
        Event(type="order.created", payload={"order_id": i, "total": i * 1.5}, **extra)  # type: ignore[arg-type]
        for i in range(count)
    ]


def test_send_many_writes_each_event_as_xadd_would_in_order(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = create_client(ConnectionSettings(url=redis_url))
    sent = events(2500, fields={"source": "test"}) + events(3, dedupe_key="pay-1")
    ids = Producer(client, STREAM, chunk_size=1000).send_many(sent)  # three chunks and a bit
    stored = redis_client.xrange(STREAM)
    assert ids == [entry_id for entry_id, _ in stored]
    assert [fields for _, fields in stored] == [encode_event(event) for event in sent]


def test_a_refused_chunk_stops_the_sending_after_the_chunk_in_flight_behind_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Two chunks are in flight: when the first chunk's replies show refusals, the second is on its way
    # already (its replies are read, so the connection stays usable), and the third is never sent.
    client = create_client(ConnectionSettings(url=redis_url))
    redis_client.set("not-a-stream", "x")
    with pytest.raises(SendManyError) as raised:
        Producer(client, "not-a-stream", chunk_size=1000).send_many(events(2500))
    error = raised.value
    assert (len(error.ids), len(error.errors), error.total) == (2000, 2000, 2500)
    assert set(error.ids) == {None}
    assert sorted(error.errors) == list(range(2000))
    assert client.ping()
    ids = Producer(client, STREAM, chunk_size=1000).send_many(events(2500))  # the same connection
    assert ids == [entry_id for entry_id, _ in redis_client.xrange(STREAM)]


@pytest.mark.parametrize(
    "options",
    [{"protocol": 3}, {"parser_class": _RESP2Parser}],
    ids=["resp3", "python-parser"],
)
def test_send_many_reads_replies_one_by_one_where_the_hiredis_reader_is_not_used(
    redis_url: str, redis_client: redis.Redis, options: dict[str, object]
) -> None:
    # The reply loop reads hiredis' RESP2 reader directly; any other parser or protocol takes
    # redis-py's read_response, with the same ids and the same refusals.
    client = redis.Redis.from_url(redis_url, decode_responses=True, **options)  # type: ignore[arg-type]
    redis_client.set("not-a-stream", "x")
    sent = events(1500)
    ids = Producer(client, STREAM, chunk_size=1000).send_many(sent)
    assert ids == [entry_id for entry_id, _ in redis_client.xrange(STREAM)]
    with pytest.raises(SendManyError) as raised:
        Producer(client, "not-a-stream").send_many(sent[:3])
    assert sorted(raised.value.errors) == [0, 1, 2]
    assert all(isinstance(e, redis.exceptions.ResponseError) for e in raised.value.errors.values())
    assert client.ping()
    client.close()


@pytest.mark.parametrize("approximate", [True, False], ids=["maxlen-approximate", "maxlen-exact"])
def test_send_many_trims_with_maxlen(redis_url: str, redis_client: redis.Redis, approximate: bool) -> None:
    client = create_client(ConnectionSettings(url=redis_url))
    Producer(client, STREAM, maxlen=500, approximate=approximate, chunk_size=700).send_many(events(3000))
    length = redis_client.xlen(STREAM)
    if approximate:
        assert 500 <= length < 3000  # MAXLEN ~ trims whole nodes only
    else:
        assert length == 500


def test_fields_that_are_not_utf_8_arrive_byte_for_byte(redis_url: str, redis_server: ServerProcess) -> None:
    # The client reads such bytes with surrogateescape; a replayed or forwarded entry sends them back.
    odd = b"\xff\xfeok".decode("utf-8", "surrogateescape")
    client = create_client(ConnectionSettings(url=redis_url))
    [entry_id] = Producer(client, STREAM).send_many(events(1, fields={"raw": odd}))
    with redis.Redis(port=redis_server.port) as raw:
        [(stored_id, fields)] = raw.xrange(STREAM)
    assert stored_id.decode() == entry_id
    assert fields[b"raw"] == b"\xff\xfeok"


def test_refused_xadds_are_reported_per_entry_and_the_connection_stays_usable(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("valkey9")
    admin = server.client()
    client = create_client(ConnectionSettings(url=server.url))
    used = int(admin.info("memory")["used_memory"])
    # Room for a few dozen 8 KB events: the server starts refusing XADDs (OOM) in the middle of a
    # pipelined chunk, so one chunk holds both written and refused entries.
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(used + 400_000))
    big = [Event(type="blob", payload={"n": i, "data": "x" * 8000}) for i in range(300)]
    producer = Producer(client, STREAM, chunk_size=100)
    with pytest.raises(SendManyError) as raised:
        producer.send_many(big)
    error = raised.value
    written = [entry_id for entry_id in error.ids if entry_id is not None]
    assert written  # some made it ...
    assert error.errors  # ... and some were refused, each with the server's reason
    assert all(isinstance(reason, redis.exceptions.OutOfMemoryError) for reason in error.errors.values())
    assert sorted(error.errors) == [i for i, entry_id in enumerate(error.ids) if entry_id is None]
    assert error.total == 300
    assert len(error.ids) % 100 == 0  # sending stopped after the chunk that had refusals
    assert [entry_id for entry_id, _ in admin.xrange(STREAM)] == written
    admin.config_set("maxmemory", "0")
    # Every reply of the failed chunk was read: the pooled connection answers the next command.
    assert len(producer.send_many(big[:10])) == 10
    assert client.xlen(STREAM) == len(written) + 10


async def test_the_async_producer_reports_refused_xadds_the_same_way(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("valkey9")
    admin = server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) + 400_000))
    client = create_async_client(ConnectionSettings(url=server.url))
    big = [Event(type="blob", payload={"n": i, "data": "x" * 8000}) for i in range(300)]
    try:
        with pytest.raises(SendManyError) as raised:
            await AsyncProducer(client, STREAM, chunk_size=100).send_many(big)
    finally:
        await client.aclose()
    error = raised.value
    assert error.errors
    assert sorted(error.errors) == [i for i, entry_id in enumerate(error.ids) if entry_id is None]
    assert [entry_id for entry_id, _ in admin.xrange(STREAM)] == [i for i in error.ids if i is not None]
