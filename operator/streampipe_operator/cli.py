"""The `streampipe` command."""

from __future__ import annotations

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


def main() -> None:
    app()
