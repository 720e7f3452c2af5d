"""Size limits of the two packages, checked by ``make lint``: no module over 700 lines, no class over 400.

A module or class past its limit is holding more than one concern; split it rather than raise the
limit. The only exceptions are generated code and data tables, named one by one in ``EXCEPTIONS``
with the reason; a listed file that is back under the limits is reported too, so the list only
shrinks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("operator/streampipe_operator", "worker/streampipe_worker")
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 400

# path (relative to the repository) -> why it may exceed the limits
EXCEPTIONS: dict[str, str] = {}


def problems_of(path: Path) -> list[str]:
    """Each limit ``path`` exceeds, worded for a person."""
    text = path.read_text(encoding="utf-8")
    relative = path.relative_to(ROOT).as_posix()
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{relative}: module has {lines} lines (limit {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, filename=relative)):
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
            start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            size = node.end_lineno - start + 1
            if size > MAX_CLASS_LINES:
                found.append(
                    f"{relative}:{node.lineno}: class {node.name} has {size} lines (limit {MAX_CLASS_LINES})"
                )
    return found


def main() -> int:
    failures = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            found = problems_of(path)
            if relative in EXCEPTIONS:
                if not found:
                    failures.append(f"{relative}: within the limits now; remove it from EXCEPTIONS")
                continue
            failures += found
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print("split the module or class by concern (see docs/architecture.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
