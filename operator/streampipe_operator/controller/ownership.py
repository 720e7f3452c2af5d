"""Which StreamPipeline owns a stream when several name the same server and stream. Pure.

Two pipelines driving one stream would fight: both create groups, both trim, both scale workers on the
same backlog. One owns the stream; the others are ``Ready=False`` with reason ``Conflict`` and touch
nothing. The owner is the one that already acts as owner (its status says so: it was reconciled and
is not itself in conflict), else the oldest (``creationTimestamp``; it has whole seconds only, so a
second pipeline created in the same second must not take the stream over), then namespace/name.

"Same server" is decided from the URL as written: scheme, hosts (sorted, lower-cased; Sentinel and
Cluster URLs list several), port and database. Two spellings of one server (a Service name and its
IP, two different seed nodes of one cluster) are not recognised; neither are pipelines in namespaces
this operator does not watch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from streampipe_operator import api
from streampipe_operator.api import Reason
from streampipe_worker.connection import parse_url


class PipelineRef(BaseModel):
    """One StreamPipeline, as far as ownership of its stream is concerned."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    uid: str
    created: str = ""  # metadata.creationTimestamp (RFC 3339 in UTC: sorts as text)
    established: bool = False  # its status shows it reconciled the stream as its owner
    deleting: bool = False

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


def stream_identity(spec: api.StreamPipelineSpec) -> str:
    """``mode|scheme://host:port,...|db|stream``: equal for two specs that name the same stream."""
    default_port = 26379 if spec.redis.mode == "sentinel" else 6379
    parsed = parse_url(spec.redis.url, default_port=default_port)
    hosts = ",".join(sorted(f"{host.lower()}:{port}" for host, port in parsed.hosts))
    # A cluster has a single keyspace: the database number does not tell two streams apart.
    database = 0 if spec.redis.mode == "cluster" else parsed.db
    scheme = "rediss" if parsed.tls else "redis"
    # Partitions live under {<base>:<i>}: a base name conflicts with another base, not with a key.
    stream = spec.stream if spec.partitions is None else f"{{{spec.stream}:*}}"
    return f"{spec.redis.mode}|{scheme}://{hosts}|{database}|{stream}"


def identity_of(body: Any) -> str | None:
    """The stream identity of a resource body, or None when its spec cannot be read."""
    try:
        spec = api.StreamPipeline.from_body(body).spec
        return stream_identity(spec)
    except ValueError:
        # pydantic's ValidationError is a ValueError; an invalid spec owns nothing.
        return None


def established(body: Any) -> bool:
    """Whether a resource's status shows it reconciled its stream as the owner (Ready was set by the
    operator, and not because the spec is invalid or another pipeline owns the stream)."""
    status = body.get("status") or {}
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == api.ConditionType.READY), None
    )
    return ready is not None and ready.get("reason") not in (Reason.CONFLICT, Reason.INVALID_SPEC)


def _precedence(ref: PipelineRef) -> tuple[bool, str, str, str]:
    return (not ref.established, ref.created, ref.namespace, ref.name)


def owner(refs: Iterable[PipelineRef]) -> PipelineRef | None:
    """The pipeline that owns the stream among those naming it (see the module docstring)."""
    return min(refs, key=_precedence, default=None)


def others(refs: Iterable[PipelineRef], me: str) -> list[PipelineRef]:
    """Every pipeline naming the stream except the one with uid ``me``, owner first."""
    return sorted((ref for ref in refs if ref.uid != me), key=_precedence)
