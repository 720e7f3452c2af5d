"""``streampipe status``: a pipeline's stream, groups and dead letters as the server sees them now.

The figures are the operator's own observation (``RedisAdmin.observe_stream``: XINFO STREAM, XINFO
GROUPS with a lag that is never a guessed zero, XPENDING, XINFO CONSUMERS, MEMORY USAGE, XLEN of the
dead-letter stream), plus, per group, the oldest pending entry (``XPENDING - + 1``): how long ago it
was produced, how long since it was last delivered, and how often.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from streampipe_operator.plan.observed import ConsumerState
from streampipe_operator.plan.retention import RetentionPolicy, protection_path
from streampipe_operator.streams.admin import RedisAdmin, RedisAdminError, translate_error
from streampipe_operator.streams.targets import CommandError, Target, redact_url
from streampipe_worker.connection import create_async_client
from streampipe_worker.entry_ids import EntryId


class OldestPending(BaseModel):
    """The group's oldest unacknowledged entry."""

    id: str
    age_seconds: float | None = Field(description="Since it was added (from its ID's timestamp)")
    idle_seconds: float = Field(description="Since it was last delivered")
    deliveries: int


class GroupReport(BaseModel):
    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag: int | None = Field(description="None: unknown (never read as zero)")
    lag_source: str
    backlog: int | None = Field(description="lag + pending")
    oldest_pending: OldestPending | None = None
    oldest_unread_age_seconds: float | None = Field(
        default=None, description="Age of the oldest entry the group has not read (None: nothing unread)"
    )
    consumer_details: list[ConsumerState] = Field(default_factory=list)
    in_spec: bool | None = Field(default=None, description="Declared in the file (None: no file given)")


class StreamReport(BaseModel):
    key: str
    exists: bool
    length: int = 0
    first_entry_id: str | None = None
    last_entry_id: str | None = None
    last_generated_id: str | None = None
    entries_added: int | None = None
    max_deleted_entry_id: str | None = None
    memory_bytes: int | None = None
    oldest_entry_age_seconds: float | None = None


class DeadLetterReport(BaseModel):
    key: str
    length: int


class StatusReport(BaseModel):
    """What ``streampipe status --output json`` prints."""

    server: str = Field(description="Implementation and version, e.g. `valkey 9.1.0`")
    stream_commands: list[str] = Field(
        default_factory=list, description="Optional stream commands the server has, e.g. `XACKDEL`"
    )
    protected_trim: Literal["Planned", "ServerAcked"] | None = Field(
        default=None,
        description="How the file's protected retention trims on this server (None: no retention)",
    )
    redis_url: str = Field(description="The server's URL, password hidden")
    pipeline: str | None = Field(default=None, description="metadata.name of the file's StreamPipeline")
    stream: StreamReport
    groups: list[GroupReport]
    missing_groups: list[str] = Field(
        default_factory=list, description="In the file's spec but not on the server"
    )
    dead_letter: DeadLetterReport


def _age(entry_id: EntryId | None, now: float) -> float | None:
    if entry_id is None or entry_id.ms == 0:
        return None
    return max(0.0, now - entry_id.unix_seconds)


async def gather_status(
    target: Target,
    *,
    consumers: bool = False,
    retention: RetentionPolicy | None = None,
    admin: RedisAdmin | None = None,
) -> StatusReport:
    """Observe the target; :class:`CommandError` (exit 1) when the server cannot be asked.

    ``retention``: the file's policy, to say which protected-trim path it takes on this server.
    ``admin``: a connected admin to reuse (one per server for many streams); else one of its own."""
    owned = admin is None
    if admin is None:
        admin = RedisAdmin(create_async_client(target.connection_settings()))
    client: Any = admin.client
    try:
        await admin.ping()
        caps = await admin.capabilities()
        observation = await admin.observe_stream(target.stream, dead_letter=target.dead_letter)
        oldest: dict[str, OldestPending] = {}
        now = time.time()
        for group in observation.groups:
            if group.pending == 0:
                continue
            try:
                reply = await client.xpending_range(target.stream, group.name, "-", "+", 1)
            except Exception as exc:
                raise translate_error(
                    exc, doing="reading XPENDING", where=admin.where, stream=target.stream, group=group.name
                ) from exc
            if reply:
                first = reply[0]
                entry_id = EntryId.parse(first["message_id"])
                oldest[group.name] = OldestPending(
                    id=str(entry_id),
                    age_seconds=_age(entry_id, now),
                    idle_seconds=int(first["time_since_delivered"]) / 1000,
                    deliveries=int(first["times_delivered"]),
                )
    except RedisAdminError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        if owned:
            await client.aclose()

    state = observation.stream
    stream = StreamReport(key=target.stream, exists=observation.exists)
    if state is not None:
        stream = StreamReport(
            key=target.stream,
            exists=True,
            length=state.length,
            first_entry_id=_id(state.first_entry_id),
            last_entry_id=_id(state.last_entry_id),
            last_generated_id=str(state.last_generated_id),
            entries_added=state.entries_added,
            max_deleted_entry_id=_id(state.max_deleted_entry_id),
            memory_bytes=observation.memory_bytes,
            oldest_entry_age_seconds=_age(state.first_entry_id, now),
        )
    declared = {group.name for group in target.pipeline.spec.groups} if target.pipeline is not None else None
    groups = [
        GroupReport(
            name=group.name,
            consumers=len(group.consumers),
            pending=group.pending,
            last_delivered_id=str(group.last_delivered_id),
            entries_read=group.entries_read,
            lag=group.lag.value,
            lag_source=group.lag.source,
            backlog=None if group.lag.value is None else group.lag.value + group.pending,
            oldest_pending=oldest.get(group.name),
            oldest_unread_age_seconds=_age(group.oldest_unread_id, now),
            consumer_details=list(group.consumers) if consumers else [],
            in_spec=None if declared is None else group.name in declared,
        )
        for group in observation.groups
    ]
    on_server = {group.name for group in observation.groups}
    return StatusReport(
        server=caps.describe(),
        stream_commands=caps.stream_commands(),
        protected_trim=protection_path(retention, xtrim_acked=caps.xtrim_acked)
        if retention is not None and retention.protect_unprocessed
        else None,
        redis_url=redact_url(target.redis_url),
        pipeline=target.pipeline.metadata.name if target.pipeline is not None else None,
        stream=stream,
        groups=groups,
        missing_groups=sorted((declared or set()) - on_server),
        dead_letter=DeadLetterReport(key=target.dead_letter, length=observation.dead_letter_length or 0),
    )


