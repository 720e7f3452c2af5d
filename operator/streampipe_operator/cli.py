"""The `streampipe` command."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from streampipe_operator import __version__

app = typer.Typer(
    name="streampipe",
    help="Redis Streams / Valkey pipelines: run them locally, operate them on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the streampipe version."""
    typer.echo(__version__)


class ValidateOutput(StrEnum):
    text = "text"
    json = "json"


@app.command()
def crd(
    update_docs: Annotated[
        Path | None,
        typer.Option(help="Instead: rewrite the generated reference part of this file (docs/api.md)."),
    ] = None,
) -> None:
    """Print the StreamPipeline CustomResourceDefinition (what `make crds` writes to crds/)."""
    from streampipe_operator.crd import crd_yaml, update_reference

    if update_docs is not None:
        update_docs.write_text(update_reference(update_docs.read_text(encoding="utf-8")), encoding="utf-8")
        return
    typer.echo(crd_yaml(), nl=False)


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Manifest files; several YAML documents each are fine.")
    ],
    output: Annotated[
        ValidateOutput, typer.Option("--output", "-o", help="text for people, json for machines.")
    ] = ValidateOutput.text,
) -> None:
    """Check StreamPipeline manifests offline, with the rules the API server applies.

    Exit code 0 when every file is valid, 1 when some manifest is invalid, 2 when a file cannot be read.
    """
    from streampipe_operator.validation import render_text, validate_files

    report = validate_files(files)
    if output is ValidateOutput.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(render_text(report))
    raise typer.Exit(report.exit_code)


