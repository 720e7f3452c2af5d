"""``streampipe housekeep``: the operator's Redis-side job as a long-running process, without Kubernetes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from streampipe_operator.cli import options


def housekeep(
    files: Annotated[list[Path], typer.Argument(help="StreamPipeline files (one pipeline each).")],
    *,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="STREAMPIPE_REDIS_URL",
            help="Server URL for every file, with credentials (redis://user:pass@host:6379/0); "
            "default: each file's spec.redis.url.",
        ),
    ] = None,
    identity: Annotated[
        str | None, typer.Option(help="This replica's name in the lease; default: hostname-pid.")
    ] = None,
    lease: Annotated[
        float, typer.Option(help="Lease time in seconds: a standby takes over this long after a crash.")
    ] = 15.0,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics here; 0 turns it off.")] = 0,
    metrics_address: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
    once: Annotated[
        bool,
        typer.Option("--once", help="One pass per pipeline (as leader, if the lease is free), then exit."),
    ] = False,
    output: options.OutputOption = options.Output.text,
) -> None:
    """Create and repair groups, trim safely, remove idle consumers and advise on scaling, for
    pipelines whose workers run without Kubernetes (systemd, Nomad, ECS).

    Several replicas may run: one leads each pipeline (a lease in Redis), the others stand by. It
    scales nothing; the advice is in the log and in /metrics. Exit code 0 at SIGTERM (or after
    --once); 2 for a bad file or option; with --once, 1 when a pipeline's server could not be used.
    """
    import asyncio

    from pydantic import ValidationError

    from streampipe_operator.controller.housekeeper import HousekeepOptions, run_forever, run_once

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with options.command_errors("housekeep"):
        try:
            settings = HousekeepOptions(
                files=files,
                redis_url=redis_url,
                lease_seconds=lease,
                metrics_port=metrics_port,
                metrics_address=metrics_address,
                **({"identity": identity} if identity else {}),
            )
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                typer.echo(f"streampipe housekeep: {where}: {error['msg']}", err=True)
            raise typer.Exit(2) from None
        if not once:
            asyncio.run(run_forever(settings))
            return
        outcomes = asyncio.run(run_once(settings))
    if output is options.Output.json:
        typer.echo("[" + ",".join(o.model_dump_json() for o in outcomes) + "]")
    else:
        for outcome in outcomes:
            role = "leader" if outcome.leader else f"standby (leader: {outcome.holder or 'none'})"
            typer.echo(f"{outcome.pipeline} ({outcome.stream}): {role}")
            if outcome.error:
                typer.echo(f"  error: {outcome.error}")
            for group in outcome.groups:
                typer.echo(
                    f"  group {group.name}: lag {group.lag if group.lag is not None else 'unknown'}, "
                    f"pending {group.pending}, advised replicas {group.advised_replicas}"
                )
    if any(outcome.error for outcome in outcomes):
        raise typer.Exit(1)
