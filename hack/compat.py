"""``make compat``: the CRD, chart and operator-lifecycle tests on the oldest supported and the newest
served Kubernetes release, and the results written into docs/compatibility.md.

For each release: ``tests/controlplane/compat/build.sh VERSION`` builds the test API server against it
(``.cache/bin/streampipe-controlplane-VERSION``), then pytest runs ``TESTS`` with
``STREAMPIPE_CONTROLPLANE_BIN`` pointing at that binary (a JUnit report per release in
``.cache/compat/VERSION/``). ``--probe VERSION`` also builds a release below the minimum and records what
it does with the CRD (applied as the tests apply it, read back, listed with the field selector). The
results (``.cache/compat/results.json``) are rendered into docs/compatibility.md: nothing there is typed
by hand. CI and ``make test`` run the pinned release (tests/controlplane/go.mod) only.

    python hack/compat.py                       # OLDEST and NEWEST
    python hack/compat.py v1.31.14 --probe v1.30.14
    python hack/compat.py --render              # only re-render docs/compatibility.md from the last run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tests" / "controlplane" / "compat" / "build.sh"
CACHE = ROOT / ".cache" / "compat"
RESULTS = CACHE / "results.json"
DOC = ROOT / "docs" / "compatibility.md"
BIN = ROOT / ".cache" / "bin"
CRD_FILE = ROOT / "crds" / "streampipeline.yaml"
CRD_NAME = "streampipelines.streampipe.dev"

OLDEST = "v1.31.14"  # the oldest release the chart's kubeVersion admits (selectableFields)
NEWEST = "v1.37.2"  # the newest release the Go module proxy serves
TESTS = (
    "tests/k8s/test_crd_server.py",
    "tests/k8s/test_chart_server.py",
    "tests/k8s/test_chart_operator.py",
    "tests/k8s/test_operator_lifecycle.py",
)


def pinned_version() -> str:
    text = (ROOT / "tests" / "controlplane" / "go.mod").read_text()
    match = re.search(r"^\tk8s\.io/kubernetes (v\S+)", text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def binary(version: str) -> Path:
    return BIN / f"streampipe-controlplane-{version}"


def build(version: str) -> float:
    """Build (a no-op when warm); the seconds it took."""
    started = time.monotonic()
    subprocess.run([str(BUILD), version], check=True)
    return round(time.monotonic() - started, 1)


def run_tests(version: str) -> dict[str, Any]:
    """pytest on ``TESTS`` against ``version``'s API server; counts from its JUnit report."""
    report = CACHE / version / "junit.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STREAMPIPE_CONTROLPLANE_BIN": str(binary(version))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *TESTS],
        cwd=ROOT,
        env=env,
        check=False,
    )
    seconds = round(time.monotonic() - started, 1)
    suite = ET.parse(report).getroot()  # noqa: S314 (our own pytest's report)
    if suite.tag == "testsuites":
        suite = suite[0]
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    failures = [failure["test"] for failure in failures_of(report)]
    return {
        "tests": total,
        "passed": total - failed - skipped,
        "failed": failed,
        "skipped": skipped,
        "failures": failures,
        "pytest_exit": done.returncode,
        "seconds": seconds,
    }


# The one assertion of test_invalid_spec_refused_by_server that compares the server's words with the
# offline validator's: a failure there (after "refused" and "on this path" held) is a wording difference.
WORDING_ASSERT = "assert case.expected_server_message in done.stderr"


def failures_of(report: Path) -> list[dict[str, Any]]:
    """Each failed test of a JUnit report: its id, the first lines of its message, and whether only the
    server's wording of a refusal differed (``WORDING_ASSERT``)."""
    found = []
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 (our own pytest's report)
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is None:
            continue
        message = (failure.get("message") or "").partition("\nassert ")[0]
        message = message.split("\n[+")[0].strip().removeprefix("AssertionError: ")
        expected = re.search(r"^E\s+assert '(.*?)' in ", failure.text or "", re.MULTILINE)
        found.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "expected": expected.group(1) if expected else "",
                "message": "\n".join(line.strip() for line in message.splitlines()[:4]),
                "wording_only": f">       {WORDING_ASSERT}" in (failure.text or ""),
            }
        )
    return found


def server_version(kubectl: list[str]) -> str:
    done = subprocess.run([*kubectl, "version", "-o", "json"], capture_output=True, text=True, check=False)
    try:
        return str(json.loads(done.stdout)["serverVersion"]["gitVersion"])
    except (ValueError, KeyError):
        return "unknown"


