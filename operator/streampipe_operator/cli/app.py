"""The `streampipe` command: the typer app and its verbs, wired together (each verb group in its module)."""

from __future__ import annotations

import typer

from streampipe_operator import __version__
from streampipe_operator.cli import bench, dlq, housekeep, operator, peek, produce, status, up, validate

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


app.command()(validate.crd)
app.command()(validate.validate)
app.add_typer(bench.bench_app, name="bench")
# data commands: status, dlq, produce (targets, errors and exit codes: streams/targets.py)
app.command()(status.status)
app.command()(peek.peek)
app.add_typer(dlq.dlq_app, name="dlq")
app.command()(produce.produce)
app.add_typer(operator.operator_app, name="operator")
app.command()(up.up)
app.command()(housekeep.housekeep)


def main() -> None:
    app()
