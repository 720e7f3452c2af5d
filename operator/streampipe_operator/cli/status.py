"""``streampipe status``: a pipeline's stream, groups and dead letters as the server sees them."""

from __future__ import annotations

from typing import Annotated

import typer

from streampipe_operator.cli import options
from streampipe_operator.streams.console import make_console


def status(
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    dead_letter: options.DeadLetterOption = None,
    partitions: options.PartitionsOption = None,
    consumers: Annotated[bool, typer.Option(help="Also list each group's consumers.")] = False,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Show a pipeline's stream, consumer groups (lag, pending, oldest pending) and dead-letter count.

    With --partitions, one row per partition (stream key, hash slot, length, each group's lag and
    pending, dead letters) and the totals.

    Exit code 0; 1 when the server cannot be reached, or the stream (a partition's stream) or a group
    the file declares is missing; 2 for a bad file or options.
    """
    import asyncio

    from streampipe_operator.engine.spec_mapping import retention_policy
    from streampipe_operator.streams.report import gather_status, print_status
    from streampipe_operator.streams.targets import resolve_target

    with options.command_errors("status"):
        target = resolve_target(
            file, redis_url=redis_url, stream=stream, dead_letter=dead_letter, partitions=partitions
        )
        if target.partitions:
            from streampipe_operator.streams.partition_report import gather_partitioned, print_partitioned

            partitioned = asyncio.run(gather_partitioned(target, consumers=consumers))
            if output is options.Output.json:
                typer.echo(partitioned.model_dump_json(indent=2))
            else:
                print_partitioned(partitioned, make_console())
            if partitioned.missing_streams:
                raise typer.Exit(1)
            return
        spec_retention = target.pipeline.spec.retention if target.pipeline is not None else None
        retention = retention_policy(spec_retention) if spec_retention is not None else None
        report = asyncio.run(gather_status(target, consumers=consumers, retention=retention))
    if output is options.Output.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_status(report, make_console())
    if not report.stream.exists or report.missing_groups:
        raise typer.Exit(1)
