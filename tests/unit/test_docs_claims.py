"""Claims in the docs that name a file, a page or a rendered resource, checked against the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streampipe_operator.controller.metrics import OperatorMetrics
from streampipe_worker.metrics import OwnershipMetrics, WorkerMetrics
from tests.unit.test_chart import one, render_values

ROOT = Path(__file__).resolve().parents[2]
# A bare or relative name of a Markdown file, not part of a URL or of a longer path.
MD_REFERENCE = re.compile(r"(?<![\w/:.-])([\w./-]*[\w-]\.md)(?:#[\w-]+)?")


def sources() -> list[Path]:
    found = [*ROOT.glob("operator/**/*.py"), *ROOT.glob("worker/**/*.py"), *ROOT.glob("docs/**/*.md")]
    found += [*ROOT.glob("charts/**/*.yaml"), *ROOT.glob("examples/**/*.yaml"), ROOT / "README.md"]
    return sorted(path for path in found if path.is_file())


def test_every_markdown_page_a_file_names_exists() -> None:
    pages = {p.name for p in ROOT.glob("**/*.md") if not {".venv", ".cache", ".git"} & set(p.parts)}
    missing = []
    for path in sources():
        for match in MD_REFERENCE.finditer(path.read_text(encoding="utf-8")):
            ref = match.group(1)
            if (ROOT / ref).exists() or (path.parent / ref).exists():
                continue
            if "/" not in ref and ref in pages:
                continue
            missing.append((str(path.relative_to(ROOT)), ref))
    assert missing == []


@pytest.mark.parametrize(
    ("release", "name"),
    [("streampipe", "streampipe-dashboard"), ("shop", "shop-streampipe-dashboard")],
)
def test_the_dashboard_configmap_is_named_as_monitoring_md_says(
    release: str, name: str, tmp_path: Path
) -> None:
    objects = render_values(tmp_path, {"grafanaDashboard": {"enabled": True}}, release=release)
    assert one(objects, "ConfigMap")["metadata"]["name"] == name
    row = next(
        line for line in (ROOT / "docs" / "monitoring.md").read_text().splitlines() if "ConfigMap" in line
    )
    assert f"`{name}`" in row or (release != "streampipe" and "`<release>-streampipe-dashboard`" in row)


METRIC = re.compile(r"\bstreampipe_(?:operator|worker)_[a-z0-9_]*[a-z0-9]")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def test_every_metric_the_docs_name_is_defined_in_the_code() -> None:
    operator, worker = OperatorMetrics(CollectorRegistry()), WorkerMetrics("s", "g", CollectorRegistry())
    registries = (operator.registry, worker.registry, OwnershipMetrics("s", "g").registry)
    defined = {
        sample.name for registry in registries for family in registry.collect() for sample in family.samples
    } | {family.name for registry in registries for family in registry.collect()}
    # Labelled operator series appear once set: their family names are enough.
    assert len(defined) > 20
    unknown = []
    for page in [*ROOT.glob("docs/*.md"), ROOT / "README.md"]:
        for name in sorted(set(METRIC.findall(page.read_text(encoding="utf-8")))):
            base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
            if name not in defined and base not in defined:
                unknown.append((page.name, name))
    assert unknown == []
