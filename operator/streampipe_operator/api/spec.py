"""The StreamPipeline spec: server, stream, retention, retries, dead letters, groups and their scaling.

Spec models are strict (``"5"`` is not an integer, as for the API server), refuse unknown fields and
are frozen; their cross-field rules are CEL expressions with Python twins
(:mod:`streampipe_operator.api.cel`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    model_validator,
)

from streampipe_operator.api.cel import cel_rule, cel_transition_rule
from streampipe_operator.api.durations import Duration, DurationRange
from streampipe_operator.api.fields import (
    DEFAULT_DEAD_LETTER_SUFFIX,
    DNS_LABEL,
    HANDLER,
    HASH_TAG,
    MAX_GROUP_NAME,
    MAX_GROUPS,
    NO_WHITESPACE,
    REDIS_URL,
    STREAM_ID,
    URL_WITH_CREDENTIALS,
    DnsSubdomain,
    SecretKey,
    SpecModel,
    StreamKey,
    _cel_hash_tag,
    default_of,
    hash_tag,
    refuse_duplicates,
)
from streampipe_operator.api.pod_template import PodTemplateSpec
from streampipe_worker.ownership import generation_key, members_key, owner_key
from streampipe_worker.partitions import MAX_PARTITIONS, PartitionLayout, layout_key

# --------------------------------------------------------------------------------------------- redis


class SentinelSpec(SpecModel):
    """Redis Sentinel: the master to ask the sentinels for. The sentinels themselves are the url's hosts."""

    master_name: Annotated[str, StringConstraints(pattern=NO_WHITESPACE, max_length=253)] = Field(
        description="Name of the monitored master, as in `sentinel monitor <masterName> ...`.",
    )


class AuthSpec(SpecModel):
    """Credentials from a Secret in the pipeline's namespace; never written into the resource itself."""

    secret_name: DnsSubdomain = Field(description="Name of the Secret holding the credentials.")
    username_key: SecretKey | None = Field(
        default=None,
        description="Key in the Secret holding the ACL user name. Omit to authenticate as the default user "
        "with a password only.",
    )
    password_key: SecretKey = Field(default="password", description="Key in the Secret holding the password.")


class TLSSpec(SpecModel):
    """TLS settings for a `rediss://` url."""

    ca_secret_name: DnsSubdomain | None = Field(
        default=None,
        description="Secret holding the CA certificate that signed the server's certificate. Omit to trust "
        "the system CAs of the worker image.",
    )
    ca_key: SecretKey = Field(
        default="ca.crt", description="Key in caSecretName holding the PEM CA certificate."
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="Do not verify the server's certificate. Encrypts without authenticating the server: "
        "for tests only.",
    )

    @cel_rule(
        "!(self.insecureSkipVerify && has(self.caSecretName))",
        message="set caSecretName or insecureSkipVerify, not both: skipping verification ignores the CA",
        field_path=".insecureSkipVerify",
    )
    def _ca_or_skip(self) -> bool:
        return not (self.insecure_skip_verify and self.ca_secret_name is not None)


class RedisSpec(SpecModel):
    """Where the stream lives and how to connect to it."""

    url: Annotated[str, StringConstraints(pattern=REDIS_URL, max_length=2048)] = Field(
        description="Server URL: `redis://host:6379/0`, or `rediss://...` for TLS. In sentinel mode the "
        "hosts are the sentinels (`redis://s1:26379,s2:26379/0`); in cluster mode any seed nodes. May "
        "carry a user name but never a password: use auth.",
    )
    mode: Literal["standalone", "sentinel", "cluster"] = Field(
        default="standalone",
        description="Topology: `standalone` (one server or a replicated primary behind a Service), "
        "`sentinel` (ask the sentinels in url for the current master) or `cluster` (Redis Cluster; "
        "stream keys need a {hash tag}).",
    )
    sentinel: SentinelSpec | None = Field(
        default=None, description="Sentinel settings: required when mode is sentinel, refused otherwise."
    )
    auth: AuthSpec | None = Field(
        default=None, description="Credentials (password, optionally an ACL user) from a Secret."
    )
    tls: TLSSpec | None = Field(default=None, description="TLS verification settings; needs a rediss:// url.")

    @cel_rule(
        f"!self.url.matches('{URL_WITH_CREDENTIALS}')",
        message="must not contain a password: put it in a Secret and reference it with auth.secretName",
        field_path=".url",
    )
    def _no_password_in_url(self) -> bool:
        return not re.match(URL_WITH_CREDENTIALS, self.url)

    @cel_rule(
        "self.mode != 'sentinel' || has(self.sentinel)",
        message="required when mode is sentinel: set sentinel.masterName",
        field_path=".sentinel",
    )
    def _sentinel_required(self) -> bool:
        return self.mode != "sentinel" or self.sentinel is not None

    @cel_rule(
        "self.mode == 'sentinel' || !has(self.sentinel)",
        message="only allowed when mode is sentinel",
        field_path=".sentinel",
    )
    def _sentinel_only_with_mode(self) -> bool:
        return self.mode == "sentinel" or self.sentinel is None

    @cel_rule(
        "!has(self.tls) || self.url.startsWith('rediss://')",
        message="needs a rediss:// url: tls settings apply only to TLS connections",
        field_path=".tls",
    )
    def _tls_needs_rediss(self) -> bool:
        return self.tls is None or self.url.startswith("rediss://")


