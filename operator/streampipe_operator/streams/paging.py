"""The one XRANGE pager of the operator's side: a stream read page by page, each page starting after
the previous page's last ID. The same rule for a blocking client (``streampipe dlq``) and an asyncio
one (``RedisAdmin.scan_after``, used by ``streampipe up``); the two loops differ only in ``await``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

Entry = tuple[str, dict[str, str]]


def after(entry_id: str) -> str:
    """The XRANGE bound for "strictly after ``entry_id``"."""
    return f"({entry_id}"


def _next_start(page: list[Entry], size: int) -> str | None:
    """Where the next page starts; None when ``page`` was the last one (shorter than asked)."""
    return after(page[-1][0]) if len(page) >= size else None


def scan(client: Any, key: str, *, start: str = "-", end: str = "+", size: int = 200) -> Iterator[Entry]:
    """Every entry of ``key`` from ``start`` to ``end``, ``size`` a round trip (blocking client)."""
    low: str | None = start
    while low is not None:
        page = client.xrange(key, min=low, max=end, count=size)
        yield from page
        low = _next_start(page, size)


async def ascan(
    client: Any, key: str, *, start: str = "-", end: str = "+", size: int = 1000
) -> AsyncIterator[Entry]:
    """Every entry of ``key`` from ``start`` to ``end``, ``size`` a round trip (asyncio client)."""
    low: str | None = start
    while low is not None:
        page = await client.xrange(key, min=low, max=end, count=size)
        for entry in page:
            yield entry
        low = _next_start(page, size)
