"""kopf registrations, each a few lines; the work is in ``reconcile`` (see docs/operator.md).

- two indexes kopf keeps from its watches: StreamPipelines by the stream they name (conflicts,
  deletion), and worker Deployments by pipeline (so a reconcile pass reads no Deployment from the API);
- a daemon per StreamPipeline running its reconcile loop (``PipelineRuntime.run``): one loop that
  serves every group at its own ``pollInterval``, so the cadence follows the spec (kopf timers have a
  fixed interval per handler);
- event handlers that wake a loop at once when its spec changes, a Deployment drifts, or a pipeline
  on the same stream appears or goes;
- the deletion handler (the finalizer) and the login and liveness-probe activities.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from streampipe_operator import api
from streampipe_operator.controller.ownership import PipelineRef, established, identity_of
from streampipe_operator.controller.teardown import RetryLaterError, teardown
from streampipe_operator.kube import deployments
from streampipe_operator.kube.client import connection_fields

FINALIZER = "streampipe.dev/finalizer"
ANNOTATIONS_PREFIX = "streampipe.dev"
WORKERS = {deployments.LABEL_MANAGED_BY: deployments.MANAGED_BY}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf's own bookkeeping goes to annotations: status belongs to the schema (it would be pruned).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATIONS_PREFIX)
    # Events are the operator's own (reconcile.post_event); kopf adds only its warnings and errors.
    settings.posting.level = logging.WARNING
    # No runtime watching of CRDs and namespaces: it needs cluster-wide list/watch rights that a
    # namespace-scoped install should not have, and the operator serves one fixed resource version,
    # which `operator run` checks is served before it starts.
    settings.scanning.disabled = True


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(**connection_fields(memo.configuration()))


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def pipelines_by_stream(body: kopf.Body, meta: kopf.Meta, **_: Any) -> dict[str, PipelineRef] | None:
    identity = identity_of(body)
    if identity is None:
        return None
    created, deleting = meta.get("creationTimestamp", ""), bool(meta.get("deletionTimestamp"))
    ref = PipelineRef(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or "",
        created=created,
        established=established(body),
        deleting=deleting,
    )
    return {identity: ref}


@kopf.index("apps", "v1", "deployments", labels=WORKERS)
def deployments_by_pipeline(body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any) -> Any:
    pipeline = labels.get(deployments.LABEL_PIPELINE)
    return {(namespace, pipeline): api.plain(body)} if pipeline else None


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def pipeline_event(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    memo.context.pipeline_changed(body, type)


@kopf.on.event("apps", "v1", "deployments", labels=WORKERS)
def deployment_event(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    memo.context.deployment_changed(api.plain(body), type)


# The indexes come as keyword arguments named after their functions.
@kopf.daemon(
    api.GROUP, api.VERSION, api.PLURAL, id="reconcile", cancellation_backoff=10, cancellation_timeout=30
)
async def reconcile_pipeline(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    runtime = memo.context.runtime_for(memo, body)
    await runtime.run(body, kwargs["pipelines_by_stream"], kwargs["deployments_by_pipeline"], stopped)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, id="teardown")
async def teardown_pipeline(body: kopf.Body, memo: kopf.Memo, retry: int, **kwargs: Any) -> None:
    try:
        await teardown(memo.context, body, kwargs["pipelines_by_stream"], retry=retry)
    except RetryLaterError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.probe(id="pipelines")
def pipelines_running(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.context.runtimes)