# ------------------------------------------------------------------------------ retention and retry


class RetentionSpec(SpecModel):
    """How the operator trims the stream (XTRIM MAXLEN / MINID)."""

    max_length: Annotated[int, Field(ge=1, le=10**12)] | None = Field(
        default=None, description="Keep at most this many entries (XTRIM MAXLEN)."
    )
    max_age: Annotated[Duration, DurationRange("1s", "87600h")] | None = Field(
        default=None, description="Keep entries younger than this (XTRIM MINID now-maxAge), e.g. `24h`."
    )
    approximate: bool = Field(
        default=True,
        description="Trim with `~`: Redis removes whole macro nodes only, which is much cheaper and may keep "
        "a few more entries than the limit.",
    )
    protect_unprocessed: bool = Field(
        default=True,
        description="Never trim past the oldest entry a group has not yet read or acknowledged; the "
        "RetentionHeld condition reports when this holds trimming back.",
    )
    interval: Annotated[Duration, DurationRange("1s", "24h")] = Field(
        default=Duration("30s"), description="How often the operator trims."
    )

    @cel_rule(
        "has(self.maxLength) || has(self.maxAge)",
        message="set maxLength, maxAge or both: retention without a limit never trims",
    )
    def _has_limit(self) -> bool:
        return self.max_length is not None or self.max_age is not None


class BackoffSpec(SpecModel):
    """Delay before a failed entry is retried: initial * multiplier^(deliveries-1), at most max."""

    initial: Annotated[Duration, DurationRange("1ms", "24h")] = Field(
        default=Duration("1s"), description="Delay before the first retry."
    )
    multiplier: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        default=2.0, description="Factor applied to the delay after each failed delivery."
    )
    max: Annotated[Duration, DurationRange("1ms", "24h")] = Field(
        default=Duration("5m"), description="Upper bound of the delay."
    )

    @cel_rule(
        "duration(self.max) >= duration(self.initial)",
        message_expression="'must be >= initial (%s)'.format([self.initial])",
        field_path=".max",
    )
    def _max_not_below_initial(self) -> bool | str:
        return self.max.delta >= self.initial.delta or f"must be >= initial ({self.initial})"


class RetrySpec(SpecModel):
    """Retries of failed entries. The attempt count is the entry's delivery count in the group's PEL."""

    max_deliveries: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=3,
        description="Deliveries (first attempt included) before an entry moves to the dead-letter stream.",
    )
    backoff: BackoffSpec = Field(
        default_factory=BackoffSpec,
        description="Delay between attempts.",
        json_schema_extra=default_of(BackoffSpec),
    )
    claim_idle: Annotated[Duration, DurationRange("1s", "24h")] = Field(
        default=Duration("60s"),
        description="Entries of a consumer that stopped (crashed pod) are claimed by another consumer "
        "after being idle this long (XAUTOCLAIM min-idle-time).",
    )


class DeadLetterSpec(SpecModel):
    """The dead-letter stream: entries that failed maxDeliveries times, or that no handler can parse."""

    stream: StreamKey | None = Field(
        default=None,
        description="Key of the dead-letter stream. Default: `<spec.stream>:dlq`, which shares the "
        "stream's {hash tag}.",
    )
    max_length: Annotated[int, Field(ge=1, le=10**12)] = Field(
        default=100_000,
        description="The operator trims the dead-letter stream to about this many entries; the oldest "
        "dead letters go first.",
    )


