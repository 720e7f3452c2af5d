"""The worker's consumer group: wait for it, or create it (``STREAMPIPE_CREATE_GROUP``).

In a pod the operator owns the group: the worker waits, not-ready, while it is missing (``NOGROUP``).
A worker run on its own can create the group instead: with ``CREATE_GROUP`` set to ``$``, ``0`` or an
entry ID it sends ``XGROUP CREATE <stream> <group> <position> MKSTREAM`` when it starts, and again
when a read finds the group gone. ``BUSYGROUP`` (a peer, or an earlier run, created it first) is
success, so any number of workers may start at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions

from streampipe_worker.metrics import Health
from streampipe_worker.redis_errors import RedisErrorKind, classify
from streampipe_worker.settings import WorkerSettings

log = logging.getLogger("streampipe.worker")


async def create_group(client: Any, stream: str, group: str, position: str) -> bool:
    """``XGROUP CREATE ... MKSTREAM`` at ``position``: True when this call created the group, False
    when it existed already (``BUSYGROUP``). Other errors are raised."""
    try:
        await client.xgroup_create(stream, group, id=position, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


class GroupKeeper:
    """What a consumer does about its group: create it (when configured) or wait for it."""

    def __init__(
        self,
        client: Any,
        settings: WorkerSettings,
        health: Health,
        pause: Callable[[float], Awaitable[None]],
        retry_delay: Callable[[], float],
    ) -> None:
        self.client = client
        self.stream = settings.stream
        self.group = settings.group
        self.position = settings.create_group
        self.health = health
        self._pause = pause
        self._retry_delay = retry_delay
        self.created = 0  # how many times this process created the group (BUSYGROUP not counted)

    async def ensure(self) -> bool:
        """With ``CREATE_GROUP``: make sure the group exists. False when creation is off or the server
        cannot be reached now (the reader reports that and reconnects); other errors are raised."""
        if self.position is None:
            return False
        try:
            created = await create_group(self.client, self.stream, self.group, self.position)
        except Exception as exc:
            if classify(exc) is RedisErrorKind.TRANSIENT:
                return False
            raise
        if created:
            self.created += 1
            log.info(
                "stream %s: created group %s at %s (STREAMPIPE_CREATE_GROUP)",
                self.stream,
                self.group,
                self.position,
            )
        return True

    async def missing(self) -> None:
        """A read found no group (``NOGROUP``): create it again, or report it and wait."""
        if await self.ensure():
            return
        self.health.set_ready(False, "consumer group missing")
        log.error(
            "stream %s: group %s missing (NOGROUP); the operator creates groups: is the "
            "StreamPipeline applied?",
            self.stream,
            self.group,
        )
        await self._pause(self._retry_delay())
