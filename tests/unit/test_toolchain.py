"""The pinned tool binaries that `make tools` puts into .cache/bin/ are there, at the promised versions."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.servers import TOOL_BIN


def run_tool(*args: str) -> str:
    binary = TOOL_BIN / args[0]
    assert binary.exists(), f"{binary} missing: run `make tools`"
    done = subprocess.run([str(binary), *args[1:]], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("helm", "version", "--short"), "v4.1.4"),
        (("kubectl", "version", "--client"), "v1.35.2"),
        (("hadolint", "--version"), "2."),
        (("valkey-server", "--version"), "v=9.1."),
        (("redis-server", "--version"), "v=7.0."),
        (("redis-sentinel", "--version"), "v=7.0."),
        (("redis-cli", "--version"), "redis-cli 7.0."),
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
def test_tool_version(command: tuple[str, ...], expected: str) -> None:
    assert expected in run_tool(*command)
