"""The fulfilment group: ``handler: quickstart_shop.fulfilment:router``.

``order.placed`` v1 events are fulfilled, a few milliseconds of pretend work each
(``QUICKSTART_WORK_MS``), with the failures every real pipeline meets:

- every 25th order meets a payment gateway timeout on its first delivery: a plain exception, so
  the worker retries it after the backoff and the second delivery succeeds;
- an amount above the card limit can never succeed: ``PermanentError``, dead-lettered at once;
- the "cursed-widget" item crashes the warehouse system every time: retried ``maxDeliveries``
  times with backoff, then dead-lettered;
- a payload that is not an ``OrderPlaced`` (say ``"order_id": "abc"``) never reaches this code: the
  Router rejects it and the worker dead-letters it at once.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from quickstart_shop.completions import record
from streampipe_worker.router import Entry, PermanentError, Router

router = Router()

CARD_LIMIT = 10_000.0
CURSED_ITEM = "cursed-widget"
FLAKY_EVERY = 25
WORK_SECONDS = float(os.environ.get("QUICKSTART_WORK_MS", "4")) / 1000


class OrderPlaced(BaseModel):
    """Payload of ``order.placed`` version 1."""

    order_id: int = Field(ge=0)
    customer: str = Field(min_length=1)
    item: str = Field(min_length=1)
    amount: float = Field(ge=0)


class GatewayTimeoutError(Exception):
    """The pretend payment gateway did not answer in time (transient: worth a retry)."""


class WarehouseCrashError(Exception):
    """The pretend warehouse system fails on this item, every time."""


@router.on("order.placed", version=1)
def fulfil(order: OrderPlaced, entry: Entry) -> None:
    time.sleep(WORK_SECONDS)
    if order.amount > CARD_LIMIT:
        raise PermanentError(f"order {order.order_id}: {order.amount:.2f} is above the card limit")
    if order.item == CURSED_ITEM:
        raise WarehouseCrashError(f"order {order.order_id}: the warehouse system crashed on {order.item}")
    if order.order_id % FLAKY_EVERY == 0 and entry.deliveries == 1:
        raise GatewayTimeoutError(f"order {order.order_id}: payment gateway timed out")
    record(entry)
