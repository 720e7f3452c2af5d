"""``streampipe produce``: events from the command line or JSON lines."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from streampipe_operator.cli import options
from streampipe_operator.streams.console import make_console


def produce(
    events: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[EVENT]...",
            help='Events as JSON: {"type": "order.created", "payload": {...}}; with --type, payloads. '
            "None: read JSON lines from stdin.",
        ),
    ] = None,
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    partitions: options.PartitionsOption = None,
    key: Annotated[
        str | None,
        typer.Option(
            help='With --partitions: the entry field that routes each event (every event\'s "fields" '
            "must have it). Without it, events take the partitions in turn."
        ),
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Event type of every payload given.")
    ] = None,
    version: Annotated[int, typer.Option(min=1, help="Event version, with --type.")] = 1,
    maxlen: Annotated[
        int | None, typer.Option(min=1, help="XADD MAXLEN ~ this (the operator trims anyway).")
    ] = None,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Send events to the stream through the worker's Producer (pipelined; all parsed first).

    Prints the new entry IDs. Exit code 2 (nothing sent) when an event is not valid JSON or lacks
    type/payload, or, with --key, the key field; 1 when the server cannot be reached.
    """
    from streampipe_operator.streams.producing import parse_events, send_events
    from streampipe_operator.streams.targets import UsageError, resolve_target, server_errors

    with options.command_errors("produce"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, partitions=partitions)
        if key is not None and not target.partitions:
            raise UsageError("--key routes among partitions: give --partitions too")
        spec = target.pipeline.spec if target.pipeline is not None else None
        if key is None and spec is not None and spec.partitions is not None:
            key = spec.partitions.key  # the file's routing field, unless --key names another
        if events:
            sources = [(f"argument {i}", text) for i, text in enumerate(events, start=1)]
        else:
            if sys.stdin.isatty():
                typer.echo("reading JSON lines from stdin (Ctrl-D ends)", err=True)
            sources = [(f"stdin line {i}", line) for i, line in enumerate(sys.stdin, start=1)]
        parsed = parse_events(sources, event_type=event_type, version=version)
        if not parsed:
            raise UsageError("no events given: pass them as arguments or JSON lines on stdin")
        with (
            server_errors(target, f"adding to {target.stream}"),
            options.progress_bar(make_console(err=True), "sending", len(parsed)) as bar,
        ):
            task = bar.add_task("send", total=len(parsed))
            result = send_events(
                options.sync_client(target),
                target.layout(key) or target.stream,
                parsed,
                maxlen=maxlen,
                progress=lambda done, of: bar.update(task, completed=done, total=of),
            )
    if output is options.Output.json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo("\n".join(result.ids))
