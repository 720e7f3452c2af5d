"""``streampipe operator run``: the Kubernetes operator."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

operator_app = typer.Typer(help="The Kubernetes operator (see docs/operator.md).", no_args_is_help=True)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@operator_app.command("run")
def operator_run(
    *,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Kubeconfig file; default: in-cluster, else $KUBECONFIG.")
    ] = None,
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", help="Watch every namespace.")] = False,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics here; 0 turns it off.")] = 9090,
    liveness: Annotated[
        str | None, typer.Option(help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="text for people, json for log pipelines.")] = (
        LogFormat.text
    ),
    peering: Annotated[
        str | None, typer.Option(help="kopf peering object: of several replicas only one acts.")
    ] = None,
    standalone: Annotated[bool, typer.Option(help="No peering (a single replica).")] = False,
    priority: Annotated[
        int | None, typer.Option(help="Peering priority; default: random, so replicas never tie.")
    ] = None,
    allowed_image: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-image",
            help="Only run worker images matching this pattern (shell-style, e.g. "
            "'registry.example.com/shop/*'; repeatable). Default: any image.",
        ),
    ] = None,
    allowed_service_account: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-service-account",
            help="Only run workers under this ServiceAccount (repeatable; `default` for pods that name "
            "none). Default: any.",
        ),
    ] = None,
) -> None:
    """Run the operator: reconcile StreamPipelines until SIGTERM."""
    from pydantic import ValidationError

    from streampipe_operator.controller.runner import RunOptions, StartError, run_operator

    try:
        options = RunOptions(
            kubeconfig=kubeconfig,
            namespaces=namespace or [],
            all_namespaces=all_namespaces,
            metrics_port=metrics_port,
            liveness=liveness,
            log_format=log_format.value,
            peering=peering,
            standalone=standalone,
            priority=priority,
            allowed_images=allowed_image or [],
            allowed_service_accounts=allowed_service_account or [],
        )
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"streampipe operator run: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    try:
        run_operator(options)
    except StartError as exc:
        typer.echo(f"streampipe operator run: {exc}", err=True)
        raise typer.Exit(1) from None
