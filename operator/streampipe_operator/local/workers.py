"""Starting a group's worker processes for ``streampipe up``: their environment, the pre-flight check
and the wait until they are ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from streampipe_operator.api import GroupSpec, StreamPipelineSpec
from streampipe_operator.engine.spec_mapping import template_env, worker_settings_values
from streampipe_operator.local.processes import ReplicaSet
from streampipe_operator.streams.targets import CommandError, UsageError
from streampipe_worker.settings import ENV_PREFIX, render_env

READY_TIMEOUT = 90.0


def worker_env(
    spec: StreamPipelineSpec, group: GroupSpec, *, redis_url: str, python_path: Sequence[Path]
) -> tuple[dict[str, str], list[str]]:
    """The environment of a group's worker processes, and notes for the person about what a pod would
    get from Kubernetes objects instead."""
    values = worker_settings_values(spec, group, redis_url=redis_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    literal, from_objects = template_env(group)
    notes = [
        f"group {group.name}: template.env {name} comes from a Secret/ConfigMap/field on "
        "Kubernetes; locally the workers see it only if your shell exports it"
        for name in from_objects
    ]
    env.update(literal)
    env.update(render_env(values))
    paths = [str(path) for path in python_path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env, notes


async def preflight(group: GroupSpec, env: dict[str, str], python_path: Sequence[Path]) -> None:
    """``streampipe-worker --check``: bad settings or a handler that does not import fail here,
    once, with the worker's own message, instead of as a crash loop."""
    command = [sys.executable, "-m", "streampipe_worker", "--check"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()
        hint = ""
        if "cannot import" in why:
            places = ", ".join(str(path) for path in python_path)
            hint = f" (handler modules are looked up in {places}; --python-path adds places)"
        raise UsageError(f"group {group.name}: the worker refuses to start: {why}{hint}")


async def wait_ready(replica_sets: Mapping[str, ReplicaSet]) -> None:
    """Until every group's first workers answer /readyz (polled, so Ctrl-C can interrupt it)."""
    deadline = time.monotonic() + READY_TIMEOUT
    for name, replicas in replica_sets.items():
        while True:
            status = replicas.status()
            if status.ready >= status.desired:
                break
            if time.monotonic() > deadline:
                tails = []
                for replica in status.replicas:
                    with contextlib.suppress(OSError, IndexError):
                        text = replica.log_path.read_text(errors="replace")
                        tails.append(f"{replica.name}: {text.strip().splitlines()[-1]}")
                raise CommandError(
                    f"group {name}: workers not ready after {READY_TIMEOUT:g}s; last log lines: "
                    + (" | ".join(tails) or "none")
                )
            await asyncio.sleep(0.1)
