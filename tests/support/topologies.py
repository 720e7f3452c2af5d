"""Server topologies beyond one server: Sentinel, Cluster, TLS certificates and ACL files.

Everything binds 127.0.0.1 on free ports, lives in the test's temp dir, and is stopped by PID by
the test that started it (through the returned objects' ``stop()``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from tests.support.servers import ServerProcess, ServerStartError, find_binary, free_port, start_server

ROOT = Path(__file__).resolve().parents[2]
WORKER_ACL = ROOT / "docs" / "acl" / "worker.acl"


class SentinelProcess(ServerProcess):
    """``redis-sentinel <config>``: Sentinel rewrites its config file, so it gets one of its own."""

    monitor: tuple[str, str, int, int] = ("mymaster", "127.0.0.1", 0, 2)

    def command(self) -> list[str]:
        name, host, port, quorum = self.monitor
        config = self.workdir / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.workdir}",
                    f"logfile {self.logfile}",
                    f"sentinel monitor {name} {host} {port} {quorum}",
                    f"sentinel down-after-milliseconds {name} 1000",
                    f"sentinel failover-timeout {name} 10000",
                    f"sentinel parallel-syncs {name} 1",
                    "",
                ]
            )
        )
        return [str(self.binary), str(config)]


@dataclass
class SentinelSet:
    """One primary, its replicas, and the sentinels watching them."""

    master_name: str
    data_nodes: list[ServerProcess]
    sentinels: list[ServerProcess]

    @property
    def url(self) -> str:
        """What STREAMPIPE_REDIS_URL holds in sentinel mode: the sentinels."""
        return "redis://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinels[0].port, decode_responses=True, socket_timeout=5)

    def primary_port(self) -> int:
        with self.sentinel_client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def node(self, port: int) -> ServerProcess:
        return next(node for node in self.data_nodes if node.port == port)

    def wait_replicas_known(self, timeout: float = 20.0) -> None:
        """Sentinels know every replica (a failover needs one to promote)."""
        deadline = time.monotonic() + timeout
        expected = len(self.data_nodes) - 1
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                known = []
                for sentinel in self.sentinels:
                    with redis.Redis(port=sentinel.port, decode_responses=True) as client:
                        known.append(len(client.execute_command("SENTINEL", "REPLICAS", self.master_name)))
                        sentinels = client.execute_command("SENTINEL", "SENTINELS", self.master_name)
                        known.append(len(sentinels) + 1 >= len(self.sentinels) and expected)
                if all(count >= expected for count in known):
                    return
            time.sleep(0.1)
        raise ServerStartError(f"sentinels did not discover {expected} replicas within {timeout}s")

    def failover(self, timeout: float = 30.0) -> int:
        """Force a failover (SENTINEL FAILOVER) and wait until the new primary accepts writes."""
        old = self.primary_port()
        with self.sentinel_client() as client:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                new = self.primary_port()
                if new != old:
                    with self.node(new).client() as node:
                        if node.info("replication")["role"] == "master":
                            return new
            time.sleep(0.05)
        raise AssertionError(f"no failover away from port {old} within {timeout}s")

    def stop(self) -> None:
        for process in [*self.sentinels, *self.data_nodes]:
            process.stop()


def start_sentinel_set(
    kind: str, workdir: Path, *, replicas: int = 2, sentinels: int = 3, master_name: str = "mymaster"
) -> SentinelSet:
    """A primary of ``kind`` with ``replicas`` replicas and ``sentinels`` Debian redis-sentinels."""
    started: list[ServerProcess] = []
    try:
        primary = start_server(kind, workdir / "primary")
        started.append(primary)
        for index in range(replicas):
            args = ["--replicaof", "127.0.0.1", str(primary.port)]
            started.append(start_server(kind, workdir / f"replica-{index}", args))
        watchers: list[ServerProcess] = []
        binary = find_binary("redis-sentinel")
        for index in range(sentinels):
            sentinel = SentinelProcess(binary=binary, workdir=workdir / f"sentinel-{index}", port=free_port())
            sentinel.monitor = (master_name, "127.0.0.1", primary.port, 2)
            started.append(sentinel.start())
            watchers.append(sentinel)
        topology = SentinelSet(master_name, started[: replicas + 1], watchers)
        topology.wait_replicas_known()
        return topology
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise


@dataclass
class Cluster:
    """A Redis Cluster made with ``redis-cli --cluster create``: primaries, and replicas if asked."""

    nodes: list[ServerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def node(self, port: int) -> ServerProcess:
        return next(node for node in self.nodes if node.port == port)

    def live_nodes(self) -> list[ServerProcess]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def slot_owner(self, slot: int) -> ServerProcess | None:
        """The primary serving ``slot`` as the live nodes agree (CLUSTER NODES); None while they differ
        or none of them claims it."""
        owners = set()
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    owners.add(_slot_owner_port(str(client.execute_command("CLUSTER", "NODES")), slot))
            except redis.RedisError:
                return None
        if len(owners) != 1 or None in owners:
            return None
        [port] = owners
        return self.node(port) if port is not None else None

    def primary_for_slot(self, slot: int) -> ServerProcess:
        owner = self.slot_owner(slot)
        if owner is None:
            raise AssertionError(f"the live nodes do not agree on the owner of slot {slot}")
        return owner

    def replicas_of(self, primary: ServerProcess) -> list[ServerProcess]:
        """The nodes whose replication link to ``primary`` is up (INFO replication)."""
        following = []
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    info = client.info("replication")
            except redis.RedisError:
                continue
            if info.get("master_port") == primary.port and info.get("master_link_status") == "up":
                following.append(node)
        return following

    def ok(self) -> bool:
        """Every live node says cluster_state:ok."""
        try:
            for node in self.live_nodes():
                with node.client() as client:
                    if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                        return False
        except redis.RedisError:
            return False
        return True

    def wait_promoted(self, slot: int, old: ServerProcess, timeout: float = 30.0) -> ServerProcess:
        """Wait until a node other than ``old`` serves ``slot`` as a primary that accepts writes, and
        the cluster state is ok on every live node; return the new primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owner = self.slot_owner(slot)
            if owner is not None and owner.port != old.port and self.ok():
                with contextlib.suppress(redis.RedisError), owner.client() as client:
                    if client.info("replication")["role"] == "master":
                        return owner
            time.sleep(0.05)
        raise AssertionError(f"slot {slot} not served by a promoted replica within {timeout}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _slot_owner_port(nodes: str, slot: int) -> int | None:
    """The port of the primary that CLUSTER NODES output ``nodes`` names for ``slot`` (failed nodes
    are skipped: a dead primary keeps its slots in the table until a replica takes them)."""
    for line in nodes.splitlines():
        parts = line.split()
        if len(parts) < 9 or "master" not in parts[2].split(",") or "fail" in parts[2].split(","):
            continue
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = item.partition("-")
            if int(low) <= slot <= int(high or low):
                return int(parts[1].split("@")[0].rpartition(":")[2])
    return None


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; a cluster node refuses ports > 55535."""
    while True:
        port = free_port()
        if port > 65_535 - 10_000:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def start_cluster(
    kind: str,
    workdir: Path,
    masters: int = 3,
    timeout: float = 30.0,
    *,
    replicas_per_master: int = 0,
    node_timeout_ms: int = 5000,
) -> Cluster:
    """A cluster of ``masters`` primaries with ``replicas_per_master`` replicas each (assigned by
    ``redis-cli --cluster create``), returned once every node says cluster_state:ok and every replica
    has synced. A low ``node_timeout_ms`` (1000) makes a replica take over a dead primary within a few
    seconds: for fault tests."""
    cluster = Cluster()
    try:
        for index in range(masters * (1 + replicas_per_master)):
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # Replicas sync at once (the default waits 5 s for more replicas to share a sync).
                "--repl-diskless-sync-delay",
                "0",
            ]
            for attempt in range(3):
                try:
                    node = start_server(kind, workdir / f"node-{index}", args, port=free_cluster_port())
                    break
                except ServerStartError:
                    # Another process may have taken the port between free_cluster_port() and bind.
                    if attempt == 2:
                        raise
            cluster.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
        subprocess.run(
            [
                str(find_binary("redis-cli")),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(replicas_per_master),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in cluster.nodes:
                with node.client() as client:
                    states.append(client.execute_command("CLUSTER", "INFO"))
            if all("cluster_state:ok" in str(state) for state in states) and _replicas_synced(
                cluster, masters * replicas_per_master
            ):
                return cluster
            time.sleep(0.1)
        raise ServerStartError(f"cluster not ok within {timeout}s")
    except BaseException:
        cluster.stop()
        raise


def _replicas_synced(cluster: Cluster, expected: int) -> bool:
    """``expected`` nodes are replicas whose link to their primary is up (the full sync is done)."""
    synced = 0
    for node in cluster.nodes:
        with node.client() as client:
            info = client.info("replication")
        synced += info["role"] == "slave" and info.get("master_link_status") == "up"
    return synced == expected


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path  # a CA that did not sign the server certificate

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.server_cert),
            "--tls-key-file", str(self.server_key),
            "--tls-ca-cert-file", str(self.ca_cert),
            "--tls-auth-clients", "no",
        ]  # fmt: skip


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    for name in ("ca", "other-ca"):
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=streampipe test {name}",
        )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        other_ca_cert=directory / "other-ca.crt",
    )


def worker_acl_lines(password: str, key_pattern: str = "~{orders}:*") -> list[str]:
    """The documented worker ACL (docs/acl/worker.acl) with a real password and key pattern."""
    lines = []
    for line in WORKER_ACL.read_text().splitlines():
        if line.startswith("user "):
            lines.append(line.replace(">CHANGE-ME", f">{password}").replace("~{orders}:*", key_pattern))
    return lines


def write_acl_file(path: Path, users: Sequence[str]) -> Path:
    """An ACL file with the default user (for the test's own producer) plus ``users``."""
    path.write_text("\n".join(["user default on nopass ~* &* +@all", *users, ""]))
    return path


@contextlib.contextmanager
def running(process: Cluster | SentinelSet) -> Iterator[Cluster | SentinelSet]:
    try:
        yield process
    finally:
        process.stop()
