"""The `streampipe` command."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from streampipe_operator import __version__

app = typer.Typer(
    name="streampipe",
    help="Redis Streams / Valkey pipelines: run them locally, operate them on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the streampipe version."""
    typer.echo(__version__)


class ValidateOutput(StrEnum):
    text = "text"
    json = "json"


@app.command()
def crd(
    update_docs: Annotated[
        Path | None,
        typer.Option(help="Instead: rewrite the generated reference part of this file (docs/api.md)."),
    ] = None,
) -> None:
    """Print the StreamPipeline CustomResourceDefinition (what `make crds` writes to crds/)."""
    from streampipe_operator.crd import crd_yaml, update_reference

    if update_docs is not None:
        update_docs.write_text(update_reference(update_docs.read_text(encoding="utf-8")), encoding="utf-8")
        return
    typer.echo(crd_yaml(), nl=False)


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Manifest files; several YAML documents each are fine.")
    ],
    output: Annotated[
        ValidateOutput, typer.Option("--output", "-o", help="text for people, json for machines.")
    ] = ValidateOutput.text,
) -> None:
    """Check StreamPipeline manifests offline, with the rules the API server applies.

    Exit code 0 when every file is valid, 1 when some manifest is invalid, 2 when a file cannot be read.
    """
    from streampipe_operator.validation import render_text, validate_files

    report = validate_files(files)
    if output is ValidateOutput.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(render_text(report))
    raise typer.Exit(report.exit_code)


bench_app = typer.Typer(
    help="Benchmarks against same-run baselines (source checkout only).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("worker")
def bench_worker(
    redis_url: Annotated[
        str | None, typer.Option(help="Server to use; default: an embedded Valkey on a free port.")
    ] = None,
    events: Annotated[int, typer.Option(help="Events in each streampipe round.")] = 300_000,
    repeat: Annotated[int, typer.Option(help="Interleaved rounds; each consumer's best counts.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
) -> None:
    """Worker throughput vs the tutorial's loop and FastStream's batch subscriber, in one run."""
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[2] / "bench" / "worker_throughput.py"
    spec = importlib.util.spec_from_file_location("worker_throughput", script)
    if spec is None or spec.loader is None or not script.exists():
        typer.echo(f"streampipe bench: {script} not found; benchmarks run from a source checkout", err=True)
        raise typer.Exit(2)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(redis_url, events=events, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>20}: {value:,}")


operator_app = typer.Typer(help="The Kubernetes operator (see docs/operator.md).", no_args_is_help=True)
app.add_typer(operator_app, name="operator")


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
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics here; 0 turns it off.")] = 8080,
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
) -> None:
    """Run the operator: reconcile StreamPipelines until SIGTERM."""
    from pydantic import ValidationError

    from streampipe_operator.runner import RunOptions, run_operator

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
        )
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"streampipe operator run: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    run_operator(options)


def main() -> None:
    app()
