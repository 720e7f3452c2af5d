"""``streampipe dlq list|show|replay|purge``: a pipeline's dead letters."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from streampipe_operator.cli import options
from streampipe_operator.streams.console import make_console

dlq_app = typer.Typer(help="Dead letters: list, show, replay into the stream, purge.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    dead_letter: options.DeadLetterOption = None,
    partitions: options.PartitionsOption = None,
    partition: options.PartitionOption = None,
    filters: options.FilterOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 20,
    output: options.OutputOption = options.Output.text,
) -> None:
    """List dead letters, oldest first: when, which entry, which group, why. With --partitions, each
    partition's (--limit counts per partition)."""
    from streampipe_operator.streams.dlq import DeadLetterFilter, list_dead_letters
    from streampipe_operator.streams.targets import resolve_target, selected_partitions, server_errors

    with options.command_errors("dlq list"):
        target = resolve_target(
            file, redis_url=redis_url, stream=stream, dead_letter=dead_letter, partitions=partitions
        )
        where = DeadLetterFilter.parse(filters or [])
        pages = []
        client = options.sync_client(target)  # one server for every partition
        for part in selected_partitions(target, partition):
            with server_errors(part, f"reading {part.dead_letter}"):
                pages.append(list_dead_letters(client, part.dead_letter, where, limit=limit))
    if output is options.Output.json:
        _print_json(pages, partitioned=bool(target.partitions))
        return
    shown = [page for page in pages if page.length or not target.partitions]
    if not shown:
        typer.echo(f"no dead letters in {len(pages)} partitions of {target.stream}")
    for page in shown:
        _print_page(page)


def _print_json(items: Sequence[BaseModel], *, partitioned: bool) -> None:
    """One object for one stream; with partitions, a list with one per partition."""
    if partitioned:
        typer.echo(json.dumps([item.model_dump(mode="json") for item in items], indent=2))
    else:
        typer.echo(items[0].model_dump_json(indent=2))


def _advance(bar: Any, task: Any) -> Callable[[int, int], None]:
    """A progress callback ``(done, of)`` for one task of a progress bar."""
    return lambda done, of: bar.update(task, completed=done, total=of)


def _print_page(page: Any) -> None:
    from rich.table import Table

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
            env.short_exception or "-",
            env.error if len(env.error) <= 80 else env.error[:79] + "…",
        )
    make_console().print(table)
    if page.matched > len(page.entries):
        typer.echo(f"({page.matched - len(page.entries):,} more; --limit shows more)")


@dlq_app.command("show")
def dlq_show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="ID in the dead-letter stream (dlq list).")],
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    dead_letter: options.DeadLetterOption = None,
    partitions: options.PartitionsOption = None,
    partition: options.PartitionOption = None,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Show one dead letter whole: envelope, error, payload and the original fields."""
    from rich.table import Table

    from streampipe_operator.streams.dlq import payload_text, show_dead_letter
    from streampipe_operator.streams.targets import (
        UsageError,
        resolve_target,
        selected_partitions,
        server_errors,
    )

    with options.command_errors("dlq show"):
        target = resolve_target(
            file, redis_url=redis_url, stream=stream, dead_letter=dead_letter, partitions=partitions
        )
        if target.partitions and partition is None:
            raise UsageError(
                "with --partitions, name the entry's partition with --partition (dlq list shows it)"
            )
        [target] = selected_partitions(target, partition)
        with server_errors(target, f"reading {target.dead_letter}"):
            entry = show_dead_letter(options.sync_client(target), target.dead_letter, entry_id)
    if output is options.Output.json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    console = make_console()
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


@dlq_app.command("replay")
def dlq_replay(
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    dead_letter: options.DeadLetterOption = None,
    partitions: options.PartitionsOption = None,
    partition: options.PartitionOption = None,
    filters: options.FilterOption = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many, oldest first.")] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="At most this many entries per second.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Add them to this stream instead of their original one.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be replayed.")] = False,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Put dead letters back on their stream (with a replayed_from field), once each.

    Each entry leaves the dead-letter stream and re-enters the stream in one atomic step, so running
    a replay twice, or two at once, never replays an entry twice. With --partitions, each partition's
    dead letters go back into that partition (--limit counts per partition).
    """
    from streampipe_operator.streams.dlq import DeadLetterFilter, replay_dead_letters
    from streampipe_operator.streams.targets import resolve_target, selected_partitions, server_errors

    with options.command_errors("dlq replay"):
        target = resolve_target(
            file, redis_url=redis_url, stream=stream, dead_letter=dead_letter, partitions=partitions
        )
        where = DeadLetterFilter.parse(filters or [])
        console = make_console(err=True)
        results = []
        client = options.sync_client(target)  # one server for every partition
        for part in selected_partitions(target, partition):
            with server_errors(part, f"replaying {part.dead_letter}"):
                total = int(client.xlen(part.dead_letter))
                with options.progress_bar(
                    console, "replaying", total if limit is None else min(total, limit)
                ) as bar:
                    task = bar.add_task("replay", total=None)
                    results.append(
                        replay_dead_letters(
                            client,
                            part.dead_letter,
                            where,
                            limit=limit,
                            rate=rate,
                            dry_run=dry_run,
                            target_stream=to,
                            progress=_advance(bar, task),
                        )
                    )
    if output is options.Output.json:
        _print_json(results, partitioned=bool(target.partitions))
        return
    for result in results:
        if target.partitions and not result.matched:
            continue
        _print_replay(result, limit, prefix=f"{result.dead_letter}: " if target.partitions else "")
    if target.partitions and not any(result.matched for result in results):
        typer.echo(f"no matching dead letters in {len(results)} partitions of {target.stream}")


