"""The typed handler of the payload fuzzing test: ``STREAMPIPE_HANDLER=tests.chaos.fuzz_router:router``.

Two routes with pydantic payloads; anything else (unknown type or version, a payload that is not JSON
or does not validate) is an ``InvalidEventError`` and goes to the dead-letter stream. Successful calls
are recorded like ``recorder.handle`` records them.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streampipe_worker.router import Entry, Router
from tests.chaos.recorder import record

router = Router()


class OrderCreated(BaseModel):
    order_id: int = Field(ge=0)
    total: float = Field(ge=0, allow_inf_nan=False)
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class OrderCancelled(BaseModel):
    order_id: int = Field(ge=0)
    reason: str = Field(max_length=200)


@router.on("order.created", version=1)
def created(event: OrderCreated, entry: Entry) -> None:
    record(entry, "ok", time.monotonic_ns())


@router.on("order.cancelled", version=2)
def cancelled(event: OrderCancelled, entry: Entry) -> None:
    record(entry, "ok", time.monotonic_ns())
