"""The handler runner on its own: what it reports per entry, and where sync handlers run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from streampipe_worker import handler_runner
from streampipe_worker.handler_runner import HandlerFailure, HandlerRunner
from streampipe_worker.router import Entry, PermanentError, batch, classify_handler

pytestmark = pytest.mark.timeout(30)


def entries(count: int) -> list[Entry]:
    return [Entry(f"1-{i}", {"n": str(i)}, 1, "s", "g") for i in range(count)]


@pytest.fixture
async def make_runner() -> AsyncIterator[Callable[..., HandlerRunner]]:
    made: list[HandlerRunner] = []

    def make(target: Callable[..., Any], concurrency: int = 8) -> HandlerRunner:
        runner = HandlerRunner(classify_handler(target), concurrency)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


async def test_sync_failures_are_named_by_position(make_runner: Callable[..., HandlerRunner]) -> None:
    def handler(entry: Entry) -> None:
        if int(entry.fields["n"]) % 3 == 0:
            raise ValueError(entry.id)

    result = await make_runner(handler).run(entries(7))
    assert result.started == 7
    assert len(result.durations) == 7
    assert [failure.position for failure in result.failures] == [0, 3, 6]
    assert all(isinstance(failure.error, ValueError) for failure in result.failures)


async def test_a_fast_sync_handler_moves_to_the_loop_and_a_slow_call_sends_it_back(
    make_runner: Callable[..., HandlerRunner],
) -> None:
    threads: list[str] = []
    slow = threading.Event()

    def handler(entry: Entry) -> None:
        threads.append(threading.current_thread().name)
        if slow.is_set():
            time.sleep(handler_runner.INLINE_CALL_LIMIT * 4)

    runner = make_runner(handler)
    for _ in range(handler_runner.INLINE_AFTER):
        assert not runner.inline
        await runner.run(entries(10))
    assert runner.inline  # proven fast: the next batch runs on the event loop
    assert all(name.startswith("handler") for name in threads)
    threads.clear()
    await runner.run(entries(10))
    assert threads == [threading.current_thread().name] * 10
    slow.set()
    threads.clear()
    result = await runner.run(entries(3))
    assert result.started == 3
    assert not result.failures
    assert not runner.inline  # a call over the limit: back on the handler thread
    assert threads[0] == threading.current_thread().name  # it started on the loop
    threads.clear()
    await runner.run(entries(2))
    assert all(name.startswith("handler") for name in threads)


async def test_stop_leaves_the_rest_unstarted(make_runner: Callable[..., HandlerRunner]) -> None:
    runner: HandlerRunner

    def handler(entry: Entry) -> None:
        if entry.id == "1-2":
            runner.stop()

    runner = make_runner(handler)
    result = await runner.run(entries(5))
    assert result.started == 3  # 1-0, 1-1 and 1-2 ran; nothing after the stop
    assert await runner.run(entries(2)) == handler_runner.BatchResult(started=0)


async def test_async_handler_runs_at_most_concurrency_at_once(
    make_runner: Callable[..., HandlerRunner],
) -> None:
    running = 0
    most = 0

    async def handler(entry: Entry) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if entry.id == "1-4":
            raise PermanentError("no")

    result = await make_runner(handler, concurrency=3).run(entries(10))
    assert most == 3
    assert result.started == 10
    assert len(result.durations) == 10
    assert [failure.position for failure in result.failures] == [4]


async def test_batch_handler_outcomes(make_runner: Callable[..., HandlerRunner]) -> None:
    boom = ValueError("boom")

    @batch
    def every_other(batch_entries: list[Entry]) -> list[BaseException | None]:
        return [boom if i % 2 else None for i in range(len(batch_entries))]

    result = await make_runner(every_other).run(entries(4))
    assert result.failures == [HandlerFailure(1, boom), HandlerFailure(3, boom)]
    assert result.started == 4
    assert len(result.durations) == 4


async def test_batch_handler_with_the_wrong_number_of_outcomes_fails_the_batch(
    make_runner: Callable[..., HandlerRunner],
) -> None:
    @batch
    async def short(batch_entries: list[Entry]) -> list[None]:
        return [None]

    result = await make_runner(short).run(entries(3))
    assert [failure.position for failure in result.failures] == [0, 1, 2]
    assert "1 outcomes for 3 entries" in str(result.failures[0].error)


async def test_batch_handler_that_raises_fails_every_entry(make_runner: Callable[..., HandlerRunner]) -> None:
    @batch
    def broken(batch_entries: list[Entry]) -> None:
        raise RuntimeError("down")

    result = await make_runner(broken).run(entries(2))
    assert [failure.position for failure in result.failures] == [0, 1]
    assert result.started == 2