def _print_replay(result: Any, limit: int | None, prefix: str) -> None:
    verb = "would replay" if result.dry_run else "replayed"
    for entry in result.entries:
        arrow = f" -> {entry.new_id}" if entry.new_id else ""
        typer.echo(f"{verb} {entry.dead_letter_id} ({entry.type}, was {entry.original_id}){arrow}")
    count = len(result.entries) if result.dry_run else result.replayed
    summary = f"{prefix}{verb} {count} of {result.matched} matching dead letters"
    if limit is not None and result.matched > limit:
        summary += f" (--limit {limit})"
    if result.already_replayed:
        summary += f"; {result.already_replayed} were taken by another replay meanwhile"
    typer.echo(summary)


@dlq_app.command("purge")
def dlq_purge(
    *,
    file: options.FileOption = None,
    redis_url: options.RedisUrlOption = None,
    stream: options.StreamOption = None,
    dead_letter: options.DeadLetterOption = None,
    partitions: options.PartitionsOption = None,
    partition: options.PartitionOption = None,
    filters: options.FilterOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; delete.")] = False,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Delete dead letters (all, or those matching --filter), after asking. With --partitions, in every
    partition (or --partition's), after asking once.

    Only the entries counted when asking are deleted; dead letters that arrive meanwhile stay.
    """
    from streampipe_operator.streams.dlq import (
        DeadLetterFilter,
        purge_candidates,
        purge_dead_letters,
    )
    from streampipe_operator.streams.targets import (
        UsageError,
        resolve_target,
        selected_partitions,
        server_errors,
    )

    with options.command_errors("dlq purge"):
        target = resolve_target(
            file, redis_url=redis_url, stream=stream, dead_letter=dead_letter, partitions=partitions
        )
        where = DeadLetterFilter.parse(filters or [])
        parts = selected_partitions(target, partition)
        candidates = []
        client = options.sync_client(target)  # one server for every partition
        for part in parts:
            with server_errors(part, f"purging {part.dead_letter}"):
                candidates.append((part, purge_candidates(client, part.dead_letter, where)))
        count = sum(len(ids) for _, ids in candidates)
        where_from = (
            target.dead_letter if not target.partitions else f"{len(parts)} partitions of {target.stream}"
        )
        if count and not yes:
            if not sys.stdin.isatty():
                raise UsageError(
                    f"would delete {count} dead letters from {where_from}; not asking "
                    "without a terminal: pass --yes"
                )
            what = "all" if where.empty else "the matching"
            if not typer.confirm(f"Delete {what} {count} dead letters from {where_from}?", err=True):
                typer.echo("nothing deleted", err=True)
                raise typer.Exit(1)
        results = []
        for part, ids in candidates:
            with (
                server_errors(part, f"purging {part.dead_letter}"),
                options.progress_bar(make_console(err=True), "deleting", len(ids)) as bar,
            ):
                task = bar.add_task("purge", total=len(ids))
                results.append(
                    purge_dead_letters(
                        client,
                        part.dead_letter,
                        ids,
                        progress=_advance(bar, task),
                    )
                )
    if output is options.Output.json:
        _print_json(results, partitioned=bool(target.partitions))
        return
    for result in results:
        if target.partitions and not result.matched:
            continue
        typer.echo(f"deleted {result.deleted} dead letters from {result.dead_letter}")
    if target.partitions and not count:
        typer.echo(f"deleted 0 dead letters from {where_from}")
