"""Completion records, so that `streampipe up` can report end-to-end latency.

After a handler finishes an entry it XADDs ``{id, done_ms, deliveries, group, consumer}`` to
``<stream>:done``. ``streampipe up`` reads that stream at the end: latency = ``done_ms`` minus the
millisecond timestamp in the entry's ID (the time the server accepted the XADD), i.e. from "produced"
to "handler finished", queueing and retries with their backoff included (the batch's XACK follows).

One extra XADD per entry costs a round trip; fine for a quickstart, not for a hot path.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from streampipe_worker.connection import ConnectionSettings, create_client
from streampipe_worker.router import Entry
from streampipe_worker.settings import load_settings

SUFFIX = ":done"
MAX_RECORDS = 200_000

_local = threading.local()


def _client() -> tuple[Any, str]:
    # The worker's own settings and client factory: same server, same credentials, same TLS.
    if not hasattr(_local, "client"):
        settings = load_settings()
        _local.client = create_client(ConnectionSettings.from_worker(settings))
        _local.consumer = settings.consumer
    return _local.client, _local.consumer


def record(entry: Entry) -> None:
    """Note that ``entry`` is done (call it last, when the handler succeeded)."""
    client, consumer = _client()
    client.xadd(
        entry.stream + SUFFIX,
        {
            "id": entry.id,
            "done_ms": str(int(time.time() * 1000)),
            "deliveries": str(entry.deliveries),
            "group": entry.group,
            "consumer": consumer,
        },
        maxlen=MAX_RECORDS,
        approximate=True,
    )
