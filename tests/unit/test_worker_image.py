"""Dockerfile.worker and the team-image example: linted, and their install steps replayed.

No Docker engine exists here, so the build is replayed instead: the build stage's COPY sources go to a
temp dir, its RUN steps run with the image paths mapped into that dir (a fresh ``python -m venv``,
then ``pip install "/src[worker]"`` from the package index), and the entrypoint's self-check runs in
the result. The team image's RUN step is replayed on top, like ``FROM streampipe-worker``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = ROOT / ".cache" / "bin" / "hadolint"
WORKER_DOCKERFILE = ROOT / "Dockerfile.worker"
TEAM_DOCKERFILE = ROOT / "examples" / "worker-image" / "Dockerfile"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


@pytest.mark.parametrize("dockerfile", [WORKER_DOCKERFILE, TEAM_DOCKERFILE], ids=["worker", "team-image"])
def test_hadolint_clean(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: run `make tools`")
    done = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_worker_image_shape() -> None:
    args = dict(rest.split("=", 1) for keyword, rest in instructions(WORKER_DOCKERFILE) if keyword == "ARG")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"]), "pin the base by version"
    build, runtime = stages(WORKER_DOCKERFILE)
    assert build[0][1].endswith("AS build")
    runtime_text = "\n".join(f"{k} {v}" for k, v in runtime)
    assert not any(k == "RUN" for k, _ in runtime), "the runtime stage only copies the venv"
    assert not re.search(r"gcc|build-essential|apt-get", runtime_text)
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users
    assert re.fullmatch(r"\d+:\d+", users[-1]), "numeric non-root user"
    assert not users[-1].startswith("0")
    assert ("ENTRYPOINT", '["streampipe-worker"]') in runtime


def replay_run(command: str, mapping: dict[str, Path]) -> None:
    for image_path, local in sorted(mapping.items(), key=lambda item: -len(item[0])):
        command = command.replace(image_path, str(local))
    env = dict(os.environ)
    # `python` in the RUN line is the image's Python 3.11: here, the interpreter running the tests.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env.pop("PIP_NO_INDEX", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def self_check(venv: Path, handler: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPIPE_", "PYTHON"))}
    env.update(
        {"STREAMPIPE_STREAM": "{orders}:events", "STREAMPIPE_GROUP": "billing", "STREAMPIPE_HANDLER": handler}
    )
    done = subprocess.run(
        [str(venv / "bin" / "streampipe-worker"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.mark.timeout(300)
def test_install_steps_replayed_in_a_clean_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    venv = tmp_path / "opt" / "streampipe"
    build, _ = stages(WORKER_DOCKERFILE)
    workdir = src
    for keyword, rest in build:
        if keyword == "WORKDIR":
            assert rest == "/src"
        elif keyword == "COPY":
            *sources, destination = rest.split()
            target = workdir / destination.removeprefix("./")
            for source in sources:
                origin = ROOT / source.removeprefix("./")
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
        elif keyword == "RUN":
            replay_run(rest, {"/opt/streampipe": venv, "/src": src})
    report = self_check(venv, "json:dumps")
    assert report["ok"] is True
    assert report["dead_letter_stream"] == "{orders}:events:dlq"
    # Only the worker's dependencies are in the image: no operator stack.
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert {"streampipe", "redis", "hiredis", "pydantic", "pydantic-settings", "prometheus-client"} <= names
    assert not names & {"kopf", "kubernetes", "typer"}

    # The team image: FROM the worker image, then its own RUN step.
    team_src = tmp_path / "team" / "shop-handlers"
    shutil.copytree(
        ROOT / "examples" / "handlers",
        team_src,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    for keyword, rest in instructions(TEAM_DOCKERFILE):
        if keyword == "RUN":
            replay_run(rest, {"/opt/streampipe": venv, "/src/shop-handlers": team_src})
    handler = next(
        rest.split("=", 1)[1] for keyword, rest in instructions(TEAM_DOCKERFILE) if keyword == "ENV"
    )
    assert handler == "shop_handlers.billing:router"
    assert self_check(venv, handler)["handler_kind"] == "entry"
