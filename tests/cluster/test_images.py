"""The real images (``make images``: buildah, the Dockerfiles unchanged) run under a private containerd.

Every container runs the way the chart and the operator run pods: as the image's own user, with a
read-only root file system. The session builds the images once (a no-op when ``.cache/images`` is up
to date) and imports them into one containerd of its own.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hack.images import Buildah, BuildError, BuiltImage, Role, build_all

from tests.support.containerd import Containerd, ContainerdError, import_built_images, running_containerd
from tests.unit.test_chart import CHART, VALUE_SETS, render

# The first test pays for a cold build (about four minutes on two cores).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

APP_ROLES: tuple[Role, ...] = ("worker", "operator", "team", "quickstart")
IMAGE_UID = "10001"
_names = itertools.count()


@pytest.fixture(scope="session")
def built_images() -> dict[Role, BuiltImage]:
    try:
        return build_all()
    except BuildError as exc:
        pytest.fail(f"building the images failed: {exc}")


@pytest.fixture(scope="session")
def images_containerd(
    built_images: dict[Role, BuiltImage], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd]:
    try:
        with running_containerd(tmp_path_factory.mktemp("containerd")) as containerd:
            import_built_images(containerd, roles=APP_ROLES)
            yield containerd
    except ContainerdError as exc:
        pytest.fail(str(exc))


def run(
    containerd: Containerd, image: BuiltImage, *command: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` in a fresh container of ``image``: its own user, read-only root, removed after."""
    options = ["--rm", "--read-only"]
    for key, value in (env or {}).items():
        options += ["--env", f"{key}={value}"]
    name = f"{image.role}-{next(_names)}"
    return containerd.ctr("run", *options, image.tags[0], name, *command, check=False)


def ran(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def worker_check(containerd: Containerd, image: BuiltImage, handler: str) -> dict[str, object]:
    """The worker's self-check (imports the handler, validates the settings) as JSON."""
    env = {
        "STREAMPIPE_STREAM": "{orders}:events",
        "STREAMPIPE_GROUP": "billing",
        "STREAMPIPE_HANDLER": handler,
    }
    report: dict[str, object] = json.loads(
        ran(run(containerd, image, "streampipe-worker", "--check", env=env))
    )
    return report


def distributions(containerd: Containerd, image: BuiltImage) -> set[str]:
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps(sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()})))"
    )
    return set(json.loads(ran(run(containerd, image, "python", "-c", script))))


@pytest.mark.parametrize("role", APP_ROLES)
def test_runs_as_the_images_numeric_user_on_a_read_only_root(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage], role: Role
) -> None:
    image = built_images[role]
    assert ran(run(images_containerd, image, "id", "-u")).strip() == IMAGE_UID
    refused = run(images_containerd, image, "sh", "-c", "echo x > /written")
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr


@pytest.mark.parametrize("role", APP_ROLES)
def test_the_build_leaves_no_pip_configuration_behind(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage], role: Role
) -> None:
    image = built_images[role]
    config = json.loads(Buildah()("inspect", "--type", "image", image.tags[0]))["OCIv1"]["config"]
    assert not [entry for entry in config.get("Env", []) if entry.startswith("PIP_")]
    process_env = ran(run(images_containerd, image, "env")).splitlines()
    assert not [entry for entry in process_env if entry.startswith("PIP_")]
    # The builder's mounts leave no empty mount targets in the image either.
    leftovers = run(images_containerd, image, "sh", "-c", "test -e /etc/pip.conf || test -e /etc/xdg/pip")
    assert leftovers.returncode == 1, leftovers.stderr


def test_worker_image_runs_the_worker_and_only_the_worker_stack(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage]
) -> None:
    worker = built_images["worker"]
    assert "usage: streampipe-worker" in ran(run(images_containerd, worker, "streampipe-worker", "--help"))
    report = worker_check(images_containerd, worker, "json:dumps")
    assert report["ok"] is True
    assert report["dead_letter_stream"] == "{orders}:events:dlq"
    names = distributions(images_containerd, worker)
    assert {"streampipe", "redis", "hiredis", "pydantic", "pydantic-settings", "prometheus-client"} <= names
    assert not names & {"kopf", "kubernetes", "typer", "pip-tools", "pytest"}


def test_operator_image_runs_the_command_the_chart_runs(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage]
) -> None:
    operator = built_images["operator"]
    assert "Usage" in ran(run(images_containerd, operator, "streampipe", "--help"))
    run_help = ran(run(images_containerd, operator, "streampipe", "operator", "run", "--help"))
    flags = set()
    for values in VALUE_SETS.values():
        deployment = next(o for o in render(values) if o["kind"] == "Deployment")
        chart_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        flags |= {arg.split("=", 1)[0] for arg in chart_args[2:]}
    assert {"--all-namespaces", "--namespace", "--peering", "--standalone", "--liveness"} <= flags
    assert not [flag for flag in flags if flag not in run_help], "flags the chart passes that the image lacks"
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert ran(run(images_containerd, operator, "streampipe", "version")).strip() == app_version
    assert operator.tags[0].endswith(f":{app_version}"), "helm install without --set finds the image"
    crd = ran(run(images_containerd, operator, "streampipe", "crd"))
    assert crd == (CHART / "crds" / "streampipeline.yaml").read_text(), "the image generates the chart's CRD"
    names = distributions(images_containerd, operator)
    assert {"streampipe", "kopf", "kubernetes", "redis", "pydantic", "prometheus-client", "typer"} <= names
    assert not names & {"setuptools", "wheel", "pytest", "mypy", "ruff"}, (
        "build tools stay in the build stage"
    )


def test_team_image_runs_the_example_handler(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage]
) -> None:
    team = built_images["team"]
    assert "registry.example.com/shop/billing-worker:1.4.2" in team.tags
    report = worker_check(images_containerd, team, "shop_handlers.billing:router")
    assert report["ok"] is True
    assert report["handler_kind"] == "entry"


def test_quickstart_image_has_both_quickstart_handlers(
    images_containerd: Containerd, built_images: dict[Role, BuiltImage]
) -> None:
    quickstart = built_images["quickstart"]
    pipeline = yaml.safe_load((Path(__file__).parents[2] / "examples/quickstart/pipeline.yaml").read_text())
    groups = pipeline["spec"]["groups"]
    assert {group["image"] for group in groups} == set(quickstart.tags)
    handlers = [group["handler"] for group in groups]
    assert handlers == ["quickstart_shop.fulfilment:router", "quickstart_shop.analytics:count"]
    script = (
        "import importlib, json, sys; "
        "kind = lambda module, name: type(getattr(importlib.import_module(module), name)).__name__; "
        "print(json.dumps({h: kind(*h.split(':')) for h in sys.argv[1:]}))"
    )
    kinds = json.loads(ran(run(images_containerd, quickstart, "python", "-c", script, *handlers)))
    assert kinds == {
        "quickstart_shop.fulfilment:router": "Router",
        "quickstart_shop.analytics:count": "function",
    }
    for handler in handlers:
        assert worker_check(images_containerd, quickstart, handler)["ok"] is True
