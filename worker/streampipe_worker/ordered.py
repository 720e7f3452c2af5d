"""A per-key ordering worker (``STREAMPIPE_ORDERING=PerKey``): one owner per partition, keys in order.

:class:`OrderedConsumer` joins the layout's membership registry under its consumer name (unique per
pod) and, every lease ttl/3, runs a :class:`~streampipe_worker.ownership.PartitionOwner` round: it
heartbeats, computes the even assignment over the live members, releases the partitions no longer
assigned here, renews its leases and acquires the assigned ones that are free. Each partition it owns
is worked by an :class:`~streampipe_worker.ordered_partition.OrderedPartition`; partitions run
concurrently, each with its handler calls one at a time.

While the layout record (:mod:`streampipe_worker.epochs`) names fewer partitions than this worker was
started with, it joins nothing and is not ready: the growth is not recorded yet, so there is no cutoff
to hold moved keys behind.

Hand-overs: a partition no longer assigned here (a pod joined) is first closed (no new reads, the
running batch ends after its current call, what succeeded is acked) and only then released, so the
next owner never runs a key's entries while this one still does. A lease lost instead (not renewed
in time, or refused by the server's fence) stops its partition at once, unacked. On a stop request
(SIGTERM) every partition is closed, handlers get ``shutdown_grace`` to finish, acks are flushed,
and every lease is released and the registry left, so the successors start without waiting for the
ttl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, RedisError

from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.epochs import LayoutEpochs
from streampipe_worker.groups import create_group
from streampipe_worker.metrics import Health, MergedMetrics, OwnershipMetrics, Stats, WorkerMetrics
from streampipe_worker.ordered_partition import OrderedPartition, PartitionParts
from streampipe_worker.ownership import Membership, PartitionLeases, PartitionOwner
from streampipe_worker.partitions import layout_key
from streampipe_worker.retry import RetryPolicy
from streampipe_worker.router import LoadedHandler
from streampipe_worker.settings import WorkerSettings

log = logging.getLogger("streampipe.worker")


@dataclass(frozen=True)
class RunningPartition:
    """A partition being worked here, and the task working it."""

    worker: OrderedPartition
    task: asyncio.Task[None]


class OrderedConsumer:
    """The partitions of ``settings.stream`` this process owns, each key's entries in order."""

    def __init__(
        self,
        settings: WorkerSettings,
        handler: LoadedHandler,
        *,
        client: Any = None,
        metrics: MergedMetrics | None = None,
        health: Health | None = None,
    ) -> None:
        """``metrics``, when given, gets the ownership metrics and each owned partition's."""
        layout = settings.layout
        if layout is None:
            raise ValueError("OrderedConsumer needs STREAMPIPE_PARTITIONS >= 1")
        self.settings = settings
        self.layout = layout
        self.client: Any = client or create_async_client(ConnectionSettings.from_worker(settings))
        self._owns_client = client is None
        ttl_ms = int(settings.lease_ttl.total_seconds() * 1000)
        self.interval = ttl_ms / 3000
        leases = PartitionLeases(self.client, layout, settings.group, settings.consumer, ttl_ms=ttl_ms)
        membership = Membership(self.client, layout, settings.consumer, ttl_ms=ttl_ms)
        self.owner = PartitionOwner(leases, membership, release_when=self._release_when)
        self.ownership = OwnershipMetrics(layout.base, settings.group)
        self.metrics = metrics or MergedMetrics([])
        self.metrics.parts.append(self.ownership)
        self.health = health or Health()
        # The owner loop beats once a round.
        self.health.stale_after = max(self.health.stale_after, 3 * self.interval)
        self.stats = Stats()
        # Without a key field no key moves when the layout grows, so nothing waits for a switch.
        self.epochs = (
            LayoutEpochs(self.client, layout, settings.group) if settings.partition_key is not None else None
        )
        self.parts = PartitionParts(
            leases=leases,
            handler=handler,
            policy=RetryPolicy(
                max_deliveries=settings.max_deliveries,
                backoff_initial=settings.backoff_initial,
                backoff_multiplier=settings.backoff_multiplier,
                backoff_max=settings.backoff_max,
                claim_idle=settings.claim_idle,
            ),
            key_field=settings.partition_key,
            batch_size=settings.batch_size,
            block=settings.block.total_seconds(),
            ownership=self.ownership,
            stats=self.stats,
            epochs=self.epochs,
        )
        self.running: dict[int, RunningPartition] = {}
        self.abandoned = 0  # entries whose handler calls were still running when the grace ended
        self._partition_metrics: dict[int, WorkerMetrics] = {}
        self._handing_over: set[int] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def owned(self) -> list[int]:
        """The partitions whose leases are valid here now."""
        return self.owner.owned()

    def request_stop(self) -> None:
        """Stop (SIGTERM): finish or abandon the running batches, ack, release, leave. Idempotent."""
        if not self._stopping.is_set():
            log.info("stop requested: handing over %d partitions", len(self.running))
        self._stopping.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    async def run(self) -> None:
        """Own, work and hand over partitions until :meth:`request_stop`."""
        try:
            if self.settings.create_group is not None:
                for stream in self.layout.streams:
                    await create_group(self.client, stream, self.settings.group, self.settings.create_group)
            await self._own()
            await self._shutdown()
        finally:
            for part in self.running.values():
                part.worker.close()
                part.task.cancel()
            await asyncio.gather(*(part.task for part in self.running.values()), return_exceptions=True)
            if self._owns_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()

    async def _own(self) -> None:
        while not self._stopping.is_set():
            # Refilled by _release_when during the step: a partition assigned here again meanwhile is
            # no longer being handed over.
            self._handing_over.clear()
            try:
                if not await self._layout_recorded():
                    await self._pause()
                    continue
                await self.owner.step()
                self.health.set_ready(True)
            except NoPermissionError:
                raise
            except (RedisError, OSError) as exc:
                # The leases held stay valid until their local deadlines; the next round tries again.
                log.warning("partition ownership round failed: %s; trying again in %.1fs", exc, self.interval)
                if not self.health.ready:
                    self.health.set_ready(False, f"cannot join {self.owner.membership.key}: {exc}")
            self._reconcile()
            await self._pause()

    async def _pause(self) -> None:
        self.health.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
        self._wake.clear()

    async def _layout_recorded(self) -> bool:
        """Whether this worker may own partitions: not while the layout record names fewer partitions
        than it was started with (the operator has not recorded the growth, so there is no cutoff to
        hold moved keys behind yet). Read every round, so the partitions also see new switches."""
        if self.epochs is None:
            return True
        record = await self.epochs.refresh()
        if self.epochs.ready() or self.running or record is None:
            return True
        waiting = (
            f"{layout_key(self.layout.base)} records {record.count} partitions, this worker was started "
            f"with {self.layout.count}: waiting for the operator to record the growth"
        )
        if self.health.reason != waiting:
            log.info("%s", waiting)
        self.health.set_ready(False, waiting)
        return False

    def _release_when(self, partition: int) -> bool:
        """Asked before a partition no longer assigned here is released: close it first."""
        part = self.running.get(partition)
        if part is None or part.task.done():
            self._handing_over.discard(partition)
            return True
        if not part.worker.closed:
            log.info("partition %s is assigned elsewhere now: handing it over", part.worker.stream)
            part.worker.close()
        self._handing_over.add(partition)
        return False

    def _reconcile(self) -> None:
        """Start a worker for each partition owned now; stop the ones whose lease is gone."""
        owned = set(self.owner.owned())
        for partition, part in list(self.running.items()):
            if part.task.done():
                del self.running[partition]
                self._finished(partition, part)
            elif partition not in owned:
                part.worker.lose("the lease was not renewed in time")
        # _finished drops the lease of a partition whose worker lost it: ask again before starting.
        owned = set(self.owner.owned())
        for partition in sorted(owned - set(self.running) - self._handing_over):
            self._start(partition)
        self.ownership.partitions_owned.set(len(owned))

    def _finished(self, partition: int, part: RunningPartition) -> None:
        error = None if part.task.cancelled() else part.task.exception()
        if isinstance(error, NoPermissionError):
            raise error
        if part.worker.lost:
            lease = self.owner.held.pop(partition, None)
            if lease is not None:
                lease.end()
        elif error is not None:
            log.error(
                "partition %s: %s: %s; it starts again from its pending entries next round",
                part.worker.stream,
                type(error).__name__,
                error,
            )

    def _start(self, partition: int) -> None:
        stream = self.layout.stream(partition)
        metrics = self._partition_metrics.get(partition)
        if metrics is None:
            metrics = self._partition_metrics[partition] = WorkerMetrics(stream, self.settings.group)
            self.metrics.parts.append(metrics)
        worker = OrderedPartition(self.parts, self.owner.held[partition], metrics)
        task = asyncio.create_task(worker.run(), name=f"partition {stream}")
        # A partition closed (handed over) or lost is released or re-acquired in the next round at
        # once; one that failed starts again a round later, not in a loop.
        task.add_done_callback(lambda _: self._wake.set() if worker.closed else None)
        self.running[partition] = RunningPartition(worker, task)
        log.info("partition %s taken (lease %s)", stream, worker.lease.value)

    async def _shutdown(self) -> None:
        self.health.set_ready(False, "shutting down")
        parts = list(self.running.values())
        for part in parts:
            part.worker.close()
        if parts:
            grace = self.settings.shutdown_grace.total_seconds()
            _, late = await asyncio.wait([part.task for part in parts], timeout=grace)
            for part in parts:
                if part.task in late:
                    self.abandoned += part.worker.in_flight
                    part.task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            for part in parts:
                if part.task in late:
                    with contextlib.suppress(Exception):
                        await part.worker.flush()  # what succeeded before the grace ran out
            if self.abandoned:
                log.warning("grace period over: %d entries were still being handled, unacked", self.abandoned)
        self.running.clear()
        try:
            await self.owner.release_all()
        except (RedisError, OSError) as exc:
            log.warning("could not release the leases (%s): they expire within the ttl", exc)
        self.ownership.partitions_owned.set(0)
        log.info(
            "stopped: processed=%d failed=%d dead_lettered=%d reclaimed=%d",
            self.stats.processed,
            self.stats.failed,
            self.stats.dead_lettered,
            self.stats.reclaimed,
        )
