"""The billing group's handler: ``STREAMPIPE_HANDLER=shop_handlers.billing:router``.

``order.created`` v1 events are charged through a pretend payment gateway:

- a total above the card limit can never succeed: ``PermanentError``, dead-lettered at once;
- the gateway times out on the first attempt for every 50th order: a plain exception, retried
  with backoff (the second delivery succeeds);
- everything else is charged.

The producer side uses the same router, so it cannot send an event this handler would reject as
invalid: ``Producer(client, "{orders}:events", router=router).send("order.created", {...})``.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from streampipe_worker.router import Entry, PermanentError, Router

log = logging.getLogger(__name__)
router = Router()

CARD_LIMIT = 10_000.0


class OrderCreated(BaseModel):
    """Payload of ``order.created`` version 1."""

    order_id: int = Field(ge=0)
    total: float = Field(ge=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class GatewayTimeoutError(Exception):
    """The pretend payment gateway did not answer in time (transient)."""


@router.on("order.created", version=1)
def charge(event: OrderCreated, entry: Entry) -> None:
    if event.total > CARD_LIMIT:
        raise PermanentError(
            f"order {event.order_id}: {event.total} {event.currency} is above the card limit"
        )
    if event.order_id % 50 == 7 and entry.deliveries == 1:
        raise GatewayTimeoutError(f"order {event.order_id}: payment gateway timed out")