class PartitionsSpec(SpecModel):
    """One pipeline spread over many stream keys (docs/partitions.md): partition ``i`` of base name ``B``
    is the stream ``{B:i}`` with its dead-letter stream ``{B:i}:dlq``, each in its own cluster slot."""

    count: Annotated[int, Field(ge=1, le=MAX_PARTITIONS)] = Field(
        description="Number of partitions, 1..1024. May grow, never shrink: entries of a removed partition "
        "would be stranded. Under `PerKey` a key that growing moves waits for its older entries in its "
        "old partition (docs/partitions.md)."
    )
    key: Annotated[str, StringConstraints(pattern=NO_WHITESPACE, min_length=1, max_length=256)] | None = (
        Field(
            default=None,
            description="The entry field producers route by: partition = crc32(value) mod count (test "
            "vectors in docs/partitions.md). Omit to spread entries evenly over the partitions.",
        )
    )
    ordering: Literal["None", "PerKey"] = Field(
        default="None",
        description="`None`: every worker reads every partition; entries of one key may be handled out of "
        "order when several pods or a concurrency above 1 handle them. `PerKey`: each partition has one "
        "owner at a time (a fenced lease), which handles each key's entries in order; workers are capped "
        "at count.",
    )
    lease_duration: Annotated[Duration, DurationRange("1s", "5m")] = Field(
        default=Duration("10s"),
        description="With `PerKey`: how long a partition's lease lasts unless its owner renews it (every "
        "third of it). A worker that dies without stopping holds its partitions this long, so a kill "
        "pauses them for 2/3 to 4/3 of it; a shorter lease fails over sooner, but a pod stalled longer "
        "(a long GC or CPU throttling) loses its partitions.",
    )

    @cel_transition_rule(
        "self.count >= oldSelf.count",
        message_expression="'may grow, never shrink (was %d): entries of a removed partition would be "
        "stranded'.format([oldSelf.count])",
        field_path=".count",
    )
    def _count_grows(self, old: PartitionsSpec) -> bool | str:
        return self.count >= old.count or (
            f"may grow, never shrink (was {old.count}): entries of a removed partition would be stranded"
        )


# ------------------------------------------------------------------------------------------- groups


class ScalingSpec(SpecModel):
    """How the operator sizes the group's worker Deployment from its backlog (lag + pending)."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=1,
        description="Fewest worker pods. 0 lets an idle group scale to zero; it wakes when the backlog "
        "exceeds activationBacklog, and never drops to zero while entries are pending.",
    )
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = Field(default=10, description="Most worker pods.")
    backlog_per_replica: Annotated[int, Field(ge=1, le=10**9)] = Field(
        default=1000,
        description="Target backlog per pod: desired replicas = ceil(backlog / backlogPerReplica), clamped "
        "to [minReplicas, maxReplicas].",
    )
    activation_backlog: Annotated[int, Field(ge=0, le=10**9)] = Field(
        default=0,
        description="With minReplicas 0: the backlog above which a group at zero gets its first pod.",
    )
    poll_interval: Annotated[Duration, DurationRange("1s", "10m")] = Field(
        default=Duration("5s"), description="How often the operator measures the backlog."
    )
    scale_down_stabilization: Annotated[Duration, DurationRange("0s", "1h")] = Field(
        default=Duration("5m"),
        description="Scale down only to the highest desired value seen in this window (as the "
        "HorizontalPodAutoscaler does); scaling up is immediate. At most 1h, the HPA's own limit.",
    )
    mode: Literal["native", "none"] = Field(
        default="native",
        description="`native`: the operator sets the Deployment's replicas. `none`: it never touches them "
        "after creating the Deployment with minReplicas (another autoscaler, or a person, owns them).",
    )

    @cel_rule(
        "self.minReplicas <= self.maxReplicas",
        # format(), not `+ string(...)`: the cost estimator cannot bound int-to-string concatenation.
        message_expression="'must be >= minReplicas (%d)'.format([self.minReplicas])",
        field_path=".maxReplicas",
    )
    def _min_not_above_max(self) -> bool | str:
        return self.min_replicas <= self.max_replicas or f"must be >= minReplicas ({self.min_replicas})"

    @cel_rule(
        "self.activationBacklog == 0 || self.minReplicas == 0",
        message="applies only when minReplicas is 0: it is the backlog that wakes a group scaled to zero",
        field_path=".activationBacklog",
    )
    def _activation_needs_zero(self) -> bool:
        return self.activation_backlog == 0 or self.min_replicas == 0


class DedupeSpec(SpecModel):
    """Skipping repeated events: after an entry is processed, its processed marker is kept for ttl."""

    ttl: Annotated[Duration, DurationRange("1s", "720h")] = Field(
        description="How long a processed marker (`<stream>:dedupe:<group>:<key>`, key = the entry's "
        "`dedupe_key` field, else its ID) is kept. An entry whose marker exists is acknowledged without "
        "calling the handler. Cover the longest gap between a producer's retries of one event; at most "
        "720h (30 days).",
    )


class GroupSpec(SpecModel):
    """A consumer group: its handler, its worker image and how its workers scale."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=MAX_GROUP_NAME)] = Field(
        description="Group name on the stream, and the suffix of the worker Deployment `<pipeline>-<name>` "
        "(a DNS label of at most 30 characters).",
    )
    start_id: Annotated[str, StringConstraints(pattern=STREAM_ID, max_length=41)] = Field(
        default="$",
        description="Where a new group starts reading: `$` (only new entries), `0` (the whole stream) or "
        "an entry ID. Used when the group is created; changing it later moves nothing.",
    )
    handler: Annotated[str, StringConstraints(pattern=HANDLER, max_length=256)] = Field(
        description="The function or Router the workers call, as `module:attribute` importable in the image "
        "(e.g. `shop_handlers.billing:router`).",
    )
    image: Annotated[str, StringConstraints(pattern=NO_WHITESPACE, max_length=512)] = Field(
        description="Worker image: streampipe's worker image with your handler package installed."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    batch_size: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=100, description="Entries read per XREADGROUP call (COUNT)."
    )
    concurrency: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1,
        description="Handler calls in flight per pod. Above 1 (for async, I/O-bound handlers) entries of "
        "a batch may finish out of order.",
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec,
        description="Autoscaling on backlog.",
        json_schema_extra=default_of(ScalingSpec),
    )
    dedupe: DedupeSpec | None = Field(
        default=None,
        description="Process each event at most once per ttl: entries with a `dedupe_key` (or an ID) "
        "seen within ttl are acknowledged without calling the handler. Omit for no dedupe.",
    )
    template: PodTemplateSpec | None = Field(default=None, description="Overrides for the worker pods.")


