"""How a StreamPipeline spec maps onto the worker's settings and onto the planners' policies.

One function per mapping, so that a worker pod (the operator's Deployment env) and a local worker
process (``streampipe up``) get the same ``STREAMPIPE_*`` values from the same spec, and the scaling
and retention planners get the same policies. Variable names and value formats are not written here:
the values are :class:`~streampipe_worker.settings.WorkerSettings` field values, rendered by the
worker's own ``render_env``.

What a pod gets from Kubernetes objects instead of literal values (the password and ACL user from
``auth``'s Secret, the CA file from ``tls``'s Secret, ``template.env`` entries with ``valueFrom``) is
not mapped here; :func:`template_env` reports those names so that a caller can say what is missing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from streampipe_operator.api import GroupSpec, RetentionSpec, ScalingSpec, StreamPipelineSpec
from streampipe_operator.plan.retention import RetentionPolicy
from streampipe_operator.plan.scaling import ScalingPolicy

# Kubernetes' default terminationGracePeriodSeconds; the worker's shutdown grace must end before it.
DEFAULT_TERMINATION_GRACE = 30
# The part of the grace period kept for acknowledging and handing back after handlers stop.
SHUTDOWN_MARGIN = 5


def shutdown_grace(termination_grace_seconds: int | None) -> timedelta:
    """The worker's STREAMPIPE_SHUTDOWN_GRACE for a pod (or process) that gets SIGKILL after
    ``termination_grace_seconds``: handlers may run until ``SHUTDOWN_MARGIN`` before it (at least
    half of the period when that is short), so settling acks is never cut off."""
    total = DEFAULT_TERMINATION_GRACE if termination_grace_seconds is None else termination_grace_seconds
    return timedelta(seconds=max(total - SHUTDOWN_MARGIN, total / 2))


def worker_settings_values(
    spec: StreamPipelineSpec, group: GroupSpec, *, redis_url: str | None = None
) -> dict[str, Any]:
    """WorkerSettings field values for ``group``'s workers (give them to ``render_env``).

    ``redis_url`` replaces ``spec.redis.url`` (``streampipe up`` on its embedded server). The consumer
    name and metrics port are per replica, so they are the runtime's to set, not the spec's.
    """
    redis = spec.redis
    retry = spec.retry
    template = group.template
    return {
        "redis_url": redis_url or redis.url,
        "redis_mode": redis.mode,
        "sentinel_master": redis.sentinel.master_name if redis.sentinel is not None else None,
        "tls_insecure_skip_verify": redis.tls.insecure_skip_verify if redis.tls is not None else None,
        "stream": spec.stream,
        "group": group.name,
        "handler": group.handler,
        "batch_size": group.batch_size,
        "concurrency": group.concurrency,
        "max_deliveries": retry.max_deliveries,
        "backoff_initial": retry.backoff.initial.delta,
        "backoff_multiplier": retry.backoff.multiplier,
        "backoff_max": retry.backoff.max.delta,
        "claim_idle": retry.claim_idle.delta,
        # With partitions the worker derives each partition's stream and dead-letter stream itself.
        "partitions": spec.partitions.count if spec.partitions is not None else None,
        **_ordering(spec),
        "dead_letter_stream": spec.dead_letter_stream if spec.partitions is None else None,
        "dedupe_ttl": group.dedupe.ttl.delta if group.dedupe is not None else None,
        "shutdown_grace": shutdown_grace(
            template.termination_grace_period_seconds if template is not None else None
        ),
    }


def _ordering(spec: StreamPipelineSpec) -> dict[str, Any]:
    """Per-key ordering's settings; nothing for the default (no change to existing pods)."""
    partitions = spec.partitions
    if partitions is None or partitions.ordering != "PerKey":
        return {}
    return {
        "ordering": "PerKey",
        "partition_key": partitions.key,
        "lease_ttl": partitions.lease_duration.delta,
    }


def replica_cap(spec: StreamPipelineSpec) -> int | None:
    """The most workers a group can use: the partition count with per-key ordering, else no cap."""
    partitions = spec.partitions
    return partitions.count if partitions is not None and partitions.ordering == "PerKey" else None


def template_env(group: GroupSpec) -> tuple[dict[str, str], list[str]]:
    """``template.env``: the literal values, and the names of those that come from ``valueFrom``
    (a Secret, a ConfigMap, a field) and so exist only in a pod."""
    literal: dict[str, str] = {}
    from_objects: list[str] = []
    for var in (group.template.env if group.template is not None else None) or []:
        if var.value_from is not None:
            from_objects.append(var.name)
        else:
            literal[var.name] = var.value or ""
    return literal, from_objects


def scaling_policy(scaling: ScalingSpec, *, cap: int | None = None) -> ScalingPolicy:
    """``spec.groups[].scaling`` as the scaling planner's policy; ``cap`` bounds both ends (the
    partition count with per-key ordering: a worker beyond it would own no partition)."""
    bound = cap if cap is not None else scaling.max_replicas
    return ScalingPolicy(
        min_replicas=min(scaling.min_replicas, bound),
        max_replicas=min(scaling.max_replicas, bound),
        backlog_per_replica=scaling.backlog_per_replica,
        activation_backlog=scaling.activation_backlog,
        scale_down_stabilization=scaling.scale_down_stabilization.total_seconds(),
    )


def retention_policy(retention: RetentionSpec) -> RetentionPolicy:
    """``spec.retention`` as the retention planner's policy."""
    return RetentionPolicy(
        max_length=retention.max_length,
        max_age=retention.max_age.total_seconds() if retention.max_age is not None else None,
        approximate=retention.approximate,
        protect_unprocessed=retention.protect_unprocessed,
    )
