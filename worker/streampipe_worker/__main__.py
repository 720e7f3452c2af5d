"""``streampipe-worker`` / ``python -m streampipe_worker``: run one consumer from the environment.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for bad settings or an unusable handler, 3 when
the Redis user lacks a permission the worker needs (one message, no traceback), 1 for anything
unexpected. ``--check`` validates settings and imports the
handler without consuming (``--check --ping`` also connects), for image smoke tests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import NoPermissionError

from streampipe_worker import __version__
from streampipe_worker.settings import SettingsError, WorkerSettings, load_settings, redact_url

# The collector's first threshold once start-up is done (CPython's is 700; the older generations keep
# theirs). A batch keeps thousands of young container objects alive (reply lists, field dicts,
# entries) until it settles, so at 700 a generation-0 collection ran several times per batch to free
# nothing: those objects die by reference counting. Cyclic garbage (a caught exception's traceback,
# say) still goes within this many net allocations: about 2 MiB more at one small cycle per entry,
# against 24 MiB at 100,000 for no further gain (bench/compare.py --only soak,throughput).
GC_THRESHOLD = (10_000, 10, 10)
# As the interpreter started: a handler module that sets its own thresholds at import keeps them.
_STARTUP_GC_THRESHOLD = gc.get_threshold()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streampipe-worker",
        description="Consume a Redis/Valkey stream with a handler; configured by STREAMPIPE_* variables.",
    )
    parser.add_argument("--check", action="store_true", help="validate settings and the handler, then exit")
    parser.add_argument("--ping", action="store_true", help="with --check: also connect and PING")
    parser.add_argument("--version", action="version", version=f"streampipe-worker {__version__}")
    return parser


async def _ping(settings: WorkerSettings) -> str:
    from streampipe_worker.connection import ConnectionSettings, create_async_client

    client: Any = create_async_client(ConnectionSettings.from_worker(settings))
    try:
        await client.ping()
        return "ok"
    finally:
        await client.aclose()


def check(settings: WorkerSettings, ping: bool) -> int:
    from streampipe_worker.router import HandlerLoadError, load_handler

    try:
        handler = load_handler(settings.handler)
    except HandlerLoadError as exc:
        print(f"streampipe-worker: {exc}", file=sys.stderr)
        return 2
    report = {
        "ok": True,
        "version": __version__,
        "python": sys.version.split()[0],
        "handler": settings.handler,
        "handler_kind": ("async " if handler.is_async else "") + ("batch" if handler.is_batch else "entry"),
        "stream": settings.stream,
        "partitions": settings.partitions,
        "ordering": settings.ordering,
        "partition_key": settings.partition_key,
        "group": settings.group,
        "consumer": settings.consumer,
        # Partitioned: each partition's own, {<stream>:<i>}:dlq (docs/partitions.md).
        "dead_letter_stream": "{" + settings.stream + ":<i>}:dlq"
        if settings.partitions
        else settings.dead_letter,
        "redis_mode": settings.redis_mode,
    }
    if ping:
        try:
            report["ping"] = asyncio.run(_ping(settings))
        except Exception as exc:
            where = redact_url(settings.redis_url)
            print(f"streampipe-worker: cannot reach Redis at {where}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report))
    return 0


def tune_collector() -> None:
    """Freeze the start-up heap and raise the first collection threshold (docs/worker.md).

    Everything imported so far (pydantic models, redis, prometheus_client, the handler's modules)
    lives as long as the process: frozen, no full collection walks it again while the event loop
    waits (those walks were the worker's latency tail).
    """
    gc.collect()  # what start-up left as garbage goes now, not into the permanent generation
    gc.freeze()
    if gc.get_threshold() == _STARTUP_GC_THRESHOLD:
        gc.set_threshold(*GC_THRESHOLD)


def run(settings: WorkerSettings) -> int:
    from streampipe_worker.consumer import Consumer
    from streampipe_worker.metrics import AllHealth, Health, MergedMetrics, MetricsServer, WorkerMetrics
    from streampipe_worker.ordered import OrderedConsumer
    from streampipe_worker.partitioned import PartitionedConsumer
    from streampipe_worker.router import HandlerLoadError, load_handler

    log = logging.getLogger("streampipe.worker")
    try:
        handler = load_handler(settings.handler)
    except HandlerLoadError as exc:
        print(f"streampipe-worker: {exc}", file=sys.stderr)
        return 2
    metrics: Any
    health: Any
    if settings.ordering == "PerKey":
        # The partitions this process owns (ordered.py): ownership and each owned partition's metrics.
        metrics, health = MergedMetrics([]), Health()
        what = f"the partitions it owns of {settings.partitions} of {settings.stream}, each key in order"
    elif settings.partitions:
        # One consumer per partition (partitioned.py), their metrics and readiness on one port.
        metrics, health = MergedMetrics([]), AllHealth({})  # filled by PartitionedConsumer
        what = f"{settings.partitions} partitions of {settings.stream}"
    else:
        metrics, health = WorkerMetrics(settings.stream, settings.group), Health()
        what = settings.stream
    server = None
    if settings.metrics_port:
        try:
            server = MetricsServer(metrics, health, settings.metrics_port, settings.metrics_host).start()
        except OSError as exc:
            print(
                f"streampipe-worker: cannot serve metrics on {settings.metrics_host} port "
                f"{settings.metrics_port}: {exc} "
                f"({WorkerSettings.env_name('metrics_port')}=0 turns it off)",
                file=sys.stderr,
            )
            return 2

    async def main() -> int:
        # Built in the event loop that runs it.
        consumer: Consumer | PartitionedConsumer | OrderedConsumer
        if settings.ordering == "PerKey":
            consumer = OrderedConsumer(settings, handler, metrics=metrics, health=health)
        elif settings.partitions:
            consumer = PartitionedConsumer(settings, handler, metrics=metrics, health=health)
        else:
            consumer = Consumer(settings, handler, metrics=metrics, health=health)
        consumer.install_signal_handlers()
        log.info(
            "consuming %s as %s/%s with %s (batch %d, max deliveries %d)%s",
            what,
            settings.group,
            settings.consumer,
            settings.handler,
            settings.batch_size,
            settings.max_deliveries,
            f", metrics on :{server.port}" if server else "",
        )
        await consumer.run()
        return 0 if not consumer.abandoned else -1

    return _serve(main, server)


def _serve(main: Any, server: Any) -> int:
    """Run ``main()`` in a new event loop, as a worker process runs: exit code, or 3 for NOPERM."""
    tune_collector()
    try:
        code: int = asyncio.run(main())
    except NoPermissionError as exc:
        # Not something a retry mends: the ACL user lacks a command or key this worker needs.
        print(
            f"streampipe-worker: the Redis user may not do what this worker needs: {exc} "
            "(docs/acl/worker.acl lists the commands and keys a worker needs)",
            file=sys.stderr,
        )
        return 3
    finally:
        if server is not None:
            server.stop()
    if code == -1:
        # A handler thread is still running an entry we handed back; do not wait for it.
        logging.shutdown()
        os._exit(0)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"streampipe-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    if args.check:
        return check(settings, args.ping)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