# --------------------------------------------------------------------------------------------- spec


class StreamPipelineSpec(SpecModel):
    """The desired state: one stream, its consumer groups, and the policies the operator enforces."""

    redis: RedisSpec = Field(description="The Redis or Valkey server holding the stream.")
    stream: StreamKey = Field(
        description="Key of the stream. In cluster mode it needs a {hash tag} (`{orders}:events`) so that "
        "the stream and its dead-letter stream live in one slot. With partitions: the base name of the "
        "partitions' keys (`orders` -> `{orders:0}`, `{orders:1}`, ...), without braces.",
    )
    partitions: PartitionsSpec | None = Field(
        default=None,
        description="Spread the pipeline over this many stream keys, each in its own cluster slot, with its "
        "own dead-letter stream. Omit for one stream. Cannot be added to or removed from an existing "
        "pipeline.",
    )
    retention: RetentionSpec | None = Field(
        default=None,
        description="Trimming. Without it the stream grows until producers trim it (XADD MAXLEN).",
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        description="Retries with backoff, and when an entry gives up and moves to the dead-letter stream.",
        json_schema_extra=default_of(RetrySpec),
    )
    dead_letter: DeadLetterSpec = Field(
        default_factory=DeadLetterSpec,
        description="The dead-letter stream.",
        json_schema_extra=default_of(DeadLetterSpec),
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What deleting the StreamPipeline does to the data: `Retain` leaves the stream, its "
        "groups and the dead-letter stream; `Delete` destroys them.",
    )
    groups: Annotated[list[GroupSpec], Field(min_length=1, max_length=MAX_GROUPS)] = Field(
        description="Consumer groups; each gets its own worker Deployment. Names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @cel_rule(
        "!has(self.deadLetter) || !has(self.deadLetter.stream) || self.deadLetter.stream != self.stream",
        message="must differ from spec.stream: dead letters would be consumed again",
        field_path=".deadLetter.stream",
    )
    def _dead_letter_differs(self) -> bool:
        return self.dead_letter.stream != self.stream

    @cel_transition_rule(
        "has(self.partitions) == has(oldSelf.partitions)",
        message="cannot be added to or removed from an existing pipeline: its entries live under other "
        "keys; create a new pipeline instead",
        field_path=".partitions",
    )
    def _partitions_stay(self, old: StreamPipelineSpec) -> bool:
        return (self.partitions is None) == (old.partitions is None)

    @cel_rule(
        "!has(self.partitions) || !self.stream.matches('[{}]')",
        message="with partitions it is a base name without braces: each partition's key gets its own "
        "{hash tag} made from it ({orders:0}, {orders:1}, ...)",
        field_path=".stream",
    )
    def _partition_base_plain(self) -> bool:
        return self.partitions is None or not re.search("[{}]", self.stream)

    @cel_rule(
        "!has(self.partitions) || !has(self.deadLetter) || !has(self.deadLetter.stream)",
        message="does not go with partitions: each partition has its own dead-letter stream "
        "{<stream>:<i>}:dlq",
        field_path=".deadLetter.stream",
    )
    def _partitions_own_dead_letters(self) -> bool:
        return self.partitions is None or self.dead_letter.stream is None

    @cel_rule(
        f"self.redis.mode != 'cluster' || has(self.partitions) || self.stream.matches('{HASH_TAG}')",
        message="in cluster mode the key needs a {hash tag}, e.g. {orders}:events, so the stream and its "
        "dead-letter stream share one slot",
        field_path=".stream",
    )
    def _cluster_stream_tagged(self) -> bool:
        return (
            self.redis.mode != "cluster" or self.partitions is not None or hash_tag(self.stream) is not None
        )

    @cel_rule(
        f"self.redis.mode != 'cluster' || !self.stream.matches('{HASH_TAG}') || !has(self.deadLetter) "
        f"|| !has(self.deadLetter.stream) || (self.deadLetter.stream.matches('{HASH_TAG}') && "
        f"{_cel_hash_tag('self.deadLetter.stream')} == {_cel_hash_tag('self.stream')})",
        message="in cluster mode it needs the same {hash tag} as spec.stream",
        field_path=".deadLetter.stream",
    )
    def _cluster_dead_letter_same_slot(self) -> bool:
        tag = hash_tag(self.stream)
        if self.redis.mode != "cluster" or tag is None or self.dead_letter.stream is None:
            return True
        return hash_tag(self.dead_letter.stream) == tag

    @model_validator(mode="after")
    def _group_names_unique(self) -> StreamPipelineSpec:
        # The CRD declares groups a list-map keyed by name, so the API server refuses duplicates itself.
        refuse_duplicates([group.name for group in self.groups], "groups", "group")
        return self

    @property
    def dead_letter_stream(self) -> str:
        """The dead-letter stream key: deadLetter.stream, or ``<stream>:dlq``."""
        return self.dead_letter.stream or f"{self.stream}{DEFAULT_DEAD_LETTER_SUFFIX}"

    @property
    def partition_layout(self) -> PartitionLayout | None:
        """The partitions' keys and routing, or None for a pipeline on one stream."""
        if self.partitions is None:
            return None
        return PartitionLayout(self.stream, self.partitions.count, self.partitions.key)

    def partition(self, index: int) -> StreamPipelineSpec:
        """The spec of partition ``index`` as a pipeline of its own: its stream and dead-letter stream,
        everything else shared. Not validated again (the keys are the layout's)."""
        layout = self.partition_layout
        if layout is None:
            raise ValueError("this pipeline has no partitions")
        dead_letter = self.dead_letter.model_copy(update={"stream": layout.dead_letter(index)})
        return self.model_copy(
            update={"stream": layout.stream(index), "dead_letter": dead_letter, "partitions": None}
        )

    @property
    def data_keys(self) -> tuple[str, ...]:
        """Every key holding the pipeline's entries: its stream(s) and dead-letter stream(s)."""
        layout = self.partition_layout
        if layout is None:
            return (self.stream, self.dead_letter_stream)
        # With the partitions' lease keys (PerKey ordering), the workers' registry and the layout record.
        per_partition = (
            (
                layout.stream(i),
                layout.dead_letter(i),
                owner_key(layout, i),
                generation_key(layout, i),
            )
            for i in range(layout.count)
        )
        return (
            *(key for keys in per_partition for key in keys),
            members_key(layout),
            layout_key(layout.base),
        )

    @property
    def data_description(self) -> str:
        """The pipeline's data in words, for Events and logs."""
        layout = self.partition_layout
        if layout is None:
            return f"stream {self.stream}, its groups and {self.dead_letter_stream}"
        return (
            f"the {layout.count} partitions of {self.stream} ({layout.stream(0)} .. "
            f"{layout.stream(layout.count - 1)}), their groups and dead-letter streams"
        )

    def group(self, name: str) -> GroupSpec:
        """The group called ``name``; KeyError names the groups there are."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(
            f"no group {name!r} in this pipeline (groups: {', '.join(g.name for g in self.groups)})"
        )
