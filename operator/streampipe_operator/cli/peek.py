"""``streampipe peek``: look at a pipeline's entries without consuming them."""

from __future__ import annotations

from typing import Annotated

import typer

from streampipe_operator.cli import options
from streampipe_operator.streams.console import make_console


def peek(
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=10_000, help="How many entries.")] = 10,
    oldest: Annotated[
        bool, typer.Option("--oldest", help="The oldest entries instead of the newest.")
    ] = False,
    pending: Annotated[
        str | None,
        typer.Option(
            "--pending",
            metavar="GROUP",
            help="The group's pending entries (delivered, not acknowledged), oldest first, with consumer, "
            "idle time and deliveries.",
        ),
    ] = None,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Show the newest (or --oldest) entries of a pipeline's stream, or a group's --pending list,
    without reading them as a consumer: XREVRANGE / XRANGE / XPENDING only.

    JSON payloads are pretty-printed. Exit code 1 when the stream or the group does not exist; 2 for
    a bad file or options.
    """
    from rich.console import Group, RenderableType
    from rich.json import JSON
    from rich.panel import Panel
    from rich.text import Text

    from streampipe_operator.streams.peek import peek as peek_entries
    from streampipe_operator.streams.report import seconds
    from streampipe_operator.streams.targets import resolve_target, server_errors

    with options.command_errors("peek"):
        target = resolve_target(file, redis_url=redis_url, stream=stream)
        with server_errors(target, f"reading {target.stream}"):
            report = peek_entries(
                options.sync_client(target), target, count=count, oldest=oldest, group=pending
            )
    if output is options.Output.json:
        typer.echo(report.model_dump_json(indent=2))
        return
    console = make_console()
    if report.view == "pending":
        title = f"{report.stream}: group {report.group}, {report.pending_total:,} pending, oldest first"
    else:
        title = f"{report.stream}: {report.length:,} entries, the {report.view} {len(report.entries)}"
    console.print(title, style="bold")
    if not report.entries:
        console.print("(none)")
    for entry in report.entries:
        heading = f"{entry.id}  added {seconds(entry.age_seconds)} ago"
        if entry.pending is not None:
            heading += (
                f"  consumer {entry.pending.consumer}, idle {seconds(entry.pending.idle_seconds)}, "
                f"{entry.pending.deliveries} deliveries"
            )
        if entry.fields is None:
            console.print(
                Panel("(gone: trimmed or deleted while pending)", title=heading, title_align="left")
            )
            continue
        others = {k: v for k, v in entry.fields.items() if not (k == "payload" and entry.payload is not None)}
        parts: list[RenderableType] = [Text(f"{key}: {value}") for key, value in others.items()]
        if entry.payload is not None:
            parts += [Text("payload:", style="dim"), JSON.from_data(entry.payload)]
        console.print(Panel(Group(*parts), title=heading, title_align="left"))
