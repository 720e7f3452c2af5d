"""Deleting a StreamPipeline: what happens to its data, by ``deletionPolicy`` (the kopf finalizer)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from streampipe_operator import api
from streampipe_operator.api import ConditionType, Reason
from streampipe_operator.controller.connections import PipelineConnection
from streampipe_operator.controller.events import post_event
from streampipe_operator.controller.ownership import PipelineRef, others, stream_identity
from streampipe_operator.controller.reconcile import (
    REDIS_SOCKET_TIMEOUT,
    OperatorContext,
    PipelineIndex,
    error_delay,
)
from streampipe_operator.kube.client import KubeClient, KubeError
from streampipe_operator.kube.status import status_document
from streampipe_operator.plan.groups import DeleteKeys, TeardownPlan, plan_teardown
from streampipe_operator.streams.admin import RedisAdminError

log = logging.getLogger("streampipe.operator")


class RetryLaterError(Exception):
    """Deletion cannot finish yet; kopf retries it after ``delay`` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


async def teardown(
    context: OperatorContext, body: Mapping[str, Any], pipelines: PipelineIndex, *, retry: int = 0
) -> None:
    """What deleting a StreamPipeline does to the data, by ``deletionPolicy``.

    ``Retain`` leaves the stream, its groups and the dead-letter stream. ``Delete`` removes them,
    unless another StreamPipeline names the same stream: then it refuses (``Ready=False``/
    ``DeletionBlocked``, a Warning Event) and :class:`RetryLaterError` keeps the finalizer until that
    pipeline is gone or this one's policy is changed to ``Retain``. The worker Deployments are owned
    by the pipeline and go with it (Kubernetes' garbage collector).
    """
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    ref = PipelineRef(namespace=namespace, name=name, uid=uid)
    kube = context.kube
    context.metrics.forget_pipeline(namespace, name)
    try:
        pipeline = api.StreamPipeline.from_body(body)
    except ValidationError:
        log.warning(
            "%s/%s: deleted with an invalid spec; its data (if any) is left in place", namespace, name
        )
        return
    spec = pipeline.spec
    if spec.deletion_policy == "Retain":
        kept = f"left {spec.data_description} in place"
        await post_event(kube, ref, "Normal", Reason.DATA_RETAINED, f"deletionPolicy Retain: {kept}")
        return
    delay = error_delay(retry + 1, 2.0, 60.0)
    sharing = others(pipelines.get(stream_identity(spec), ()), uid)
    if sharing:
        message = (
            f"deletionPolicy Delete: not deleting stream {spec.stream}: StreamPipeline {sharing[0].label} "
            f"uses it too. Delete that one first, or set deletionPolicy: Retain to delete this one and keep "
            f"the data"
        )
        await _block_deletion(kube, pipeline, ref, message)
        raise RetryLaterError(message, delay)
    connection = PipelineConnection(
        kube,
        namespace,
        uid,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        secret_refresh=0,
    )
    try:
        admin = await connection.admin(spec.redis)
        if spec.partitions is None:
            plan = plan_teardown("Delete", spec.stream, spec.dead_letter_stream)
        else:
            plan = TeardownPlan(
                delete=DeleteKeys(
                    keys=spec.data_keys,
                    reason=f"deleted {spec.data_description}: deletionPolicy is Delete",
                )
            )
        assert plan.delete is not None
        await admin.delete_keys(plan.delete)
    except (RedisAdminError, KubeError) as exc:
        message = f"deletionPolicy Delete: cannot delete stream {spec.stream} yet: {exc}"
        await _block_deletion(kube, pipeline, ref, message)
        raise RetryLaterError(message, delay) from exc
    finally:
        await connection.close()
    log.info("%s/%s: %s", namespace, name, plan.delete.reason)
    await post_event(kube, ref, "Normal", Reason.DATA_DELETED, plan.delete.reason)


async def _block_deletion(
    kube: KubeClient, pipeline: api.StreamPipeline, ref: PipelineRef, message: str
) -> None:
    status = pipeline.status or api.StreamPipelineStatus()
    generation = pipeline.metadata.generation
    conditions = api.set_condition(
        status.conditions,
        ConditionType.READY,
        "False",
        Reason.DELETION_BLOCKED,
        message,
        observed_generation=generation,
        now=datetime.now(UTC),
    )
    if status.condition(ConditionType.READY) == api.find_condition(conditions, ConditionType.READY):
        return
    updated = status.model_copy(update={"conditions": conditions})
    try:
        await kube.patch_pipeline_status(ref.namespace, ref.name, status_document(updated))
    except KubeError as exc:
        log.warning("%s: %s", ref.label, exc)
    await post_event(kube, ref, "Warning", Reason.DELETION_BLOCKED, message)
