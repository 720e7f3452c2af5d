"""The audit group's handler: ``handler: shop_handlers.audit:record``, a plain function.

An audit trail reads every entry of the stream in its own consumer group, whatever its type: it logs
one line per entry and never rejects one, so nothing it sees ends up in the dead-letter stream.
"""

from __future__ import annotations

import logging

from streampipe_worker.router import Entry

log = logging.getLogger(__name__)


def record(entry: Entry) -> None:
    log.info(
        "audit %s %s: type %s, delivery %d",
        entry.stream,
        entry.id,
        entry.fields.get("type", "unknown"),
        entry.deliveries,
    )
