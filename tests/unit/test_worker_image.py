"""Dockerfile.worker and the team-image examples: hadolint clean and shaped as the chart expects.

The images themselves are built with buildah and run under containerd: tests/cluster/test_images.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hack.images import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = ROOT / ".cache" / "bin" / "hadolint"
WORKER_DOCKERFILE = ROOT / "Dockerfile.worker"
TEAM_DOCKERFILE = ROOT / "examples" / "worker-image" / "Dockerfile"
QUICKSTART_DOCKERFILE = ROOT / "examples" / "quickstart" / "Dockerfile"


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


@pytest.mark.parametrize(
    "dockerfile",
    [WORKER_DOCKERFILE, TEAM_DOCKERFILE, QUICKSTART_DOCKERFILE],
    ids=["worker", "team-image", "quickstart-image"],
)
def test_hadolint_clean(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: run `make tools`")
    done = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_worker_image_shape() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in dockerfile_instructions(WORKER_DOCKERFILE) if keyword == "ARG"
    )
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


@pytest.mark.parametrize(
    ("dockerfile", "handler"),
    [
        (TEAM_DOCKERFILE, "shop_handlers.billing:router"),
        (QUICKSTART_DOCKERFILE, "quickstart_shop.fulfilment:router"),
    ],
    ids=["team-image", "quickstart-image"],
)
def test_team_images_build_on_the_worker_image_and_drop_root(dockerfile: Path, handler: str) -> None:
    steps = dockerfile_instructions(dockerfile)
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG")
    assert args["STREAMPIPE_WORKER_IMAGE"].startswith("streampipe-worker:")
    assert ("FROM", "${STREAMPIPE_WORKER_IMAGE}") in steps
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users[-1] == "10001:10001", "back to the worker image's user after installing"
    assert ("ENV", f"STREAMPIPE_HANDLER={handler}") in steps
