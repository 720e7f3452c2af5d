"""11. Security: least-privilege ACLs for the worker and the operator (docs/acl/*.acl) used by the real
components, everything else refused; TLS with a wrong CA fails closed; no credential in any output.

What each ACL allows is checked exhaustively with ``ACL DRYRUN`` (Redis >= 7): every command and
subcommand the server knows is tried as the user, on a key inside the pipeline's prefix and on one
outside it, and the set that passes must be exactly the documented list.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

import redis
from streampipe_operator.plan.consumers import DeleteConsumer
from streampipe_operator.plan.groups import CreateGroup, DeleteKeys, DestroyGroup
from streampipe_operator.plan.retention import RetentionPolicy
from streampipe_operator.redis_admin import RedisAdmin, RedisUnreachableError
from streampipe_worker.connection import ConnectionSettings, create_async_client
from streampipe_worker.settings import ENV_PREFIX
from tests.chaos.harness import (
    DEAD_LETTER,
    GROUP,
    STREAM,
    clean_environ,
    drained,
    produce,
    wait_until,
    worker_env,
    worker_processes,
)
from tests.chaos.oracle import dead_letters, judge, read_calls
from tests.chaos.results import ChaosResult, record
from tests.support.servers import ServerProcess
from tests.support.topologies import make_tls_files, worker_acl_lines, write_acl_file

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ACL = ROOT / "docs" / "acl" / "operator.acl"
SECRET = "Sup3r-s3cret-pw"  # searched for in every output below
INSIDE = "{orders}:events"
OUTSIDE = "payments:events"


def operator_acl_lines(password: str, key_pattern: str = "~{orders}:*") -> list[str]:
    """docs/acl/operator.acl with a real password and key pattern (as worker_acl_lines does)."""
    lines = []
    for line in OPERATOR_ACL.read_text().splitlines():
        if line.startswith("user "):
            lines.append(line.replace(">CHANGE-ME", f">{password}").replace("~{orders}:*", key_pattern))
    return lines


def run_worker_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = clean_environ()
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "streampipe_worker", "--check", "--ping"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_worker_messages_never_show_a_password_from_the_url() -> None:
    """Regression (found here): ``--check --ping`` printed the URL with its password when the server was
    unreachable, and a settings error echoed a URL with credentials."""
    base = {
        f"{ENV_PREFIX}STREAM": INSIDE,
        f"{ENV_PREFIX}GROUP": GROUP,
        f"{ENV_PREFIX}HANDLER": "json:dumps",
    }
    unreachable = run_worker_check({**base, f"{ENV_PREFIX}REDIS_URL": f"redis://bob:{SECRET}@127.0.0.1:1/0"})
    assert unreachable.returncode == 1
    assert "cannot reach Redis at redis://bob:***@127.0.0.1:1/0" in unreachable.stderr
    wrong_scheme = run_worker_check({**base, f"{ENV_PREFIX}REDIS_URL": f"http://bob:{SECRET}@127.0.0.1:1/0"})
    assert wrong_scheme.returncode == 2
    assert "http://bob:***@127.0.0.1:1/0" in wrong_scheme.stderr
    bad_port = run_worker_check({**base, f"{ENV_PREFIX}REDIS_URL": f"redis://bob:{SECRET}@127.0.0.1:x/0"})
    for done in (unreachable, wrong_scheme, bad_port):
        assert SECRET not in done.stdout + done.stderr
