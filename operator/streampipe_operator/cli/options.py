"""What the data commands share: their options, their output choice and how a CommandError exits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer


class ValidateOutput(StrEnum):
    text = "text"
    json = "json"


Output = ValidateOutput  # text for people, json for machines: the same choice everywhere

FileOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="StreamPipeline file: its stream, dead-letter stream and server."),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option(help="Server URL; wins over the file's (put credentials here: redis://user:pass@host)."),
]
StreamOption = Annotated[str | None, typer.Option(help="Stream key, when no file is given.")]
DeadLetterOption = Annotated[
    str | None, typer.Option(help="Dead-letter stream key; default: the file's, or <stream>:dlq.")
]
PartitionsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=1024,
        help="With --stream: the stream is the base name of this many partitions (docs/partitions.md).",
    ),
]
PartitionOption = Annotated[
    int | None,
    typer.Option(min=0, max=1023, help="With --partitions: only this partition (0-based); default: all."),
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text for people, json for machines.")]
FilterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        help="KEY=VALUE with KEY type, group, exception or error (a part of the error text); repeat to "
        "narrow (values of one key are alternatives).",
    ),
]


@contextlib.contextmanager
def command_errors(command: str) -> Iterator[None]:
    """A CommandError becomes one line on stderr and its exit code (1 server/state, 2 input)."""
    from streampipe_operator.streams.targets import CommandError

    try:
        yield
    except CommandError as exc:
        typer.echo(f"streampipe {command}: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def sync_client(target: Any) -> Any:
    """A blocking client for the target's server (the worker's one factory)."""
    from streampipe_worker.connection import create_client

    return create_client(target.connection_settings())


def progress_bar(console: Any, what: str, total: int) -> Any:
    """A progress bar on stderr for work of more than a page; nothing for small jobs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=total <= 200,
    )
