"""Which consumers to remove from their groups: gone (idle past a bound) and owing nothing.

``XGROUP DELCONSUMER`` drops the consumer's pending entries with it: they would never be delivered
again. So a consumer with pending entries is never removed, however long it has been idle; it is
reported instead (its entries wait for a survivor's XAUTOCLAIM). ``streams.admin`` re-checks
"no pending entries" atomically on the server when it deletes, because a consumer may read between
observation and deletion.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from pydantic import Field

from streampipe_operator.plan.frozen import Frozen
from streampipe_operator.plan.observed import GroupState


class DeleteConsumer(Frozen):
    """XGROUP DELCONSUMER stream group consumer (only if it still has nothing pending)."""

    group: str
    consumer: str
    idle: float
    reason: str


class StrandedConsumer(Frozen):
    """A consumer that looks gone but still holds pending entries: kept, and worth reporting."""

    group: str
    consumer: str
    pending: int
    idle: float


class ConsumerCleanup(Frozen):
    delete: tuple[DeleteConsumer, ...] = ()
    stranded: tuple[StrandedConsumer, ...] = Field(
        default=(), description="Gone, but holding pending entries"
    )


def plan_consumer_cleanup(
    groups: Sequence[GroupState],
    *,
    idle_after: float,
    live_consumers: AbstractSet[str] | None = None,
) -> ConsumerCleanup:
    """Consumers idle longer than ``idle_after`` seconds with no pending entries. Pure.

    With ``live_consumers`` (the names of running workers: pod names), a live consumer is never
    removed, however idle (it is waiting for entries), and one that is not live counts as gone.
    """
    delete: list[DeleteConsumer] = []
    stranded: list[StrandedConsumer] = []
    for group in groups:
        for consumer in group.consumers:
            if live_consumers is not None and consumer.name in live_consumers:
                continue
            if consumer.idle <= idle_after:
                continue
            if consumer.pending > 0:
                stranded.append(
                    StrandedConsumer(
                        group=group.name, consumer=consumer.name, pending=consumer.pending, idle=consumer.idle
                    )
                )
                continue
            delete.append(
                DeleteConsumer(
                    group=group.name,
                    consumer=consumer.name,
                    idle=consumer.idle,
                    reason=(
                        f"removed consumer {consumer.name} from group {group.name}: idle {consumer.idle:g}s "
                        f"> {idle_after:g}s, nothing pending"
                        + ("" if live_consumers is None else ", no running worker has that name")
                    ),
                )
            )
    return ConsumerCleanup(delete=tuple(delete), stranded=tuple(stranded))
