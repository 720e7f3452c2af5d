"""Running ``streampipe up``: the embedded server, the loop of ticks until the duration ends or Ctrl-C,
the drain, and the summary (see :mod:`streampipe_operator.local.pipeline` for what a tick does)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from streampipe_operator.api import StreamPipeline
from streampipe_operator.local.demo import DemoCounts, DemoProducer
from streampipe_operator.local.embedded import EmbeddedServerError, EmbeddedValkey
from streampipe_operator.local.models import UpOptions, UpSummary, View
from streampipe_operator.local.pipeline import LocalPipeline
from streampipe_operator.local.processes import LocalRuntime
from streampipe_operator.streams.targets import CommandError, load_pipeline
from streampipe_worker.connection import ConnectionSettings, create_async_client

TICK = 0.5


class _Stop:
    """Ctrl-C once: stop producing, drain, stop. Twice (or SIGTERM): stop the workers now."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.requested.is_set():
            self.now.set()
        self.requested.set()

    def terminate(self) -> None:
        self.requested.set()
        self.now.set()


async def run_up(options: UpOptions, view: View) -> UpSummary:
    """Run the pipeline until the duration ends or Ctrl-C; the summary at the end."""
    pipeline = load_pipeline(options.file)
    embedded: EmbeddedValkey | None = None
    if options.redis_url is None:
        embedded = EmbeddedValkey(options.data_dir, persistence=options.persistence)
        try:
            await asyncio.to_thread(embedded.start)
        except EmbeddedServerError as exc:
            raise CommandError(str(exc)) from exc
    run_dir = (
        options.data_dir / "workers"
        if options.data_dir is not None
        else Path(tempfile.mkdtemp(prefix="streampipe-up-workers-"))
    )
    try:
        summary = await _run(pipeline, options, view, embedded, run_dir)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if options.data_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    view.finish(summary)
    return summary


async def _run(
    pipeline: StreamPipeline, options: UpOptions, view: View, embedded: EmbeddedValkey | None, run_dir: Path
) -> UpSummary:
    spec = pipeline.spec
    redis_url = options.redis_url or (embedded.url if embedded is not None else "")
    settings = ConnectionSettings(
        url=redis_url,
        mode="standalone" if embedded is not None else spec.redis.mode,
        sentinel_master=spec.redis.sentinel.master_name if spec.redis.sentinel is not None else None,
        client_name="streampipe-up",
        socket_timeout=5.0,  # as the operator's: a stalled server freezes the loop for 5 s at most
    )
    client: Any = create_async_client(settings)
    runtime = LocalRuntime(run_dir)
    local = LocalPipeline(
        pipeline,
        client=client,
        redis_url=redis_url,
        runtime=runtime,
        python_path=[options.file.resolve().parent, *(p.resolve() for p in options.python_path), Path.cwd()],
        embedded=embedded,
    )
    local.on_event = view.event
    loop = asyncio.get_running_loop()
    stop = _Stop()
    loop.add_signal_handler(signal.SIGINT, stop.interrupt)
    loop.add_signal_handler(signal.SIGTERM, stop.terminate)
    demo: DemoProducer | None = None
    demo_task: asyncio.Task[DemoCounts] | None = None
    try:
        starting = asyncio.create_task(local.start(options.file))
        await asyncio.wait(
            [starting, asyncio.create_task(stop.requested.wait())], return_when="FIRST_COMPLETED"
        )
        if not starting.done():
            starting.cancel()
            raise CommandError("interrupted while starting; nothing was produced")
        view.started(starting.result())
        if options.demo:
            demo = DemoProducer(client, spec.partition_layout or spec.stream, duration=options.duration)
            demo_task = asyncio.create_task(demo.run(), name="demo-producer")
        await _loop(local, view, options, stop, demo)
        if demo is not None and demo_task is not None:
            demo.stop()
            await demo_task
        view.update(local.snapshot("stopping workers", options.duration, demo))
        await local.stop_workers()
        summary = await local.summary(local.elapsed(), demo.counts if demo is not None else None)
        view.update(local.snapshot("stopped", options.duration, demo))
        return summary
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        if demo_task is not None and not demo_task.done():
            demo_task.cancel()
        await asyncio.to_thread(runtime.close, 5.0)
        with contextlib.suppress(Exception):
            await client.aclose()


async def _loop(
    local: LocalPipeline, view: View, options: UpOptions, stop: _Stop, demo: DemoProducer | None
) -> None:
    phase = "running"
    drain_until = 0.0
    while True:
        elapsed = local.elapsed()
        if phase == "running" and (
            stop.requested.is_set() or (options.duration is not None and elapsed >= options.duration)
        ):
            phase = "draining"
            drain_until = time.monotonic() + options.drain_timeout
            if demo is not None:
                demo.stop()
            local.log(
                "info", "draining: waiting until every group's backlog is zero (Ctrl-C again: stop now)"
            )
        await local.tick()
        if phase == "draining":
            if local.backlog_settled():
                local.log("info", "drained: every group's backlog is zero")
                break
            if stop.now.is_set():
                local.log("warning", "stopping before the backlog drained")
                break
            if time.monotonic() >= drain_until:
                local.log("warning", f"backlog not drained within --drain-timeout {options.drain_timeout:g}s")
                break
        view.update(local.snapshot(phase, options.duration, demo))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.now.wait() if phase == "draining" else stop.requested.wait(), TICK)
