"""``streampipe status --partitions N``: every partition of a partitioned stream, and the totals.

Each partition is observed as ``status`` observes one stream (``gather_status``); the summary adds each
partition's hash slot and, per group, the lag, pending and backlog summed over the partitions (a lag
the server cannot give for some partition makes the total unknown, never zero).
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from streampipe_operator.streams.admin import RedisAdmin
from streampipe_operator.streams.report import StatusReport, gather_status
from streampipe_operator.streams.targets import Target
from streampipe_worker.connection import create_async_client
from streampipe_worker.partitions import PartitionLayout


class PartitionStatus(BaseModel):
    index: int
    slot: int = Field(description="Cluster hash slot of the partition's keys")
    status: StatusReport


class GroupTotal(BaseModel):
    name: str
    lag: int | None = Field(description="Summed over the partitions; None: unknown in some partition")
    pending: int
    backlog: int | None


class PartitionedStatusReport(BaseModel):
    """What ``streampipe status --partitions N --output json`` prints."""

    base: str
    count: int
    partitions: list[PartitionStatus]
    groups: list[GroupTotal]
    length: int = Field(description="Entries in all partitions")
    dead_letters: int = Field(description="Entries in all partitions' dead-letter streams")
    missing_streams: list[str] = Field(default_factory=list, description="Partitions with no stream yet")


async def gather_partitioned(target: Target, *, consumers: bool = False) -> PartitionedStatusReport:
    """Every partition observed through one client (the partitions share a server)."""
    layout = target.layout()
    assert layout is not None
    admin = RedisAdmin(create_async_client(target.connection_settings()))
    try:
        partitions = [
            PartitionStatus(
                index=index,
                slot=layout.slot(index),
                status=await gather_status(part, consumers=consumers, admin=admin),
            )
            for index, part in enumerate(target.partition_targets())
        ]
    finally:
        await admin.client.aclose()
    return summarize(layout, partitions)


def summarize(layout: PartitionLayout, partitions: list[PartitionStatus]) -> PartitionedStatusReport:
    names = sorted({group.name for p in partitions for group in p.status.groups})
    totals = []
    for name in names:
        found = [g for p in partitions for g in p.status.groups if g.name == name]
        known = [group.lag for group in found if group.lag is not None]
        # Unknown in some partition (or the group missing there): the total is unknown, not a smaller sum.
        lag = sum(known) if len(known) == len(partitions) else None
        pending = sum(g.pending for g in found)
        totals.append(
            GroupTotal(name=name, lag=lag, pending=pending, backlog=None if lag is None else lag + pending)
        )
    return PartitionedStatusReport(
        base=layout.base,
        count=layout.count,
        partitions=partitions,
        groups=totals,
        length=sum(p.status.stream.length for p in partitions),
        dead_letters=sum(p.status.dead_letter.length for p in partitions),
        missing_streams=[p.status.stream.key for p in partitions if not p.status.stream.exists],
    )


def _number(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def render_partitioned(report: PartitionedStatusReport) -> RenderableType:
    first = report.partitions[0].status
    parts: list[RenderableType] = [
        Text.assemble(
            (f"{report.base} · {report.count} partitions", "bold"),
            f"  on {first.server} at {first.redis_url}",
        )
    ]
    names = [group.name for group in report.groups]
    table = Table(title="partitions", title_justify="left")
    for column in (
        "#",
        "stream",
        "slot",
        "length",
        *(f"{name} lag / pending" for name in names),
        "dead letters",
    ):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for partition in report.partitions:
        status = partition.status
        by_name = {group.name: group for group in status.groups}
        cells = []
        for name in names:
            group = by_name.get(name)
            cells.append("missing" if group is None else f"{_number(group.lag)} / {group.pending:,}")
        length = f"{status.stream.length:,}" if status.stream.exists else "no stream"
        table.add_row(
            str(partition.index),
            status.stream.key,
            str(partition.slot),
            length,
            *cells,
            f"{status.dead_letter.length:,}",
        )
    table.add_row(
        "",
        Text("all", style="bold"),
        "",
        f"{report.length:,}",
        *(f"{_number(total.lag)} / {total.pending:,}" for total in report.groups),
        f"{report.dead_letters:,}",
    )
    parts.append(table)
    for total in report.groups:
        parts.append(
            Text.assemble((f"{total.name}: ", "dim"), f"backlog {_number(total.backlog)} (lag + pending)")
        )
    if report.missing_streams:
        parts.append(
            Text(
                f"{len(report.missing_streams)} partitions have no stream yet: nothing was produced to them "
                "and no group was created",
                style="yellow",
            )
        )
    return Group(*parts)


def print_partitioned(report: PartitionedStatusReport, console: Console) -> None:
    console.print(render_partitioned(report))
