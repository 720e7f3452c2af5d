"""The archiver group's handler: ``handler: shop_handlers.archive:write_batch``, a batch function.

An archive writes many entries per round trip, so it takes the whole batch the worker read
(``batchSize`` entries at most) and reports one outcome per entry: an entry without a ``type`` field
cannot be filed anywhere, so it is dead-lettered (``PermanentError``) while the rest of the batch is
acknowledged.
"""

from __future__ import annotations

import logging

from streampipe_worker.router import Entry, Outcome, PermanentError, batch

log = logging.getLogger(__name__)


@batch
def write_batch(entries: list[Entry]) -> list[Outcome]:
    outcomes: list[Outcome] = [
        None if "type" in entry.fields else PermanentError(f"entry {entry.id} has no type field")
        for entry in entries
    ]
    log.info("archived %d of %d entries", outcomes.count(None), len(entries))
    return outcomes
