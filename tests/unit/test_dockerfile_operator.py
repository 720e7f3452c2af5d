"""Dockerfile.operator: hadolint clean, shaped like the worker's, and its install steps replayed.

No Docker engine exists here, so the build is replayed: the build stage's COPY sources go to a temp dir,
its RUN steps run with the image paths mapped into that dir (a fresh ``python -m venv``, then the pip
installs, wheels only, from the package index), and the resulting venv runs the image's entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_chart import CHART, VALUE_SETS, render
from tests.unit.test_worker_image import HADOLINT, instructions, replay_run, stages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.operator"
DOCKERIGNORE = ROOT / ".dockerignore"


def test_hadolint_clean() -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: run `make tools`")
    done = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_shape_matches_the_chart() -> None:
    args = dict(rest.split("=", 1) for keyword, rest in instructions(DOCKERFILE) if keyword == "ARG")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"]), "pin the base by version"
    worker_args = dict(
        rest.split("=", 1) for keyword, rest in instructions(ROOT / "Dockerfile.worker") if keyword == "ARG"
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
    copied = set()
    for dockerfile in (
        DOCKERFILE,
        ROOT / "Dockerfile.worker",
        ROOT / "examples" / "worker-image" / "Dockerfile",
    ):
        for keyword, rest in instructions(dockerfile):
            if keyword == "COPY" and not rest.startswith("--from"):
                copied.update(source.removeprefix("./").rstrip("/") for source in rest.split()[:-1])
    assert copied <= allowed, f"COPY sources missing from .dockerignore's allowlist: {copied - allowed}"
    assert {".venv", ".cache", "tests"}.isdisjoint(allowed)


@pytest.mark.timeout(420)
def test_install_steps_replayed_in_a_clean_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    venv = tmp_path / "opt" / "streampipe"
    build, runtime = stages(DOCKERFILE)
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
                    shutil.copytree(
                        origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
        elif keyword == "RUN":
            replay_run(rest, {"/opt/streampipe": venv, "/src": src})
    assert not (venv / "bin" / "gcc").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPIPE_", "PYTHON", "KUBECONFIG"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"

    def run(*args: str) -> str:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{shlex.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    entrypoint = json.loads(next(rest for keyword, rest in runtime if keyword == "ENTRYPOINT"))
    assert "Usage" in run(*entrypoint, "--help")
    # The command the chart runs, with every flag the chart passes.
    run_help = run(*entrypoint, "operator", "run", "--help")
    flags = set()
    for values in VALUE_SETS.values():
        deployment = next(o for o in render(values) if o["kind"] == "Deployment")
        chart_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert chart_args[:2] == ["operator", "run"]
        flags |= {arg.split("=", 1)[0] for arg in chart_args[2:]}
    assert {"--all-namespaces", "--namespace", "--peering", "--standalone", "--liveness"} <= flags
    for flag in flags:
        assert flag in run_help, f"the chart passes {flag}, which `streampipe operator run` lacks"
    assert (
        run(*entrypoint, "version").strip()
        == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
    # The image generates exactly the CRD the chart ships.
    assert run(*entrypoint, "crd") == (CHART / "crds" / "streampipeline.yaml").read_text()
    listed = json.loads(run(str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"))
    names = {item["name"].lower().replace("_", "-") for item in listed}
    assert {"streampipe", "kopf", "kubernetes", "redis", "pydantic", "prometheus-client", "typer"} <= names
    # Build tools were only needed to build the wheel; the runtime venv does not carry them.
    assert not names & {"setuptools", "wheel", "pytest", "mypy", "ruff"}