def probe(version: str) -> dict[str, Any]:
    """Start ``version``'s API server, apply the CRD as the tests do, and record what the server did."""
    found: dict[str, Any] = {"version": version}
    with tempfile.TemporaryDirectory(prefix="compat-probe-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        log = (Path(tmp) / "server.log").open("w")
        proc = subprocess.Popen(
            [str(binary(version)), "--kubeconfig", str(kubeconfig)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("ready "):
                found["error"] = "the API server did not start"
                return found
            kubectl = [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig)]
            found["server"] = server_version(kubectl)
            apply = subprocess.run(
                [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE)],
                capture_output=True,
                text=True,
                check=False,
            )
            found["apply_exit"] = apply.returncode
            found["apply_output"] = (apply.stdout + apply.stderr).strip()
            if apply.returncode != 0:
                return found
            subprocess.run(
                [*kubectl, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s"],
                capture_output=True,
                check=False,
            )
            crd = json.loads(
                subprocess.run(
                    [*kubectl, "get", "crd", CRD_NAME, "-o", "json"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            found["stored_selectable_fields"] = [v.get("selectableFields") for v in crd["spec"]["versions"]]
            listing = subprocess.run(
                [*kubectl, "get", "streampipelines", "-A", "--field-selector", "spec.stream=x", "-o", "name"],
                capture_output=True,
                text=True,
                check=False,
            )
            found["field_selector_exit"] = listing.returncode
            found["field_selector_output"] = (listing.stdout + listing.stderr).strip()
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    return found


def render(results: dict[str, Any]) -> str:
    pinned = results["pinned"]
    lines = [
        "# Kubernetes compatibility",
        "",
        "<!-- Generated by `make compat` (hack/compat.py) from its last run; do not edit by hand. -->",
        "",
        f"`make compat` builds the test API server (kube-apiserver with embedded etcd, "
        f"[tests/controlplane](../tests/controlplane/README.md)) against the oldest Kubernetes release the "
        f"chart admits and the newest one the Go module proxy serves "
        f"(`tests/controlplane/compat/build.sh VERSION`), and runs the CRD, chart and operator-lifecycle "
        f"tests against each: {', '.join(f'`{t}`' for t in results['tests'])}. CI and `make test` run only "
        f"the pinned release, {pinned} (`tests/controlplane/go.mod`). kubectl and Helm are the pinned "
        f"tools of `.cache/bin` for every release.",
        "",
        f"Last run: {results['date']} on {results['host']}.",
        "",
        "| Kubernetes | tests | passed | failed | skipped | test time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for version, run in results["runs"].items():
        lines.append(
            f"| {version} | {run['tests']} | {run['passed']} | {run['failed']} | {run['skipped']} "
            f"| {run['seconds']:.0f} s |"
        )
    acceptable = []
    for version, run in results["runs"].items():
        report = CACHE / version / "junit.xml"
        failures = failures_of(report) if report.exists() else []
        if run["tests"] and all(failure["wording_only"] for failure in failures):
            acceptable.append(version)
        if not failures:
            continue
        lines += ["", f"Failed on {version}:", ""]
        for failure in failures:
            kind = "the server refused it, worded differently" if failure["wording_only"] else "a failure"
            lines += [f"- `{failure['test']}` ({kind}):", "", "  ```text"]
            lines += [f"  {line}" for line in failure["message"].splitlines()]
            lines += ["  ```"]
            if failure["expected"]:
                lines += ["", f"  expected: `{failure['expected']}`"]
    lines += ["", "## The minimum", ""]
    if acceptable:
        oldest = min(acceptable, key=version_key)
        lines.append(
            f"The oldest release here on which every test passed, or failed only on the wording of a "
            f"refusal (`{WORDING_ASSERT}` in `tests/k8s/test_crd_server.py`, after the server refused "
            f"the spec on the expected path), is {oldest}: the chart's `kubeVersion` and "
            f"[install.md](install.md) name {'.'.join(oldest.lstrip('v').split('.')[:2])}. The "
            "expected words are those of the pinned release and the offline validator; older API "
            "servers word some refusals differently."
        )
    else:
        lines.append("No release passed in the last run.")
    if results.get("probe"):
        p = results["probe"]
        lines += [
            "",
            f"Below it, {p['version']} (server reported `{p.get('server', '?')}`), with the CRD applied "
            "as the tests apply it (`kubectl apply --server-side`):",
            "",
        ]
        if "error" in p:
            lines.append(f"- {p['error']}")
        elif p["apply_exit"] != 0:
            lines += ["- the CRD is refused:", "", "```text", p["apply_output"], "```"]
        else:
            lines += [
                f"- the CRD is accepted (`{p['apply_output']}`), but the server stores it with "
                f"`selectableFields` = `{json.dumps(p['stored_selectable_fields'])}` "
                "(the manifest declares `[{jsonPath: .spec.stream}]`);",
                f"- `kubectl get streampipelines --field-selector spec.stream=x` exits "
                f"{p['field_selector_exit']}:",
                "",
                "```text",
                p["field_selector_output"] or "(no output)",
                "```",
            ]
    return "\n".join(lines) + "\n"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("versions", nargs="*", default=[OLDEST, NEWEST])
    parser.add_argument("--probe", metavar="VERSION", help="a release below the minimum: record what it does")
    parser.add_argument("--render", action="store_true", help="only re-render the doc from the last run")
    args = parser.parse_args()
    if args.render:
        DOC.write_text(render(json.loads(RESULTS.read_text())))
        return 0
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "pinned": pinned_version(),
        "tests": list(TESTS),
        "runs": {},
    }
    for version in args.versions:
        build_seconds = build(version)
        run = run_tests(version)
        run["build_seconds"] = build_seconds
        results["runs"][version] = run
        print(f"compat: {version}: {run['passed']}/{run['tests']} passed, {run['failed']} failed", flush=True)
    if args.probe:
        build(args.probe)
        results["probe"] = probe(args.probe)
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    DOC.write_text(render(results))
    print(f"compat: wrote {DOC.relative_to(ROOT)}", flush=True)
    # Failures that are only a refusal worded differently (see render) are listed, not fatal.
    acceptable = all(
        run["tests"] and all(f["wording_only"] for f in failures_of(CACHE / version / "junit.xml"))
        for version, run in results["runs"].items()
    )
    return 0 if acceptable else 1


if __name__ == "__main__":
    sys.exit(main())