def _id(entry_id: EntryId | None) -> str | None:
    return None if entry_id is None else str(entry_id)


def seconds(value: float | None) -> str:
    """``3.2s``, ``4m05s``, ``2h03m``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _lag(group: GroupReport) -> str:
    if group.lag is None:
        return "unknown"
    marks = {"lower_bound": ">=", "counted": "~"}
    return f"{marks.get(group.lag_source, '')}{group.lag:,}"


def render_status(report: StatusReport) -> RenderableType:
    """Tables for people: the stream (XINFO STREAM), its groups (XINFO GROUPS) and the DLQ."""
    parts: list[RenderableType] = []
    title = f"{report.pipeline + ' · ' if report.pipeline else ''}{report.stream.key}"
    parts.append(Text.assemble((title, "bold"), f"  on {report.server} at {report.redis_url}"))
    features = ", ".join(report.stream_commands) or "none"
    trims = f"; protected trims: {report.protected_trim}" if report.protected_trim else ""
    parts.append(Text(f"optional stream commands: {features}{trims}", style="dim"))
    if not report.stream.exists:
        parts.append(
            Text(
                f"stream {report.stream.key} does not exist yet: nothing was produced to it and no group "
                "was created (streampipe up, or the operator, creates the groups)",
                style="yellow",
            )
        )
    else:
        stream = report.stream
        table = Table(title="stream", title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="dim")
        table.add_column()
        rows = [
            ("length", f"{stream.length:,}"),
            ("entries added", "-" if stream.entries_added is None else f"{stream.entries_added:,}"),
            (
                "first entry",
                f"{stream.first_entry_id or '-'}  (age {seconds(stream.oldest_entry_age_seconds)})",
            ),
            ("last entry", stream.last_entry_id or "-"),
            ("last generated id", stream.last_generated_id or "-"),
            ("max deleted id", stream.max_deleted_entry_id or "-"),
            ("memory", _bytes(stream.memory_bytes)),
        ]
        for name, value in rows:
            table.add_row(name, value)
        parts.append(table)
    groups = Table(title="groups", title_justify="left")
    for column in ("group", "consumers", "lag", "pending", "backlog", "last delivered", "entries read"):
        groups.add_column(column, justify="left" if column in ("group", "last delivered") else "right")
    groups.add_column("oldest unread age", justify="right")
    groups.add_column("oldest pending (age / idle / deliveries)")
    for group in report.groups:
        oldest = group.oldest_pending
        groups.add_row(
            group.name + ("" if group.in_spec in (None, True) else " (not in file)"),
            str(group.consumers),
            _lag(group),
            f"{group.pending:,}",
            "unknown" if group.backlog is None else f"{group.backlog:,}",
            group.last_delivered_id,
            "-" if group.entries_read is None else f"{group.entries_read:,}",
            seconds(group.oldest_unread_age_seconds),
            "-"
            if oldest is None
            else f"{oldest.id}  {seconds(oldest.age_seconds)} / {seconds(oldest.idle_seconds)} / "
            f"{oldest.deliveries}x",
        )
    for name in report.missing_groups:
        groups.add_row(Text(f"{name} (missing)", style="red"), *["-"] * 8)
    parts.append(groups)
    for group in report.groups:
        if not group.consumer_details:
            continue
        consumers = Table(title=f"consumers of {group.name}", title_justify="left")
        for column in ("consumer", "pending", "idle", "inactive"):
            consumers.add_column(column, justify="left" if column == "consumer" else "right")
        for consumer in group.consumer_details:
            consumers.add_row(
                consumer.name, str(consumer.pending), seconds(consumer.idle), seconds(consumer.inactive)
            )
        parts.append(consumers)
    if report.missing_groups:
        parts.append(
            Text(
                f"groups in the file but not on the server: {', '.join(report.missing_groups)} "
                "(the operator, or streampipe up, creates them)",
                style="yellow",
            )
        )
    parts.append(
        Text.assemble(("dead letters ", "dim"), f"{report.dead_letter.key}: {report.dead_letter.length:,}")
    )
    return Group(*parts)


def print_status(report: StatusReport, console: Console) -> None:
    console.print(render_status(report))
