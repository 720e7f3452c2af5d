"""One worker process over every partition of a partitioned stream (``STREAMPIPE_PARTITIONS``).

Each partition gets its own ``Consumer``, with the partition's stream and dead-letter stream, all in
one event loop on one client (each consumer's reader still has its own connection, so a process
holds one blocked read per partition). They share the handler; each has its own leases, acks,
retries and metrics (``stream`` label = the partition's key), so a partition behaves exactly as an
unpartitioned stream does. Every worker reads every partition: entries are spread over the workers
by the consumer group of each partition, and nothing orders entries across workers.

A stop request stops every consumer; a consumer that fails (the Redis user may not read a partition,
say) stops the others, and its error is raised once they have settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.consumer import Consumer
from streampipe_worker.metrics import AllHealth, Health, MergedMetrics, WorkerMetrics
from streampipe_worker.router import LoadedHandler
from streampipe_worker.settings import WorkerSettings


class PartitionedConsumer:
    """The consumers of every partition of ``settings.stream`` (``settings.partitions`` of them)."""

    def __init__(
        self,
        settings: WorkerSettings,
        handler: LoadedHandler,
        *,
        client: Any = None,
        metrics: MergedMetrics | None = None,
        health: AllHealth | None = None,
    ) -> None:
        """``metrics`` and ``health``, when given, get every partition's (a server may show them
        already)."""
        layout = settings.layout
        if layout is None:
            raise ValueError("PartitionedConsumer needs STREAMPIPE_PARTITIONS >= 1")
        self.settings = settings
        self.layout = layout
        self.client: Any = client or create_async_client(ConnectionSettings.from_worker(settings))
        self._owns_client = client is None
        self.metrics = metrics or MergedMetrics([])
        self.health = health or AllHealth({})
        self.consumers: list[Consumer] = []
        for index in range(layout.count):
            part = settings.for_partition(index)
            consumer = Consumer(
                part,
                handler,
                client=self.client,
                metrics=WorkerMetrics(part.stream, part.group),
                health=self.health.parts.setdefault(part.stream, Health()),
            )
            self.metrics.parts.append(consumer.metrics)
            self.consumers.append(consumer)

    @property
    def abandoned(self) -> int:
        return sum(consumer.abandoned for consumer in self.consumers)

    def request_stop(self) -> None:
        for consumer in self.consumers:
            consumer.request_stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    async def run(self) -> None:
        """Run every partition's consumer until a stop request (or one fails: then all stop)."""
        tasks = [
            asyncio.create_task(consumer.run(), name=f"partition {consumer.stream}")
            for consumer in self.consumers
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [task for task in done if not task.cancelled() and task.exception() is not None]
            if failed:
                self.request_stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._owns_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()
