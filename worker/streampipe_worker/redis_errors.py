"""What a redis-py error means to the worker, and the one way it retries through the transient ones.

:func:`classify` sorts an exception into a :class:`RedisErrorKind`; :func:`retry_while_transient`
repeats an operation while it fails transiently, until its caller gives up.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable

import redis.exceptions

# What a lost or refused connection looks like; a failover's READONLY reply included.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    ConnectionError,
    OSError,
)
# Error replies that mean "this node cannot serve you right now" (a failover, a cluster reshard, a
# replica that is loading): like a lost connection, they are waited out, never treated as bugs.
TRANSIENT_REPLIES = frozenset({"UNBLOCKED", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN"})


class RedisErrorKind(enum.Enum):
    """How the worker treats an error."""

    TRANSIENT = "transient"  # a lost connection or a failover reply: reconnect and try again
    GROUP_MISSING = "group missing"  # NOGROUP: wait for the operator to create the group
    OTHER = "other"  # anything else: a bug or a refusal (NOPERM) that no retry mends


def classify(exc: BaseException) -> RedisErrorKind:
    """The kind of ``exc``; exceptions that are not Redis errors are ``OTHER``."""
    if isinstance(exc, CONNECTION_ERRORS):
        return RedisErrorKind.TRANSIENT
    if isinstance(exc, redis.exceptions.ResponseError):
        text = str(exc)
        if text.split(" ", 1)[0].upper() in TRANSIENT_REPLIES:
            return RedisErrorKind.TRANSIENT
        if "NOGROUP" in text:
            return RedisErrorKind.GROUP_MISSING
    return RedisErrorKind.OTHER


def is_transient(exc: BaseException) -> bool:
    """A lost connection or an error reply that a reconnect (after a failover) cures."""
    return classify(exc) is RedisErrorKind.TRANSIENT


async def retry_while_transient(
    operation: Callable[[], Awaitable[None]],
    *,
    delay: Callable[[int], float],
    give_up: Callable[[int], bool],
    on_error: Callable[[BaseException, int], None] | None = None,
) -> BaseException | None:
    """Run ``operation`` until it succeeds (None) or fails transiently and ``give_up(attempt)`` says so
    (then the last error is returned). A non-transient error is raised at once.

    After failure number ``attempt`` (1, 2, ...), ``on_error(exc, attempt)`` is told, then
    ``give_up(attempt)`` decides, then the next try waits ``delay(attempt)`` seconds.
    """
    attempt = 0
    while True:
        try:
            await operation()
            return None
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            if on_error is not None:
                on_error(exc, attempt)
            if give_up(attempt):
                return exc
        await asyncio.sleep(delay(attempt))
