"""Every handler an example names exists in the image it names.

A group's ``handler: module:attribute`` is imported by the worker inside the group's ``image``; a
handler the image lacks makes every worker pod exit with code 2. The examples name only images this
repository builds (``make images``), so each image maps to the source folder it installs, and the
handler must resolve from that folder. Resolving runs in a subprocess with that folder first on
``sys.path`` (and ``-I``, so no ``PYTHONPATH`` leaks in), through the worker's own ``load_handler``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from streampipe_operator import api

ROOT = Path(__file__).resolve().parents[2]
TEAM_IMAGE = "registry.example.com/shop/billing-worker:1.4.2"
QUICKSTART_IMAGE = "registry.example.com/shop/quickstart-worker:0.1.0"

# Image -> the folder whose packages it installs. A new example image needs a row here (and a build).
IMAGE_SOURCES: dict[str, Path] = {
    TEAM_IMAGE: ROOT / "examples" / "handlers" / "src",  # examples/worker-image/Dockerfile
    QUICKSTART_IMAGE: ROOT / "examples" / "quickstart",  # examples/quickstart/Dockerfile
}

RESOLVE = """
import json, sys
folder, spec = sys.argv[1], sys.argv[2]
sys.path.insert(0, folder)
from streampipe_worker.router import HandlerLoadError, load_handler
try:
    loaded = load_handler(spec)
except HandlerLoadError as exc:
    print(json.dumps({"loaded": False, "error": str(exc), "origin": None}))
else:
    module = sys.modules[spec.partition(":")[0]]
    print(json.dumps({"loaded": True, "error": None, "origin": module.__file__}))
"""


@dataclass(frozen=True)
class ExampleGroup:
    """One consumer group of a StreamPipeline written in the examples or the docs."""

    source: str
    pipeline: str
    group: str
    handler: str
    image: str

    @property
    def id(self) -> str:
        return f"{self.source}:{self.pipeline}/{self.group}"


@dataclass(frozen=True)
class Resolution:
    loaded: bool
    error: str | None
    origin: Path | None


def _groups_of(source: str, documents: list[object]) -> list[ExampleGroup]:
    found = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == api.KIND:
            pipeline = api.StreamPipeline.model_validate(document)
            found += [
                ExampleGroup(source, pipeline.metadata.name or "(unnamed)", g.name, g.handler, g.image)
                for g in pipeline.spec.groups
            ]
    return found


def _yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```ya?ml\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def example_groups() -> list[ExampleGroup]:
    groups = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        groups += _groups_of(str(path.relative_to(ROOT)), list(yaml.safe_load_all(path.read_text())))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, block in enumerate(_yaml_blocks(path.read_text()), start=1):
            source = f"{path.relative_to(ROOT)} yaml block {number}"
            groups += _groups_of(source, list(yaml.safe_load_all(block)))
    return groups


def resolve(handler: str, folder: Path) -> Resolution:
    done = subprocess.run(
        [sys.executable, "-I", "-c", RESOLVE, str(folder), handler],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    origin = report["origin"]
    return Resolution(report["loaded"], report["error"], Path(origin) if origin else None)


GROUPS = example_groups()


def test_the_examples_name_groups() -> None:
    # Guards the walk itself: an empty list would make every other test here vacuous.
    assert {g.image for g in GROUPS} == set(IMAGE_SOURCES)
    assert len(GROUPS) >= 8


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.id)
def test_handler_exists_in_its_image(group: ExampleGroup) -> None:
    folder = IMAGE_SOURCES.get(group.image)
    assert folder is not None, (
        f"{group.id}: image {group.image} is not one the repository builds; add it to IMAGE_SOURCES"
    )
    resolution = resolve(group.handler, folder)
    assert resolution == Resolution(True, None, resolution.origin), f"{group.id}: {resolution.error}"
    assert resolution.origin is not None
    assert resolution.origin.is_relative_to(folder), "imported from elsewhere, not from the image's source"


def test_a_handler_the_image_lacks_is_refused() -> None:
    # The name the examples used before the team image existed: the check must catch it.
    resolution = resolve("shop.billing:handle", IMAGE_SOURCES[TEAM_IMAGE])
    assert (resolution.loaded, resolution.origin) == (False, None)
