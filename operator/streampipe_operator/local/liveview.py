"""What ``streampipe up`` shows: a rich live view, or plain progress lines (``--no-ui``), and the summary.

Both views take the same :class:`~streampipe_operator.local.models.Snapshot` every tick; neither computes a
figure of its own. With ``--output json`` they write to stderr, so that stdout carries only the JSON
summary.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streampipe_operator.local.models import GroupView, LogEvent, Snapshot, UpSummary, View

PLAIN_EVERY = 2.0
EVENT_STYLES = {
    "scale": "bold cyan",
    "trim": "magenta",
    "dead-letter": "red",
    "warning": "yellow",
    "worker": "yellow",
    "group": "green",
    "consumer": "blue",
    "info": "dim",
}


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes:02d}:{rest:02d}"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _workers(group: GroupView) -> Text:
    scale = max(group.max_replicas, group.desired, group.running, 1)
    text = Text("●" * group.ready, style="green")
    text.append("●" * max(0, group.running - group.ready), style="yellow")
    text.append("○" * max(0, scale - max(group.running, group.ready)), style="dim")
    text.append(f" {group.ready}/{group.desired}")
    return text


def _header(snapshot: Snapshot) -> Panel:
    where = f"embedded {snapshot.server}" if snapshot.embedded else snapshot.server
    line1 = Text.assemble(
        ("stream ", "dim"),
        (snapshot.stream, "bold"),
        ("  on ", "dim"),
        where,
        (" at ", "dim"),
        snapshot.redis_url,
    )
    if snapshot.persistence is not None:
        line1.append(f"  (persistence {snapshot.persistence})", style="dim")
    until = f" / {_clock(snapshot.duration)}" if snapshot.duration is not None else ""
    line2 = Text.assemble((snapshot.phase, "bold green"), f"  {_clock(snapshot.elapsed)}{until}")
    if snapshot.demo_phase is not None and snapshot.demo is not None:
        line2.append(
            f"   demo producer: {snapshot.demo_phase}, {snapshot.demo.sent:,} orders sent", style="dim"
        )
    hints = {"running": "Ctrl-C: drain and stop", "draining": "Ctrl-C: stop now"}
    if snapshot.phase in hints:
        line2.append(f"   {hints[snapshot.phase]}", style="dim")
    return Panel(Group(line1, line2), title=f"streampipe up · {snapshot.pipeline}", title_align="left")


def _figures(snapshot: Snapshot) -> Text:
    return Text.assemble(
        ("length ", "dim"),
        f"{snapshot.stream_length:,}",
        ("   produced ", "dim"),
        f"{snapshot.produced:,} ({_rate(snapshot.produce_rate)})",
        ("   trimmed ", "dim"),
        f"{snapshot.trimmed:,}",
        ("   dead letters ", "dim"),
        (f"{snapshot.dead_letters:,}", "red" if snapshot.dead_letters else ""),
    )


def _groups(snapshot: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("group")
    table.add_column("workers")
    for column in ("lag", "pending", "backlog", "done/s", "processed", "retried", "dead"):
        table.add_column(column, justify="right")
    for group in snapshot.groups:
        lag = _count(group.lag) + ("~" if group.lag_estimated and group.lag is not None else "")
        table.add_row(
            group.name,
            _workers(group),
            lag,
            _count(group.pending),
            Text(_count(group.backlog), style="bold" if group.backlog else ""),
            _rate(group.throughput),
            _count(group.workers["processed"]),
            _count(group.workers["retried"]),
            Text(
                _count(group.workers["dead_lettered"]), style="red" if group.workers["dead_lettered"] else ""
            ),
        )
    return table


def _event_line(event: LogEvent) -> Text:
    line = Text.assemble(
        (f"{_clock(event.at)} ", "dim"),
        (f"{event.kind:<12}", EVENT_STYLES.get(event.kind, "")),
        event.text,
    )
    # One line per event, so the view keeps its height; the whole text is in --no-ui output.
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def render_snapshot(snapshot: Snapshot, events: int = 10) -> RenderableType:
    """The live view of one moment."""
    lines = [_event_line(event) for event in snapshot.events[-events:]] or [Text("(nothing yet)", "dim")]
    return Group(
        _header(snapshot),
        _figures(snapshot),
        _groups(snapshot),
        Text("recent events", style="bold"),
        *lines,
    )


def progress_line(snapshot: Snapshot) -> str:
    """One plain line for logs: the stream, then each group."""
    parts = [
        f"[{snapshot.elapsed:6.1f}s] {snapshot.phase}",
        f"length {snapshot.stream_length}",
        f"produced {snapshot.produced} ({_rate(snapshot.produce_rate)})",
        f"dead letters {snapshot.dead_letters}",
    ]
    for group in snapshot.groups:
        parts.append(
            f"| {group.name} workers {group.ready}/{group.desired} backlog {_count(group.backlog)} "
            f"(lag {_count(group.lag)}, pending {group.pending}) {_rate(group.throughput)}"
        )
    return "  ".join(parts)


def render_summary(summary: UpSummary) -> RenderableType:
    """The end-of-run summary for people (``--output json`` prints the model instead)."""
    where = f"embedded {summary.server}" if summary.embedded else summary.server
    title = Text.assemble(
        ("summary ", "bold"), f"{summary.pipeline} · {summary.stream} · {summary.seconds:g}s on {where}"
    )
    facts = Table(show_header=False, box=None, padding=(0, 2), pad_edge=False)
    facts.add_column(style="dim")
    facts.add_column()
    produced = f"{summary.produced:,} events"
    if summary.demo is not None:
        demo = summary.demo
        produced += (
            f" (demo producer sent {demo.sent:,}: {demo.ok:,} fine, {demo.flaky:,} with a flaky gateway, "
            f"{demo.too_expensive} too expensive, {demo.cursed} cursed, {demo.invalid} invalid)"
        )
    facts.add_row("produced", produced)
    facts.add_row("dead-lettered", f"{summary.dead_lettered:,} into {summary.dead_letter}")
    facts.add_row("trimmed", f"{summary.trimmed:,} entries (retention)")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("group")
    for column in ("processed", "dead-lettered", "retried", "left", "workers max→end", "p50", "p99"):
        table.add_column(column, justify="right")
    for group in summary.groups:
        latency = group.latency
        table.add_row(
            group.name,
            f"{group.processed:,}",
            f"{group.dead_lettered:,}",
            f"{group.retried:,}",
            _count(group.backlog_left),
            f"{group.max_replicas} → {group.final_replicas}",
            "-" if latency is None else f"{latency.p50_ms:,.0f} ms",
            "-" if latency is None else f"{latency.p99_ms:,.0f} ms",
        )
    lines: list[RenderableType] = [title, facts, table]
    for group in summary.groups:
        if group.dead_letter_reasons:
            causes = ", ".join(f"{count} {name}" for name, count in sorted(group.dead_letter_reasons.items()))
            lines.append(Text.assemble((f"dead letters of {group.name}: ", "dim"), causes))
    moves: dict[str, list[str]] = {}
    for event in summary.scale_events:
        moves.setdefault(event.group, []).append(
            f"{event.from_replicas}→{event.to_replicas} at {event.at:.0f}s"
        )
    for group_name, changes in moves.items():
        lines.append(Text.assemble((f"scaling of {group_name}: ", "dim"), ", ".join(changes)))
    if summary.settled and summary.accounted:
        lines.append(
            Text("✓ every produced event was processed or dead-lettered, in every group", style="bold green")
        )
    else:
        lines.append(
            Text("✗ not every produced event was processed or dead-lettered (see 'left')", style="bold red")
        )
    lines.append(Text.assemble(("latency: ", "dim"), summary.latency_source))
    lines.extend(Text.assemble(("note: ", "yellow"), note) for note in summary.notes)
    return Group(*lines)


class PlainView(View):
    """``--no-ui``: the start lines, every event as it happens, a progress line every 2 s."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._next_line = 0.0

    def _line(self, text: str) -> None:
        # One record per line, never wrapped: these lines end up in logs.
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def started(self, lines: list[str]) -> None:
        for line in lines:
            self._line(line)

    def event(self, event: LogEvent) -> None:
        self._line(f"[{event.at:6.1f}s] {event.kind}: {event.text}")

    def update(self, snapshot: Snapshot) -> None:
        if snapshot.elapsed >= self._next_line or snapshot.phase != "running":
            self._next_line = snapshot.elapsed + PLAIN_EVERY
            self._line(progress_line(snapshot))

    def finish(self, summary: UpSummary) -> None:
        self.console.print(render_summary(summary))


class LiveView(View):
    """The rich live view (redrawn four times a second from the latest snapshot)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    def started(self, lines: list[str]) -> None:
        for line in lines:
            self.console.print(Text(line, style="dim"))
        self._live = Live(console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render_snapshot(snapshot))

    def finish(self, summary: UpSummary) -> None:
        self.close()
        self.console.print(render_summary(summary))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class SummaryOnly(View):
    """Only the JSON summary (``--output json`` with its progress sent to another view)."""

    def __init__(self, progress: View, emit: Any) -> None:
        self.progress = progress
        self.emit = emit

    def started(self, lines: list[str]) -> None:
        self.progress.started(lines)

    def event(self, event: LogEvent) -> None:
        self.progress.event(event)

    def update(self, snapshot: Snapshot) -> None:
        self.progress.update(snapshot)

    def finish(self, summary: UpSummary) -> None:
        self.progress.finish(summary)
        self.emit(summary.model_dump_json(indent=2))

    def close(self) -> None:
        self.progress.close()
