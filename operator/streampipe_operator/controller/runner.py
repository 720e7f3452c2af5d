"""``streampipe operator run``: start the operator process (credentials, metrics, logging, kopf).

Inside a cluster the operator authenticates with its pod's service account; outside, with
``--kubeconfig`` (or ``$KUBECONFIG`` / ``~/.kube/config``). kopf's watches and the operator's own API
calls use the same credentials (``handlers.login``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("streampipe.operator")


class RunOptions(BaseModel):
    """The command line of ``streampipe operator run``."""

    model_config = ConfigDict(frozen=True)

    kubeconfig: Path | None = None
    namespaces: Sequence[str] = ()
    all_namespaces: bool = False
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    liveness: str | None = None
    log_format: Literal["text", "json"] = "text"
    peering: str | None = None
    standalone: bool = False
    priority: int | None = None
    allowed_images: Sequence[str] = ()
    allowed_service_accounts: Sequence[str] = ()

    @model_validator(mode="after")
    def _consistent(self) -> RunOptions:
        if bool(self.namespaces) == self.all_namespaces:
            raise ValueError("pass --namespace NS (repeatable) or --all-namespaces, exactly one of them")
        if self.peering is not None and self.standalone:
            raise ValueError("--peering and --standalone exclude each other")
        return self


class StartError(Exception):
    """The operator cannot start; the message says what to fix."""


def run_operator(options: RunOptions) -> None:
    """Run until SIGTERM/SIGINT (kopf stops the daemons and finishes handlers first).

    Raises :class:`StartError` when the StreamPipeline CRD is not served: kopf does not watch for CRDs
    appearing later (see ``handlers.configure``), so starting without it would serve nothing.
    """
    import kopf

    from streampipe_operator import api
    from streampipe_operator.controller import handlers
    from streampipe_operator.controller.metrics import OperatorMetrics
    from streampipe_operator.controller.reconcile import OperatorContext
    from streampipe_operator.kube.client import KubeApi, KubeError, load_configuration, resource_served
    from streampipe_operator.kube.policy import WorkloadPolicy
    from streampipe_worker.__main__ import tune_collector

    kopf.configure(log_format=kopf.LogFormat.JSON if options.log_format == "json" else kopf.LogFormat.FULL)
    # kopf logs every handler call at INFO ("Handler 'pipeline_event' succeeded") for every watch
    # event; its warnings and errors stay, the operator's own log says what it did.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # One access-log line per liveness probe would drown the rest.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kubeconfig = options.kubeconfig
    configuration = load_configuration(kubeconfig)
    try:
        served = resource_served(configuration)
    except KubeError as exc:
        raise StartError(str(exc)) from exc
    if not served:
        raise StartError(
            f"the API server does not serve {api.PLURAL}.{api.GROUP}/{api.VERSION}: install the CRD first "
            f"(kubectl apply -f crds/streampipeline.yaml, or the Helm chart)"
        )
    kube = KubeApi(configuration)
    metrics = OperatorMetrics()
    if options.metrics_port:
        metrics.serve(options.metrics_port)
    policy = WorkloadPolicy(
        allowed_images=tuple(options.allowed_images),
        allowed_service_accounts=tuple(options.allowed_service_accounts),
    )
    context = OperatorContext(kube, metrics, policy)
    # With peering, replicas of the operator need distinct priorities: kopf pauses every operator
    # that sees a peer of the same priority. The highest acts; the others wait and take over when it
    # stops (at once on a clean stop, after the peering lifetime when it dies).
    priority = options.priority
    if priority is None and options.peering is not None:
        priority = 1 + secrets.randbelow(1_000_000)
    log.info(
        "streampipe operator: %s, metrics %s, %s, handlers from %s",
        "all namespaces" if options.all_namespaces else f"namespaces {', '.join(options.namespaces)}",
        f"on :{options.metrics_port}" if options.metrics_port else "off",
        "standalone" if options.standalone else f"peering {options.peering or '(auto)'} priority {priority}",
        handlers.__name__,
    )
    if options.allowed_images or options.allowed_service_accounts:
        log.info(
            "streampipe operator: worker images allowed: %s; ServiceAccounts allowed: %s",
            ", ".join(options.allowed_images) or "any",
            ", ".join(options.allowed_service_accounts) or "any",
        )
    # As the worker does (docs/worker.md): with 1,000 pipelines the heap holds millions of objects,
    # and CPython's default thresholds ran a full collection (over a second of CPU each) every few
    # dozen seconds of an idle operator; with these, none while it is idle.
    tune_collector()
    try:
        kopf.run(
            clusterwide=options.all_namespaces,
            namespaces=list(options.namespaces),
            standalone=True if options.standalone else None,
            peering_name=options.peering,
            priority=priority,
            liveness_endpoint=options.liveness,
            memo=kopf.Memo(context=context, configuration=lambda: load_configuration(kubeconfig)),
        )
    finally:
        kube.close()
