"""The chart's README is generated from Chart.yaml and values.yaml (hack/chart_readme.py), so it must be
current, every value must be documented, and the published version ranges must admit the chart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hack import chart_readme

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streampipe"


def test_committed_readme_is_current() -> None:
    assert (CHART / "README.md").read_text() == chart_readme.render(CHART), "run `make chart-readme`"


def test_every_documented_row_is_a_real_value_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = {row.key: row for row in chart_readme.rows(CHART)}
    assert rows["podDisruptionBudget.unhealthyPodEvictionPolicy"].default == "AlwaysAllow"
    assert rows["podDisruptionBudget.minAvailable"].type == "integer or string or null"
    assert rows["resources"].default == values["resources"]
    assert rows["networkPolicy.dns.port"].default == 53
    # A documented mapping is one row; its children are its default, not rows of their own.
    assert "resources.limits" not in rows
    assert "networkPolicy.dns" not in rows


def test_nested_keys_and_continued_comments_are_parsed() -> None:
    text = (
        "# a section comment\n"
        "top:\n"
        "  # -- first line\n"
        "  # second line\n"
        "  leaf: 1\n"
        "  inner:\n"
        "    # -- deep\n"
        "    key: [a]\n"
        "# -- after a list\n"
        "other: {}\n"
    )
    assert chart_readme.documented_keys(text) == {
        "top.leaf": "first line second line",
        "top.inner.key": "deep",
        "other": "after a list",
    }


def test_an_undocumented_value_is_refused(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\nundocumented: 1\n")
    with pytest.raises(chart_readme.UndocumentedValueError) as refused:
        chart_readme.rows(chart)
    assert refused.value.args[0] == "values.yaml: undocumented has no `# --` comment"


def test_check_mode_reports_a_stale_readme(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    assert chart_readme.main(["--check", str(chart)]) == 0
    (chart / "README.md").write_text("stale\n")
    assert chart_readme.main(["--check", str(chart)]) == 1


def test_published_version_ranges_admit_the_chart_version() -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    major, minor, _ = version.split(".")
    ranges = []
    for name in ("flux-helmrepository.yaml", "flux-ocirepository.yaml"):
        for doc in yaml.safe_load_all((ROOT / "examples" / "gitops" / name).read_text()):
            spec = doc.get("spec", {})
            if doc["kind"] == "HelmRelease" and "chart" in spec:
                ranges.append(spec["chart"]["spec"]["version"])
            if doc["kind"] == "OCIRepository":
                ranges.append(spec["ref"]["semver"])
    assert ranges == [f"{major}.{minor}.x", f"{major}.{minor}.x"]
