"""Which clients the reader's own connection serves (streampipe_worker/read_channel.py): the factory's
standalone and Sentinel clients (RESP2); a Cluster client or a RESP3 client keeps redis-py's path."""

from __future__ import annotations

import redis.asyncio
import redis.asyncio.cluster

from streampipe_worker.acks import AckBuffer
from streampipe_worker.batch_reader import BatchReader
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.read_channel import ReadChannel
from streampipe_worker.settings import load_settings


def test_the_factorys_standalone_and_sentinel_clients_get_the_channel() -> None:
    standalone = create_async_client(ConnectionSettings(url="redis://127.0.0.1:1/0"))
    sentinel = create_async_client(
        ConnectionSettings(url="redis://127.0.0.1:1", mode="sentinel", sentinel_master="m")
    )
    assert ReadChannel.supports(standalone)
    assert ReadChannel.supports(sentinel)


def test_cluster_and_resp3_clients_keep_redis_pys_path() -> None:
    cluster = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1)
    resp3 = redis.asyncio.Redis(host="127.0.0.1", port=1, protocol=3)
    assert not ReadChannel.supports(cluster)
    assert not ReadChannel.supports(resp3)
    settings = load_settings(
        {}, redis_url="redis://127.0.0.1:1/0", stream="s", group="g", consumer="c", handler="m:f"
    )
    for client in (cluster, resp3):
        assert BatchReader(client, settings, AckBuffer(client, "s", "g", None)).channel is None
