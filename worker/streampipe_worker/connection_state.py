"""Connection state: whether Redis answers, how long to wait before the next try, and what
readiness says meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from streampipe_worker.metrics import Health, WorkerMetrics

log = logging.getLogger("streampipe.worker")

MAX_DELAY = 5.0  # seconds; the wait doubles from 50 ms up to this, with jitter


class ConnectionState:
    """Tracks lost connections of one client: backs off, reports not-ready, drops pooled sockets."""

    def __init__(
        self,
        client: Any,
        health: Health,
        metrics: WorkerMetrics,
        pause: Callable[[float], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.client = client
        self.health = health
        self.metrics = metrics
        self._pause = pause
        self._stopping = stopping
        self.error_streak = 0  # failures since the last success

    def connected(self) -> None:
        """A command succeeded: ready again (unless shutting down)."""
        if self.error_streak:
            log.info("connection to Redis restored")
        self.error_streak = 0
        if not self._stopping():
            self.health.set_ready(True)

    def retry_delay(self) -> float:
        """Count one more failure; the wait before the next try (50 ms doubling to 5 s, jittered)."""
        self.error_streak += 1
        base: float = min(0.05 * 2 ** min(self.error_streak, 10), MAX_DELAY)
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    async def lost(self, where: str, exc: BaseException) -> None:
        """A lost connection (or failover reply) in ``where``: report it, reconnect later, wait."""
        self.metrics.connection_errors.inc()
        self.health.set_ready(False, f"redis unreachable: {exc}")
        delay = self.retry_delay()
        streak = self.error_streak
        level = logging.WARNING if streak <= 3 or streak % 20 == 0 else logging.DEBUG
        log.log(
            level,
            "%s: lost Redis connection (%s: %s); retrying in %.2fs",
            where,
            type(exc).__name__,
            exc,
            delay,
        )
        with contextlib.suppress(Exception):
            # Drop pooled sockets: after a failover they point at the demoted primary.
            await self.client.connection_pool.disconnect()
        await self._pause(delay)
