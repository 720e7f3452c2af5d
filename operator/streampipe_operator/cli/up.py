"""``streampipe up``: a StreamPipeline on one machine."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from streampipe_operator.cli.options import Output, OutputOption, command_errors
from streampipe_operator.streams.console import make_console


class Persistence(StrEnum):
    none = "none"
    aof = "aof"


def _seconds(option: str, value: str) -> float:
    from streampipe_operator.api.durations import DurationError, parse_duration
    from streampipe_operator.streams.targets import UsageError

    try:
        return parse_duration(value).total_seconds()
    except DurationError as exc:
        raise UsageError(f"{option}: {exc}") from None


def up(
    file: Annotated[Path, typer.Argument(help="StreamPipeline file (one pipeline).")],
    *,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Use this server instead of starting an embedded Valkey (credentials go here)."),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            help="Run this long once the workers are up (20s, 5m), then drain and stop. Default: "
            "until Ctrl-C."
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            help="Send the quickstart's example orders: a burst, a trickle and a few poison events."
        ),
    ] = False,
    ui: Annotated[
        bool, typer.Option("--ui/--no-ui", help="Live view, or plain progress lines (logs, CI).")
    ] = True,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Embedded server's files and worker logs (kept); default: a temporary directory."),
    ] = None,
    persistence: Annotated[
        Persistence,
        typer.Option(
            help="Embedded server: none (memory only) or aof (append-only file, fsync every second)."
        ),
    ] = Persistence.none,
    drain_timeout: Annotated[
        str, typer.Option(help="At the end, wait at most this long for every group's backlog to reach zero.")
    ] = "30s",
    python_path: Annotated[
        list[Path] | None,
        typer.Option(
            help="More places to import handler modules from (the file's directory and the "
            "current one always count)."
        ),
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Run a StreamPipeline on this machine: embedded Valkey, worker processes, the operator's scaling.

    Groups, retention, retries, dead letters and backlog scaling follow the file exactly as the
    operator would; workers are local processes instead of pods. Ctrl-C drains and stops (twice:
    stop now). Ends with a summary (--output json: the summary as JSON on stdout, progress on stderr).
    Exit code 0; 1 when the pipeline cannot run (server, workers) or a --demo run did not settle;
    2 for a bad file or options.
    """
    import asyncio

    from streampipe_operator.local.liveview import LiveView, PlainView, SummaryOnly
    from streampipe_operator.local.models import UpOptions, View
    from streampipe_operator.local.run import run_up
    from streampipe_operator.streams.targets import UsageError

    as_json = output is Output.json
    out = make_console(err=as_json)
    progress: View = LiveView(out) if ui and out.is_terminal else PlainView(out)
    view: View = SummaryOnly(progress, typer.echo) if as_json else progress
    with command_errors("up"):
        if redis_url is not None and (data_dir is not None or persistence is not Persistence.none):
            raise UsageError(
                "--data-dir and --persistence configure the embedded server; not with --redis-url"
            )
        options = UpOptions(
            file=file,
            redis_url=redis_url,
            duration=_seconds("--duration", duration) if duration is not None else None,
            drain_timeout=_seconds("--drain-timeout", drain_timeout),
            demo=demo,
            data_dir=data_dir,
            persistence=persistence.value,
            python_path=tuple(python_path or ()),
        )
        try:
            summary = asyncio.run(run_up(options, view))
        finally:
            view.close()
    raise typer.Exit(summary.exit_code)
