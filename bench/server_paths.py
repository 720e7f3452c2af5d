"""Redis 8.2's stream commands against the paths streampipe takes without them, on one Redis 8.2 server.

Two choices depend on these figures (see ``plan.retention``'s docstring and docs/operator.md):

- **Protected trimming**: the operator's planned ``XTRIM MAXLEN ~ n LIMIT P`` (whole nodes, ``P`` entries
  proven processed) against the server's ``XTRIM MAXLEN = n ACKED`` (each entry checked against every
  group), in one call and in the operator's 10,000-entry steps; also ``MAXLEN ~ n ACKED`` (does it trim?).
- **Acknowledging with deletion**: ``XACK`` alone against ``XACKDEL ... ACKED`` and ``XACK`` + ``XDEL``
  in one pipeline, 100 ids per command.

The cost is the server's own CPU time for the command (``INFO commandstats`` usec, reset before each
case), per entry removed or acknowledged, so the load of the client does not enter it.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

import redis
from harness import BenchServer, fill_example_stream, progress

STREAM = "bench:paths"
GROUPS = ("billing", "audit")


class PathCost(BaseModel):
    """One way to do a job: server microseconds per entry, and what it did."""

    job: str = Field(description="trim | ack")
    path: str
    entries: int = Field(description="Entries removed (trim) or acknowledged (ack)")
    calls: int
    server_us: float = Field(description="Server CPU time of the commands, INFO commandstats")

    @property
    def per_entry_us(self) -> float:
        return self.server_us / self.entries if self.entries else float("inf")


def _server_us(client: redis.Redis, *commands: str) -> float:
    stats = client.info("commandstats")
    return float(sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0) for name in commands))


def _prepare(client: redis.Redis, url: str, entries: int, unread: int) -> None:
    """``entries`` events; both groups past all but the last ``unread`` (read and acknowledged)."""
    client.delete(STREAM)
    fill_example_stream(url, STREAM, entries)
    last = client.xrevrange(STREAM, count=unread + 1)[-1][0]
    for group in GROUPS:
        client.execute_command("XGROUP", "CREATE", STREAM, group, last, "ENTRIESREAD", entries - unread)


def trim_paths(server: BenchServer, entries: int, keep: int, chunk: int = 10_000) -> list[PathCost]:
    client = server.client()
    unread = keep // 10
    results: list[PathCost] = []

    def case(path: str, run: Callable[[], tuple[int, int]]) -> None:
        _prepare(client, server.url, entries, unread)
        client.config_resetstat()
        removed, calls = run()
        results.append(
            PathCost(
                job="trim", path=path, entries=removed, calls=calls, server_us=_server_us(client, "xtrim")
            )
        )
        progress(f"  trim {path}: {removed:,} removed in {calls} calls")

    def planned() -> tuple[int, int]:
        proven = entries - unread  # what the plan proves processed: length - lag
        removed = calls = 0
        while removed < proven:
            step = min(chunk, proven - removed)
            got = int(client.execute_command("XTRIM", STREAM, "MAXLEN", "~", keep, "LIMIT", step))
            removed, calls = removed + got, calls + 1
            if got == 0:
                break
        return removed, calls

    def acked_steps() -> tuple[int, int]:
        removed = calls = 0
        while (length := int(client.xlen(STREAM))) > keep:
            got = int(
                client.execute_command("XTRIM", STREAM, "MAXLEN", "=", max(keep, length - chunk), "ACKED")
            )
            removed, calls = removed + got, calls + 1
            if got == 0:
                break
        return removed, calls

    case("planned MAXLEN ~ LIMIT", planned)
    case("MAXLEN = ACKED, 10K steps", acked_steps)
    case(
        "MAXLEN = ACKED, one call",
        lambda: (int(client.execute_command("XTRIM", STREAM, "MAXLEN", "=", keep, "ACKED")), 1),
    )
    case(
        "MAXLEN ~ ACKED",
        lambda: (int(client.execute_command("XTRIM", STREAM, "MAXLEN", "~", keep, "ACKED")), 1),
    )
    client.delete(STREAM)
    return results


def ack_paths(server: BenchServer, entries: int, batch: int = 100) -> list[PathCost]:
    client = server.client()
    results: list[PathCost] = []
    for path in ("XACK", "XACKDEL ACKED", "XACK + XDEL"):
        client.delete(STREAM)
        fill_example_stream(server.url, STREAM, entries)
        client.xgroup_create(STREAM, GROUPS[0], id="0")
        ids: list[str] = []
        while len(ids) < entries:
            reply = client.xreadgroup(GROUPS[0], "c", {STREAM: ">"}, count=10_000)
            ids.extend(entry_id for entry_id, _ in reply[0][1])
        client.config_resetstat()
        calls = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            if path == "XACK":
                client.xack(STREAM, GROUPS[0], *chunk)
            elif path == "XACKDEL ACKED":
                client.execute_command("XACKDEL", STREAM, GROUPS[0], "ACKED", "IDS", len(chunk), *chunk)
            else:
                pipe = client.pipeline(transaction=False)
                pipe.xack(STREAM, GROUPS[0], *chunk)
                pipe.xdel(STREAM, *chunk)
                pipe.execute()
            calls += 1
        used = _server_us(client, "xack", "xackdel", "xdel")
        results.append(PathCost(job="ack", path=path, entries=len(ids), calls=calls, server_us=used))
        progress(f"  ack {path}: {len(ids):,} entries, stream left with {client.xlen(STREAM):,}")
    client.delete(STREAM)
    return results


def measure(server: BenchServer, *, quick: bool) -> list[PathCost]:
    entries = 100_000 if quick else 1_000_000
    trims = trim_paths(server, entries, keep=entries // 10)
    acks = ack_paths(server, 20_000 if quick else 200_000)
    return trims + acks
