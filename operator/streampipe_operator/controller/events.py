"""Events on a StreamPipeline (``kubectl describe`` shows them)."""

from __future__ import annotations

import logging

from streampipe_operator import api
from streampipe_operator.controller.ownership import PipelineRef
from streampipe_operator.kube.client import KubeClient, KubeError
from streampipe_operator.kube.status import EventType

log = logging.getLogger("streampipe.operator")


async def post_event(kube: KubeClient, ref: PipelineRef, type_: EventType, reason: str, message: str) -> None:
    """An Event on the StreamPipeline; failing to post one is logged, never fatal."""
    involved = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "namespace": ref.namespace,
        "name": ref.name,
        "uid": ref.uid,
    }
    try:
        await kube.post_event(involved, type_, reason, message)
    except KubeError as exc:
        log.warning("%s: could not post Event %s: %s", ref.label, reason, exc)
