"""Generate charts/streampipe/README.md from Chart.yaml and the `# --` comments of values.yaml.

A value is documented by a comment block that starts with ``# --`` right above its key (further
``#`` lines continue it); a documented mapping is one row, its children are its default. The type
comes from values.schema.json, the default from the parsed values. ``make chart-readme`` writes the
file; ``--check`` exits 1 when the committed README differs (tests/unit/test_chart_readme.py runs
the same comparison).

Usage: python hack/chart_readme.py [--check] [CHART_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "streampipe"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
COMMENT_LINE = re.compile(r"^(?P<indent> *)#(?P<text>.*)$")


@dataclass(frozen=True)
class Row:
    key: str  # dotted path
    type: str
    default: Any
    description: str


class UndocumentedValueError(ValueError):
    pass


def documented_keys(values_text: str) -> dict[str, str]:
    """Dotted key path -> description, for every key with a ``# --`` block right above it."""
    described: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    buffer: list[str] | None = None
    for line in values_text.splitlines():
        if not line.strip():
            buffer = None
            continue
        comment = COMMENT_LINE.match(line)
        if comment:
            text = comment["text"]
            if text.startswith(" --"):
                buffer = [text[3:].strip()]
            elif buffer is not None:
                buffer.append(text.strip())
            continue
        key = KEY_LINE.match(line)
        if key is None:  # a list item or a continued scalar: part of a value above
            buffer = None
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key["key"]])
        if buffer is not None:
            described[path] = " ".join(part for part in buffer if part)
        buffer = None
        stack.append((indent, key["key"]))
    return described


def _lookup(tree: Any, path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def _schema_type(schema: dict[str, Any], path: str, default: Any) -> str:
    node: dict[str, Any] | None = schema
    for part in path.split("."):
        node = (node or {}).get("properties", {}).get(part)
    kinds = (node or {}).get("type")
    if isinstance(kinds, list):
        return " or ".join(kinds)
    if isinstance(kinds, str):
        return kinds
    if node and ("oneOf" in node or "anyOf" in node):
        alternatives = node.get("oneOf") or node.get("anyOf")
        return " or ".join(str(alt.get("type", "object")) for alt in alternatives)
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(default), "object"
    )


def rows(chart_dir: Path = CHART) -> list[Row]:
    text = (chart_dir / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    described = documented_keys(text)
    _check_complete(values, described)
    out = []
    for path, description in described.items():
        default = _lookup(values, path)
        out.append(Row(path, _schema_type(schema, path, default), default, description))
    return out


def _check_complete(values: Any, described: dict[str, str], prefix: str = "") -> None:
    """Every leaf value sits under a documented key (the values.yaml header promises it)."""
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in described:
            continue
        if isinstance(value, dict) and value:
            _check_complete(value, described, path + ".")
        else:
            raise UndocumentedValueError(f"values.yaml: {path} has no `# --` comment")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    rendered = json.dumps(value, separators=(",", ":"))
    return f"`{_cell(rendered)}`"


def render(chart_dir: Path = CHART) -> str:
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    name = chart["name"]
    lines = [
        f"# {name}",
        "",
        f"![Version: {chart['version']}](https://img.shields.io/badge/Version-{chart['version']}-informational)"
        f" ![AppVersion: {chart['appVersion']}](https://img.shields.io/badge/AppVersion-{chart['appVersion']}-informational)",
        "",
        " ".join(chart["description"].split()),
        "",
        f"Kubernetes `{chart['kubeVersion']}` (the oldest release the project tests; "
        "[docs/compatibility.md](../../docs/compatibility.md)), Helm 3.8+ or Helm 4.",
        "",
        "## Install",
        "",
        "```console",
        f"$ helm install {name} charts/{name} -n {name}-system --create-namespace",
        f"$ helm upgrade {name} charts/{name} -n {name}-system --reset-then-reuse-values",
        "```",
        "",
        "The CRDs in `crds/` are installed by the first `helm install` and kept by `helm uninstall`"
        " (deleting them would delete every StreamPipeline). Upgrades, namespaced installs, monitoring"
        " and GitOps: [docs/install.md](../../docs/install.md).",
        "",
    ]
    maintainers = chart.get("maintainers") or []
    if maintainers:
        lines += ["## Maintainers", "", "| Name | Url |", "| ---- | --- |"]
        lines += [f"| {m['name']} | <{m.get('url', '')}> |" for m in maintainers]
        lines.append("")
    sources = chart.get("sources") or []
    if sources:
        lines += ["## Source Code", ""] + [f"* <{s}>" for s in sources] + [""]
    lines += [
        "## Values",
        "",
        "`values.schema.json` refuses unknown keys, so a misspelt value fails the install.",
        "",
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
    ]
    lines += [
        f"| {row.key} | {row.type} | {_default(row.default)} | {_cell(row.description)} |"
        for row in rows(chart_dir)
    ]
    lines += [
        "",
        "<!-- Generated by hack/chart_readme.py from Chart.yaml and values.yaml (`make chart-readme`);"
        " edit those, not this file. -->",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    chart_dir = Path(args[0]) if args else CHART
    target = chart_dir / "README.md"
    text = render(chart_dir)
    if check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run `make chart-readme`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
