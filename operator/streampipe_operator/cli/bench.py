"""``streampipe bench``: the benchmark scripts of a source checkout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(
    help="Benchmarks against same-run baselines (source checkout only).", no_args_is_help=True
)


@bench_app.command("worker")
def bench_worker(
    redis_url: Annotated[
        str | None, typer.Option(help="Server to use; default: an embedded Valkey on a free port.")
    ] = None,
    events: Annotated[int, typer.Option(help="Entries in the pre-filled stream every consumer reads.")] = (
        1_000_000
    ),
    repeat: Annotated[int, typer.Option(help="Interleaved rounds; each consumer's best counts.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
) -> None:
    """Worker throughput vs the tutorial's loop and FastStream's batch subscriber, in one run."""
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[3] / "bench" / "worker_throughput.py"
    spec = importlib.util.spec_from_file_location("worker_throughput", script)
    if spec is None or spec.loader is None or not script.exists():
        typer.echo(f"streampipe bench: {script} not found; benchmarks run from a source checkout", err=True)
        raise typer.Exit(2)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    result = module.run(redis_url, events=events, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>20}: {value:,}")


# --- data commands: status, dlq, produce (targets, errors and exit codes: targets.py) -----------------
