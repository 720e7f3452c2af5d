"""``streampipe crd`` and ``streampipe validate``: the API offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streampipe_operator.cli.options import ValidateOutput


def crd(
    update_docs: Annotated[
        Path | None,
        typer.Option(help="Instead: rewrite the generated reference part of this file (docs/api.md)."),
    ] = None,
) -> None:
    """Print the StreamPipeline CustomResourceDefinition (what `make crds` writes to crds/)."""
    from streampipe_operator.api.crd import crd_yaml, update_reference

    if update_docs is not None:
        update_docs.write_text(update_reference(update_docs.read_text(encoding="utf-8")), encoding="utf-8")
        return
    typer.echo(crd_yaml(), nl=False)


def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Manifest files, folders (their *.yaml and *.yml files, recursively, sorted) or - for "
            "stdin; several YAML documents per file are fine.",
            show_default=False,
        ),
    ],
    output: Annotated[
        ValidateOutput, typer.Option("--output", "-o", help="text for people, json for machines.")
    ] = ValidateOutput.text,
) -> None:
    """Check StreamPipeline manifests offline, with the rules the API server applies.

    Documents of other kinds (ConfigMaps, Deployments, Kustomizations...) are skipped and counted.
    Exit code 0 when every StreamPipeline is valid (also when there is none: a note says so), 1 when
    some StreamPipeline is invalid, 2 when a file cannot be read or is not valid YAML.
    """
    import sys

    from streampipe_operator.api.validation import render_notes, render_text, validate_files

    report = validate_files(paths, read_stdin=sys.stdin.read)
    if output is ValidateOutput.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        text = render_text(report)
        if text:
            typer.echo(text)
        typer.echo(render_notes(report), err=True)
    raise typer.Exit(report.exit_code)
