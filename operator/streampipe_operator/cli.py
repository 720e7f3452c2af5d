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
def crd() -> None:
    """Print the StreamPipeline CustomResourceDefinition (what `make crds` writes to crds/)."""
    from streampipe_operator.crd import crd_yaml

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


def main() -> None:
    app()
