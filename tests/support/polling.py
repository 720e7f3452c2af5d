"""The tests' one "poll until true" loop.

``within`` bounds a wait so that a hung test fails with a message; it never asserts speed. A probe that
raises ``AssertionError`` counts as "not yet" (its message is shown if time runs out), so a probe may
assert on what it reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Polled(Generic[T]):
    value: T
    elapsed: float = 0.0  # seconds until the probe held


def _attempt(probe: Callable[[], T]) -> tuple[bool, Any]:
    try:
        value = probe()
    except AssertionError as exc:
        return False, exc
    return bool(value), value


def _timed_out(what: str, within: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {within:g}s waiting for {what}; last seen: {last!r}")


def poll(probe: Callable[[], T], *, what: str, within: float, every: float = 0.05) -> Polled[T]:
    """Call ``probe`` until it returns something truthy; that value, and how long it took."""
    began = time.monotonic()
    while True:
        done, last = _attempt(probe)
        if done:
            return Polled(last, time.monotonic() - began)
        if time.monotonic() - began > within:
            raise _timed_out(what, within, last)
        time.sleep(every)


def eventually(
    probe: Callable[[], T], what: str = "condition", within: float = 30.0, *, every: float = 0.05
) -> T:
    """``probe``'s first truthy value; fails after ``within`` seconds."""
    return poll(probe, what=what, within=within, every=every).value


async def eventually_async(
    probe: Callable[[], T], what: str = "condition", within: float = 20.0, *, every: float = 0.02
) -> T:
    """:func:`eventually` for a test running on an event loop: it sleeps with ``asyncio.sleep``, so
    the tasks under test keep running."""
    began = time.monotonic()
    while True:
        done, last = _attempt(probe)
        if done:
            return last  # type: ignore[no-any-return]
        if time.monotonic() - began > within:
            raise _timed_out(what, within, last)
        await asyncio.sleep(every)
