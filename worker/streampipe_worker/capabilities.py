"""What the connected server can do, found by asking it (INFO and COMMAND DOCS), never by guessing.

Redis and Valkey diverged after 7.2: Redis 8.2 added ``XTRIM ... ACKED``, ``XACKDEL`` and ``XDELEX``,
and 8.4 ``XREADGROUP ... CLAIM``; Valkey reports ``redis_version:7.2.4`` for compatibility and its own
``valkey_version``. A version table would be wrong for one of them sooner or later, so each stream
feature is detected from the command's own documentation (COMMAND DOCS) or presence (COMMAND INFO).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import redis.asyncio.cluster
import redis.cluster
from pydantic import BaseModel, ConfigDict, Field

ServerFamily = Literal["redis", "valkey"]


class ServerCapabilities(BaseModel):
    """Stream-related capabilities of one server."""

    model_config = ConfigDict(frozen=True)

    family: ServerFamily = Field(description="Server implementation")
    version: str = Field(description="The implementation's own version (valkey_version or redis_version)")
    lag_in_xinfo: bool = Field(description="XINFO GROUPS reports entries-read and lag (Redis >= 7.0)")
    xtrim_acked: bool = Field(description="XTRIM accepts ACKED: trim only entries every group acked")
    xreadgroup_claim: bool = Field(description="XREADGROUP accepts CLAIM min-idle-time")
    xautoclaim: bool = Field(description="XAUTOCLAIM exists (Redis >= 6.2)")
    xackdel: bool = Field(default=False, description="XACKDEL exists: acknowledge and delete in one command")
    xdelex: bool = Field(default=False, description="XDELEX exists: delete with KEEPREF|DELREF|ACKED")
    aof_enabled: bool = Field(description="appendonly is on: a server crash keeps acknowledged writes")

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return version_tuple(self.version)

    def describe(self) -> str:
        return f"{self.family} {self.version}"

    def stream_commands(self) -> list[str]:
        """The optional stream commands (and arguments) this server has, as status shows them."""
        present = {
            "XAUTOCLAIM": self.xautoclaim,
            "XTRIM ACKED": self.xtrim_acked,
            "XACKDEL": self.xackdel,
            "XDELEX": self.xdelex,
            "XREADGROUP CLAIM": self.xreadgroup_claim,
        }
        return [name for name, has in present.items() if has]


def version_tuple(version: str) -> tuple[int, ...]:
    """``"8.2.0-rc1"`` -> ``(8, 2, 0)``: the leading digits of each dotted part."""
    parts: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


def _decoded(node: Any) -> Any:
    """Replies as plain str/dict/list whatever the client's decode_responses and protocol."""
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    if isinstance(node, Mapping):
        return {_decoded(k): _decoded(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_decoded(item) for item in node]
    return node


def _tokens(docs: Any) -> set[str]:
    """Every argument token and name in a COMMAND DOCS reply, upper-cased, at any depth."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("token", "name") and isinstance(value, str):
                    found.add(value.upper())
                walk(value)
        elif isinstance(node, list):
            # RESP2 replies come as flat [key, value, key, value, ...] lists.
            for i, item in enumerate(node):
                if item in ("token", "name") and i + 1 < len(node) and isinstance(node[i + 1], str):
                    found.add(node[i + 1].upper())
                walk(item)

    walk(_decoded(docs))
    return found


def parse_capabilities(
    info: Mapping[str, Any],
    xtrim_docs: Any,
    xreadgroup_docs: Any,
    xgroup_create_docs: Any,
    commands: Iterable[str],
) -> ServerCapabilities:
    """Build capabilities from INFO (server + persistence) and COMMAND DOCS replies. Pure."""
    info = _decoded(info)
    family: ServerFamily = "valkey" if str(info.get("server_name", "")).lower() == "valkey" else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version") or "0")
    command_set = {c.lower() for c in commands}
    return ServerCapabilities(
        family=family,
        version=version,
        lag_in_xinfo="ENTRIESREAD" in _tokens(xgroup_create_docs),
        xtrim_acked="ACKED" in _tokens(xtrim_docs),
        xreadgroup_claim="CLAIM" in _tokens(xreadgroup_docs),
        xautoclaim="xautoclaim" in command_set,
        xackdel="xackdel" in command_set,
        xdelex="xdelex" in command_set,
        aof_enabled=str(info.get("aof_enabled", "0")) == "1",
    )


_DOC_COMMANDS = ("xtrim", "xreadgroup", "xgroup|create")
# Commands whose presence alone is the feature: COMMAND INFO answers nil for an unknown one.
_PRESENCE_COMMANDS = ("xautoclaim", "xackdel", "xdelex")


def _present(names: Iterable[str], reply: Any) -> list[str]:
    return [name for name, info in zip(names, reply, strict=False) if info]


def _docs_for(reply: Any, name: str) -> Any:
    reply = _decoded(reply)
    if isinstance(reply, Mapping):
        return reply.get(name, {})
    return reply


def keyless_target(client: Any) -> dict[str, Any]:
    """Routing for INFO and COMMAND: they name no key, so a cluster client cannot route them by slot;
    its default node answers (every node of a cluster runs the same server)."""
    if isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster):
        return {"target_nodes": client.get_default_node()}
    return {}


def detect_capabilities(client: Any) -> ServerCapabilities:
    """Ask a synchronous redis-py client (standalone, Sentinel master or cluster) what it supports."""
    node = keyless_target(client)
    info = dict(client.info("server", **node))
    info.update(client.info("persistence", **node))
    docs = {
        name: _docs_for(client.execute_command("COMMAND DOCS", name, **node), name) for name in _DOC_COMMANDS
    }
    present = _present(
        _PRESENCE_COMMANDS, client.execute_command("COMMAND INFO", *_PRESENCE_COMMANDS, **node)
    )
    return parse_capabilities(info, docs["xtrim"], docs["xreadgroup"], docs["xgroup|create"], present)


async def adetect_capabilities(client: Any) -> ServerCapabilities:
    """Ask a ``redis.asyncio`` client (standalone, Sentinel master or cluster) what it supports."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()  # its default node is known once it has read the cluster's slots
    node = keyless_target(client)
    info = dict(await client.info("server", **node))
    info.update(await client.info("persistence", **node))
    docs = {}
    for name in _DOC_COMMANDS:
        docs[name] = _docs_for(await client.execute_command("COMMAND DOCS", name, **node), name)
    reply = await client.execute_command("COMMAND INFO", *_PRESENCE_COMMANDS, **node)
    present = _present(_PRESENCE_COMMANDS, reply)
    return parse_capabilities(info, docs["xtrim"], docs["xreadgroup"], docs["xgroup|create"], present)
