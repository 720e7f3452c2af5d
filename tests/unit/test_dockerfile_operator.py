"""Dockerfile.operator: hadolint clean, shaped like the worker's and as the chart runs it; the build
context admits exactly what the Dockerfiles copy.

The image itself is built with buildah and run under containerd: tests/cluster/test_images.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from hack.images import dockerfile_instructions

from tests.unit.test_chart import render
from tests.unit.test_worker_image import (
    HADOLINT,
    QUICKSTART_DOCKERFILE,
    TEAM_DOCKERFILE,
    stages,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.operator"
DOCKERIGNORE = ROOT / ".dockerignore"


def test_hadolint_clean() -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: run `make tools`")
    done = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_shape_matches_the_chart() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in dockerfile_instructions(DOCKERFILE) if keyword == "ARG"
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"]), "pin the base by version"
    worker_args = dict(
        rest.split("=", 1)
        for keyword, rest in dockerfile_instructions(ROOT / "Dockerfile.worker")
        if keyword == "ARG"
    )
    assert args["PYTHON_IMAGE"] == worker_args["PYTHON_IMAGE"], "one base image for both images"
    build, runtime = stages(DOCKERFILE)
    assert build[0][1].endswith("AS build")
    assert not any(keyword == "RUN" for keyword, _ in runtime), "the runtime stage only copies the venv"
    everything = "\n".join(f"{k} {v}" for k, v in build + runtime)
    assert not re.search(r"gcc|build-essential|apt-get|apk add", everything), "no compilers"
    (user,) = [rest for keyword, rest in runtime if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric user"
    assert gid.isdigit(), "numeric group"
    assert int(uid) >= 10000, "a non-root UID outside the range of system users"
    # The chart runs the container as the image's user, and the probe/metrics ports it exposes.
    pod = next(o for o in render() if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    exposed = {int(port) for keyword, rest in runtime if keyword == "EXPOSE" for port in rest.split()}
    assert {port["containerPort"] for port in pod["containers"][0]["ports"]} == exposed
    entrypoint = json.loads(next(rest for keyword, rest in runtime if keyword == "ENTRYPOINT"))
    assert entrypoint == ["streampipe"]
    assert pod["containers"][0]["args"][:2] == ["operator", "run"]
    assert "command" not in pod["containers"][0], "the chart keeps the image's entrypoint"


def test_dockerignore_sends_only_the_sources_the_images_copy() -> None:
    lines = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: everything else stays out of the build context"
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for dockerfile in (
        DOCKERFILE,
        ROOT / "Dockerfile.worker",
        TEAM_DOCKERFILE,
        QUICKSTART_DOCKERFILE,
    ):
        for keyword, rest in dockerfile_instructions(dockerfile):
            if keyword == "COPY" and not rest.startswith("--from"):
                copied.update(source.removeprefix("./").rstrip("/") for source in rest.split()[:-1])
    assert copied <= allowed, f"COPY sources missing from .dockerignore's allowlist: {copied - allowed}"
    assert {".venv", ".cache", "tests"}.isdisjoint(allowed)