bench_app = typer.Typer(
    help="Benchmarks against same-run baselines (source checkout only).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("worker")
def bench_worker(
    redis_url: Annotated[
        str | None, typer.Option(help="Server to use; default: an embedded Valkey on a free port.")
    ] = None,
    events: Annotated[int, typer.Option(help="Entries in the pre-filled stream every consumer reads.")] = (
        1_000_000
    ),
    repeat: Annotated[int, typer.Option(help="Interleaved rounds; each consumer's best counts.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
) -> None:
    """Worker throughput vs the tutorial's loop and FastStream's batch subscriber, in one run."""
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[2] / "bench" / "worker_throughput.py"
    spec = importlib.util.spec_from_file_location("worker_throughput", script)
    if spec is None or spec.loader is None or not script.exists():
        typer.echo(f"streampipe bench: {script} not found; benchmarks run from a source checkout", err=True)
        raise typer.Exit(2)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    result = module.run(redis_url, events=events, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>20}: {value:,}")


# --- data commands: status, dlq, produce (targets, errors and exit codes: targets.py) -----------------

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
def _command_errors(command: str) -> Iterator[None]:
    """A CommandError becomes one line on stderr and its exit code (1 server/state, 2 input)."""
    from streampipe_operator.targets import CommandError

    try:
        yield
    except CommandError as exc:
        typer.echo(f"streampipe {command}: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _console(err: bool = False) -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a CI log): wide enough that tables do not wrap into unreadable columns.
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=err, width=width)


@app.command()
def status(
    *,
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    dead_letter: DeadLetterOption = None,
    consumers: Annotated[bool, typer.Option(help="Also list each group's consumers.")] = False,
    output: OutputOption = Output.text,
) -> None:
    """Show a pipeline's stream, consumer groups (lag, pending, oldest pending) and dead-letter count.

    Exit code 0; 1 when the server cannot be reached, or the stream or a group the file declares is
    missing; 2 for a bad file or options.
    """
    import asyncio

    from streampipe_operator.status_report import gather_status, print_status
    from streampipe_operator.targets import resolve_target

    with _command_errors("status"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, dead_letter=dead_letter)
        report = asyncio.run(gather_status(target, consumers=consumers))
    if output is Output.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_status(report, _console())
    if not report.stream.exists or report.missing_groups:
        raise typer.Exit(1)


dlq_app = typer.Typer(help="Dead letters: list, show, replay into the stream, purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _sync_client(target: Any) -> Any:
    from streampipe_worker.connection import create_client

    return create_client(target.connection_settings())


@dlq_app.command("list")
def dlq_list(
    *,
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    dead_letter: DeadLetterOption = None,
    filters: FilterOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 20,
    output: OutputOption = Output.text,
) -> None:
    """List dead letters, oldest first: when, which entry, which group, why."""
    from rich.table import Table

    from streampipe_operator.dead_letters import DeadLetterFilter, list_dead_letters
    from streampipe_operator.targets import resolve_target, server_errors

    with _command_errors("dlq list"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, dead_letter=dead_letter)
        where = DeadLetterFilter.parse(filters or [])
        with server_errors(target, f"reading {target.dead_letter}"):
            page = list_dead_letters(_sync_client(target), target.dead_letter, where, limit=limit)
    if output is Output.json:
        typer.echo(page.model_dump_json(indent=2))
        return
    table = Table(title=f"{page.dead_letter}: {page.length:,} dead letters, {page.matched:,} match")
    for column in ("id", "failed (UTC)", "original id", "type", "group", "deliveries", "exception", "error"):
        table.add_column(column, no_wrap=column != "error", overflow="ellipsis")
    for entry in page.entries:
        env = entry.envelope
        if env is None:
            table.add_row(entry.id, "-", "-", "-", "-", "-", "-", "(not a streampipe dead letter)")
            continue
        table.add_row(
            entry.id,
            env.failed_at.strftime("%H:%M:%S"),
            env.original_id,
            env.type,
            env.group,
            str(env.deliveries),
            env.exception.rsplit(".", 1)[-1] or "-",
            env.error if len(env.error) <= 80 else env.error[:79] + "…",
        )
    _console().print(table)
    if page.matched > len(page.entries):
        typer.echo(f"({page.matched - len(page.entries):,} more; --limit shows more)")


@dlq_app.command("show")
def dlq_show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="ID in the dead-letter stream (dlq list).")],
    *,
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    dead_letter: DeadLetterOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Show one dead letter whole: envelope, error, payload and the original fields."""
    from rich.table import Table

    from streampipe_operator.dead_letters import payload_text, show_dead_letter
    from streampipe_operator.targets import resolve_target, server_errors

    with _command_errors("dlq show"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, dead_letter=dead_letter)
        with server_errors(target, f"reading {target.dead_letter}"):
            entry = show_dead_letter(_sync_client(target), target.dead_letter, entry_id)
    if output is Output.json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    console = _console()
    env = entry.envelope
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    table.add_row("dead letter", entry.id)
    if env is None:
        for name, value in entry.fields.items():
            table.add_row(name, value)
        console.print(table)
        return
    for name, value in (
        ("original", f"{env.original_stream} {env.original_id}"),
        ("type", env.type),
        ("group / consumer", f"{env.group} / {env.consumer}"),
        ("deliveries", str(env.deliveries)),
        ("failed at", env.failed_at.isoformat()),
        ("exception", env.exception or "-"),
        ("error", env.error),
    ):
        table.add_row(name, value)
    console.print(table)
    console.print("[dim]payload[/dim]")
    console.print(payload_text(env.payload), markup=False, highlight=False)
    extra = {k: v for k, v in env.original.items() if k not in ("type", "payload")}
    if extra:
        console.print("[dim]other original fields[/dim]")
        for name, value in extra.items():
            console.print(f"  {name} = {value}", markup=False, highlight=False)


def _progress(console: Any, what: str, total: int) -> Any:
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


@dlq_app.command("replay")
def dlq_replay(
    *,
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    dead_letter: DeadLetterOption = None,
    filters: FilterOption = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many, oldest first.")] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="At most this many entries per second.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Add them to this stream instead of their original one.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be replayed.")] = False,
    output: OutputOption = Output.text,
) -> None:
    """Put dead letters back on their stream (with a replayed_from field), once each.

    Each entry leaves the dead-letter stream and re-enters the stream in one atomic step, so running
    a replay twice, or two at once, never replays an entry twice.
    """
    from streampipe_operator.dead_letters import DeadLetterFilter, replay_dead_letters
    from streampipe_operator.targets import resolve_target, server_errors

    with _command_errors("dlq replay"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, dead_letter=dead_letter)
        where = DeadLetterFilter.parse(filters or [])
        console = _console(err=True)
        with server_errors(target, f"replaying {target.dead_letter}"):
            client = _sync_client(target)
            total = int(client.xlen(target.dead_letter))
            with _progress(console, "replaying", total if limit is None else min(total, limit)) as bar:
                task = bar.add_task("replay", total=None)
                result = replay_dead_letters(
                    client,
                    target.dead_letter,
                    where,
                    limit=limit,
                    rate=rate,
                    dry_run=dry_run,
                    target_stream=to,
                    progress=lambda done, of: bar.update(task, completed=done, total=of),
                )
    if output is Output.json:
        typer.echo(result.model_dump_json(indent=2))
        return
    verb = "would replay" if dry_run else "replayed"
    for entry in result.entries:
        arrow = f" -> {entry.new_id}" if entry.new_id else ""
        typer.echo(f"{verb} {entry.dead_letter_id} ({entry.type}, was {entry.original_id}){arrow}")
    count = len(result.entries) if dry_run else result.replayed
    summary = f"{verb} {count} of {result.matched} matching dead letters"
    if limit is not None and result.matched > limit:
        summary += f" (--limit {limit})"
    if result.already_replayed:
        summary += f"; {result.already_replayed} were taken by another replay meanwhile"
    typer.echo(summary)


@dlq_app.command("purge")
def dlq_purge(
    *,
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    dead_letter: DeadLetterOption = None,
    filters: FilterOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; delete.")] = False,
    output: OutputOption = Output.text,
) -> None:
    """Delete dead letters (all, or those matching --filter), after asking.

    Only the entries counted when asking are deleted; dead letters that arrive meanwhile stay.
    """
    from streampipe_operator.dead_letters import DeadLetterFilter, purge_candidates, purge_dead_letters
    from streampipe_operator.targets import UsageError, resolve_target, server_errors

    with _command_errors("dlq purge"):
        target = resolve_target(file, redis_url=redis_url, stream=stream, dead_letter=dead_letter)
        where = DeadLetterFilter.parse(filters or [])
        with server_errors(target, f"purging {target.dead_letter}"):
            client = _sync_client(target)
            ids = purge_candidates(client, target.dead_letter, where)
            if ids and not yes:
                if not sys.stdin.isatty():
                    raise UsageError(
                        f"would delete {len(ids)} dead letters from {target.dead_letter}; not asking "
                        "without a terminal: pass --yes"
                    )
                what = "all" if where.empty else "the matching"
                if not typer.confirm(
                    f"Delete {what} {len(ids)} dead letters from {target.dead_letter}?", err=True
                ):
                    typer.echo("nothing deleted", err=True)
                    raise typer.Exit(1)
            with _progress(_console(err=True), "deleting", len(ids)) as bar:
                task = bar.add_task("purge", total=len(ids))
                result = purge_dead_letters(
                    client,
                    target.dead_letter,
                    ids,
                    progress=lambda done, of: bar.update(task, completed=done, total=of),
                )
    if output is Output.json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(f"deleted {result.deleted} dead letters from {result.dead_letter}")


@app.command()
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
    file: FileOption = None,
    redis_url: RedisUrlOption = None,
    stream: StreamOption = None,
    event_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Event type of every payload given.")
    ] = None,
    version: Annotated[int, typer.Option(min=1, help="Event version, with --type.")] = 1,
    maxlen: Annotated[
        int | None, typer.Option(min=1, help="XADD MAXLEN ~ this (the operator trims anyway).")
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Send events to the stream through the worker's Producer (pipelined; all parsed first).

    Prints the new entry IDs. Exit code 2 (nothing sent) when an event is not valid JSON or lacks
    type/payload; 1 when the server cannot be reached.
    """
    from streampipe_operator.producing import parse_events, send_events
    from streampipe_operator.targets import UsageError, resolve_target, server_errors

    with _command_errors("produce"):
        target = resolve_target(file, redis_url=redis_url, stream=stream)
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
            _progress(_console(err=True), "sending", len(parsed)) as bar,
        ):
            task = bar.add_task("send", total=len(parsed))
            result = send_events(
                _sync_client(target),
                target.stream,
                parsed,
                maxlen=maxlen,
                progress=lambda done, of: bar.update(task, completed=done, total=of),
            )
    if output is Output.json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo("\n".join(result.ids))


operator_app = typer.Typer(help="The Kubernetes operator (see docs/operator.md).", no_args_is_help=True)
app.add_typer(operator_app, name="operator")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@operator_app.command("run")
def operator_run(
    *,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Kubeconfig file; default: in-cluster, else $KUBECONFIG.")
    ] = None,
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", help="Watch every namespace.")] = False,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics here; 0 turns it off.")] = 9090,
    liveness: Annotated[
        str | None, typer.Option(help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="text for people, json for log pipelines.")] = (
        LogFormat.text
    ),
    peering: Annotated[
        str | None, typer.Option(help="kopf peering object: of several replicas only one acts.")
    ] = None,
    standalone: Annotated[bool, typer.Option(help="No peering (a single replica).")] = False,
    priority: Annotated[
        int | None, typer.Option(help="Peering priority; default: random, so replicas never tie.")
    ] = None,
) -> None:
    """Run the operator: reconcile StreamPipelines until SIGTERM."""
    from pydantic import ValidationError

    from streampipe_operator.runner import RunOptions, StartError, run_operator

    try:
        options = RunOptions(
            kubeconfig=kubeconfig,
            namespaces=namespace or [],
            all_namespaces=all_namespaces,
            metrics_port=metrics_port,
            liveness=liveness,
            log_format=log_format.value,
            peering=peering,
            standalone=standalone,
            priority=priority,
        )
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"streampipe operator run: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    try:
        run_operator(options)
    except StartError as exc:
        typer.echo(f"streampipe operator run: {exc}", err=True)
        raise typer.Exit(1) from None


class Persistence(StrEnum):
    none = "none"
    aof = "aof"


def _seconds(option: str, value: str) -> float:
    from streampipe_operator.durations import DurationError, parse_duration
    from streampipe_operator.targets import UsageError

    try:
        return parse_duration(value).total_seconds()
    except DurationError as exc:
        raise UsageError(f"{option}: {exc}") from None


@app.command()
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

    from streampipe_operator.liveview import LiveView, PlainView, SummaryOnly, console_for
    from streampipe_operator.targets import UsageError
    from streampipe_operator.up import UpOptions, View, run_up

    as_json = output is Output.json
    console = console_for(err=as_json)
    progress: View = LiveView(console) if ui and console.is_terminal else PlainView(console)
    view: View = SummaryOnly(progress, typer.echo) if as_json else progress
    with _command_errors("up"):
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


def main() -> None:
    app()
