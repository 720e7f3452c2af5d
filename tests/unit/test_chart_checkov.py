"""checkov (Bridgecrew/Prisma's IaC scanner) on the rendered chart: every finding is either fixed or
justified in docs/security.md, and every justification there still matches a real finding.

checkov pins dozens of packages, so it lives in its own venv under .cache/checkov (created here on first
use from PyPI, version pinned), never in the project's venv.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_chart import MONITORING_APIS, ROOT, VALUE_SETS, render_text

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".cache" / "checkov"
CHECKOV = CHECKOV_VENV / "bin" / "checkov"
SECURITY_DOC = ROOT / "docs" / "security.md"
JUSTIFIED_BLOCK = re.compile(
    r"<!-- checkov-justified:start -->(.*?)<!-- checkov-justified:end -->", re.DOTALL
)


def ensure_checkov() -> Path:
    """checkov at the pinned version in .cache/checkov (idempotent; pip only when it is missing)."""
    if CHECKOV.exists():
        done = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, check=False)
        if done.stdout.strip() == CHECKOV_VERSION:
            return CHECKOV
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], check=True)
    subprocess.run(
        [
            str(CHECKOV_VENV / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"checkov=={CHECKOV_VERSION}",
        ],
        check=True,
        timeout=840,
    )
    return CHECKOV


def justified() -> dict[str, set[str]]:
    """check id -> the object kinds (``Kind/name-suffix``) docs/security.md justifies it for."""
    block = JUSTIFIED_BLOCK.search(SECURITY_DOC.read_text())
    assert block, f"{SECURITY_DOC} lacks the checkov-justified block"
    table: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"CKV2?_K8S_\d+", cells[0]):
            table[cells[0]] = {obj.strip().strip("`") for obj in cells[1].split(",")}
    return table


def object_key(resource: str, release: str, namespace: str) -> str:
    """checkov's ``Kind.namespace.name[.pod template labels]`` -> ``Kind/name-suffix``: the release
    prefix dropped, ``operator`` for the operator's own objects and its Deployment's pod template."""
    kind, _, rest = resource.partition(".")
    name = rest.removeprefix(f"{namespace}.").split(".", 1)[0]
    return f"{kind}/{name.removeprefix(f'{release}-streampipe').lstrip('-') or 'operator'}"


@pytest.mark.timeout(900)
def test_checkov_findings_are_fixed_or_justified(tmp_path: Path) -> None:
    checkov = ensure_checkov()
    release, namespace = "sp", "streampipe-system"
    findings: dict[str, set[str]] = {}
    passed = 0
    for name, values in VALUE_SETS.items():
        # One directory and run per value set: checkov's graph checks (a Pod and the NetworkPolicy that
        # selects it) would otherwise match objects across value sets.
        directory = tmp_path / name
        directory.mkdir()
        (directory / "chart.yaml").write_text(
            render_text(values, release=release, namespace=namespace, api_versions=MONITORING_APIS)
        )
        done = subprocess.run(
            [
                str(checkov),
                "--directory",
                str(directory),
                "--framework",
                "kubernetes",
                "--quiet",
                "--compact",
                "--skip-download",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        # Exit code 1 means "findings"; anything else is checkov failing to run.
        assert done.returncode in (0, 1), done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        passed += report["summary"]["passed"]
        for check in report["results"]["failed_checks"]:
            findings.setdefault(check["check_id"], set()).add(
                object_key(check["resource"], release, namespace)
            )
    assert passed > 100, "checkov ran no real checks"
    table = justified()
    unjustified = {
        check: objects - table.get(check, set())
        for check, objects in findings.items()
        if objects - table.get(check, set())
    }
    assert unjustified == {}, f"fix these or justify them in {SECURITY_DOC.relative_to(ROOT)}"
    stale = {check: objects for check, objects in table.items() if not objects & findings.get(check, set())}
    assert stale == {}, "docs/security.md justifies findings checkov no longer reports: remove them"
