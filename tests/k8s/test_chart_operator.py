"""The chart's RBAC is sufficient: the real operator (`streampipe operator run`), authenticated only with a
TokenRequest token of the ServiceAccount `helm install` created, reconciles a StreamPipeline end to end:
it reads the Redis password from a Secret, creates the consumer groups in a real Valkey, creates the
worker Deployments, writes status and Events, and removes its finalizer on deletion. Its log shows no
refused call. With peering (two replicas' worth of chart), two operator processes share the chart's
KopfPeering and only one of them acts.

Most tests use a namespaced install (one watched namespace) on the shared control plane: an
all-namespaces operator there would also reconcile the pipelines other tests create. The default,
all-namespaces install (a ClusterRole) gets a control plane of its own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.k8s.test_chart_server import PEERING_CRDS, helm_cli, restricted_namespace
from tests.support.controlplane import ControlPlane, Kubectl, running_control_plane, unique_name
from tests.support.polling import eventually
from tests.support.servers import ServerProcess, free_port
from tests.unit.test_chart import CHART

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.timeout(240)]

STREAMPIPE = Path(sys.executable).parent / "streampipe"
PASSWORD = "chart-e2e-secret"
T = TypeVar("T")


@dataclass
class Operator:
    """One `streampipe operator run` process, started and stopped (by PID) by the test."""

    kubeconfig: Path
    namespace: str
    log: Path
    # The chart always passes --standalone or --peering NAME: without either, kopf would look for a
    # peering object named "default", which the chart's RBAC (rightly) does not let it write.
    args: tuple[str, ...] = ("--standalone",)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    all_namespaces: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        command = [
            str(STREAMPIPE), "operator", "run",
            "--kubeconfig", str(self.kubeconfig),
            *(["--all-namespaces"] if self.all_namespaces else ["--namespace", self.namespace]),
            "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            "--metrics-port", str(self.metrics_port),
            "--log-format", "json",
            *self.args,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        eventually(self.healthy, f"operator health endpoint\n{self.tail()}", within=60)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def tail(self, size: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Release:
    release: str
    namespace: str
    watched: str
    kubeconfig: Path

    @property
    def fullname(self) -> str:
        return f"{self.release}-streampipe"


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane,
    kubectl: Kubectl,
    crd_installed: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """The chart installed by `helm install`, namespaced to one watched namespace, with peering on (so the
    KopfPeering and its RBAC exist); the operator runs as the release's ServiceAccount."""
    namespace = restricted_namespace(kubectl, "chart-e2e-system")
    watched = restricted_namespace(kubectl, "chart-e2e-shop")
    name = unique_name("e2e")[:20]
    helm_cli(
        control_plane,
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--set-json",
        f"watchNamespaces={json.dumps([watched])}",
        "--set",
        "peering.enabled=true",
    )
    for crd in PEERING_CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    service_account = f"{name}-streampipe"
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=3600s").stdout.strip()
    kubeconfig = control_plane.kubeconfig_for_token(
        token,
        tmp_path_factory.mktemp("chart-e2e") / "operator.kubeconfig",
        user=f"system:serviceaccount:{namespace}:{service_account}",
    )
    yield Release(name, namespace, watched, kubeconfig)
    helm_cli(control_plane, "uninstall", name, "--namespace", namespace, check=False)
    for ns in (namespace, watched):
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pipeline(name: str, valkey: ServerProcess, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name},
        "spec": {
            "redis": {
                "url": f"redis://127.0.0.1:{valkey.port}/0",
                "auth": {"secretName": "redis-creds", "passwordKey": "password"},
            },
            "stream": f"{{{name}}}:events",
            "deletionPolicy": "Delete",
            "groups": [
                {
                    "name": group,
                    "handler": "shop_handlers.billing:router",
                    "image": "registry.example.com/shop/worker:1.0.0",
                    "scaling": {"minReplicas": 1, "maxReplicas": 3},
                }
                for group in groups
            ],
        },
    }


def conditions(kubectl: Kubectl, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    obj = kubectl.json("get", "streampipeline", name, "-n", namespace)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def refused_calls(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Forbidden" in line or "forbidden" in line or " 403" in line]


def test_operator_with_the_chart_service_account_reconciles_a_pipeline_end_to_end(
    kubectl: Kubectl,
    release: Release,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    valkey = server_factory("valkey9", password=PASSWORD)
    ns = release.watched
    kubectl(
        "create",
        "secret",
        "generic",
        "redis-creds",
        "-n",
        ns,
        f"--from-literal=password={PASSWORD}",
        check=False,
    )
    operator = Operator(release.kubeconfig, ns, tmp_path / "operator.log", ("--peering", release.fullname))
    operator.start()
    try:
        kubectl.apply(pipeline("orders", valkey, ["billing", "shipping"]), "-n", ns)
        with valkey.client() as redis_client:

            def groups_created() -> set[str]:
                if not redis_client.exists("{orders}:events"):
                    return set()
                found = {group["name"] for group in redis_client.xinfo_groups("{orders}:events")}
                return found if found == {"billing", "shipping"} else set()

            eventually(groups_created, f"consumer groups in Valkey\n{operator.tail()}")
        for group in ("billing", "shipping"):
            deployment = eventually(
                lambda group=group: (
                    kubectl(
                        "get", "deployment", f"orders-{group}", "-n", ns, "-o", "json", check=False
                    ).stdout
                ),
                f"Deployment orders-{group}\n{operator.tail()}",
            )
            spec = json.loads(deployment)["spec"]
            assert spec["replicas"] >= 1
            env = spec["template"]["spec"]["containers"][0]["env"]
            password = [e for e in env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
            assert password, "the password reaches workers through secretKeyRef only"
            assert PASSWORD not in deployment
        status = eventually(
            lambda: kubectl.json("get", "streampipeline", "orders", "-n", ns).get("status", {}).get("groups"),
            f"status.groups written\n{operator.tail()}",
        )
        assert {group["name"] for group in status} == {"billing", "shipping"}
        reachable = eventually(
            lambda: conditions(kubectl, ns, "orders").get("RedisReachable", {}).get("status") == "True",
            f"RedisReachable=True\n{operator.tail()}",
        )
        assert reachable
        meta = kubectl.json("get", "streampipeline", "orders", "-n", ns)["metadata"]
        assert "streampipe.dev/finalizer" in meta.get("finalizers", [])
        events = kubectl.json("get", "events", "-n", ns)["items"]
        assert any(e["involvedObject"]["name"] == "orders" for e in events), "the operator posted Events"
        metrics = operator.metrics()
        assert 'streampipe_operator_redis_up{namespace="' in metrics
        # The peering record in the watched namespace carries this operator's keep-alive.
        peering = kubectl.json("get", "kopfpeering", release.fullname, "-n", ns)
        assert peering.get("status"), "kopf keeps its peering record alive with the chart's RBAC"

        # Deletion with deletionPolicy Delete: the finalizer runs, groups and stream go.
        kubectl("delete", "streampipeline", "orders", "-n", ns, "--wait=false")
        eventually(
            lambda: kubectl("get", "streampipeline", "orders", "-n", ns, check=False).returncode != 0,
            f"the finalizer released the pipeline\n{operator.tail()}",
        )
        with valkey.client() as redis_client:
            assert not redis_client.exists("{orders}:events")
        assert refused_calls(operator.tail(200_000)) == []
    finally:
        operator.stop()


def test_two_peered_operators_one_acts(
    kubectl: Kubectl,
    release: Release,
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    """Two replicas of the chart's operator (same ServiceAccount, same KopfPeering): both keep alive,
    one acts; when it stops, the other takes over and reconciles."""
    valkey = server_factory("valkey9", password=PASSWORD)
    ns = release.watched
    kubectl(
        "create",
        "secret",
        "generic",
        "redis-creds",
        "-n",
        ns,
        f"--from-literal=password={PASSWORD}",
        check=False,
    )
    peering = ("--peering", release.fullname)
    first = Operator(release.kubeconfig, ns, tmp_path / "first.log", (*peering, "--priority", "200")).start()
    second = Operator(
        release.kubeconfig, ns, tmp_path / "second.log", (*peering, "--priority", "100")
    ).start()
    try:

        def peers() -> int:
            status = kubectl.json("get", "kopfpeering", release.fullname, "-n", ns).get("status") or {}
            return len(status)

        eventually(lambda: peers() >= 2, "both operators keep alive in the KopfPeering")
        # kopf starts a peered operator paused; the highest priority resumes, the other stays paused.
        eventually(lambda: "Resuming operations" in first.tail(200_000), f"the first resumes\n{first.tail()}")
        kubectl.apply(pipeline("payments", valkey, ["ledger"]), "-n", ns)
        eventually(
            lambda: kubectl("get", "deployment", "payments-ledger", "-n", ns, check=False).returncode == 0,
            f"the active operator reconciles\n{first.tail()}",
        )
        assert "Resuming operations" not in second.tail(200_000), "the lower-priority replica stands by"
        assert "payments" not in second.tail(200_000), "the paused replica did not touch the pipeline"
        first.stop()
        # A clean stop removes the first's keep-alive at once: the stand-by resumes and takes over.
        eventually(
            lambda: "Resuming operations" in second.tail(200_000), f"the stand-by resumes\n{second.tail()}"
        )
        kubectl.apply(pipeline("refunds", valkey, ["ledger"]), "-n", ns)
        eventually(
            lambda: kubectl("get", "deployment", "refunds-ledger", "-n", ns, check=False).returncode == 0,
            f"the stand-by takes over\n{second.tail()}",
        )
        for name in ("payments", "refunds"):
            kubectl("delete", "streampipeline", name, "-n", ns, "--wait=false")
        eventually(
            lambda: not kubectl.json("get", "streampipelines", "-n", ns)["items"],
            f"pipelines released\n{second.tail()}",
        )
        assert refused_calls(first.tail(200_000) + second.tail(200_000)) == []
    finally:
        second.stop()
        first.stop()


def test_the_operator_cannot_act_outside_its_namespace(
    kubectl: Kubectl, release: Release, tmp_path: Path
) -> None:
    """A pipeline in a namespace the release does not watch is never touched, and the token cannot
    reach it even when asked directly."""
    other = unique_name("chart-e2e-other")
    kubectl("create", "namespace", other)
    try:
        kubectl.apply(
            {
                "apiVersion": "streampipe.dev/v1alpha1",
                "kind": "StreamPipeline",
                "metadata": {"name": "elsewhere"},
                "spec": {
                    "redis": {"url": "redis://127.0.0.1:1/0"},
                    "stream": "{elsewhere}:events",
                    "groups": [{"name": "g", "handler": "a:b", "image": "i:1"}],
                },
            },
            "-n",
            other,
        )
        operator = Operator(release.kubeconfig, release.watched, tmp_path / "operator.log").start()
        try:
            as_operator = Kubectl(release.kubeconfig)
            done = as_operator(
                "patch", "streampipeline", "elsewhere", "-n", other, "--type=merge", "-p",
                '{"metadata":{"finalizers":["streampipe.dev/finalizer"]}}', check=False,
            )  # fmt: skip
            assert done.returncode != 0
            assert "forbidden" in done.stderr.lower()
            # Asked to watch it anyway, the same token is refused by the API server, and the operator
            # says so in its log; the pipeline there stays untouched.
            intruder = Operator(release.kubeconfig, other, tmp_path / "intruder.log").start()
            try:
                eventually(lambda: refused_calls(intruder.tail(200_000)), "the intruder's refusals logged")
            finally:
                intruder.stop()
            obj = kubectl.json("get", "streampipeline", "elsewhere", "-n", other)
            assert "finalizers" not in obj["metadata"]
            assert "status" not in obj
            assert operator.healthy()
        finally:
            operator.stop()
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_release_objects_the_operator_needs_are_all_from_the_chart(
    kubectl: Kubectl, release: Release
) -> None:
    """Nothing but the chart granted the ServiceAccount its rights: its only bindings are the release's."""
    bindings = kubectl.json("get", "rolebindings,clusterrolebindings", "-A")["items"]
    subject = {"kind": "ServiceAccount", "name": release.fullname, "namespace": release.namespace}
    bound = [
        b["metadata"]["name"]
        for b in bindings
        if any({k: s.get(k) for k in subject} == subject for s in b.get("subjects") or [])
    ]
    assert bound == [release.fullname]


def test_default_all_namespaces_install_is_sufficient(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The chart's defaults (watch every namespace: a ClusterRole) on a control plane of this test's own,
    so the operator sees no other test's pipelines: it reconciles a pipeline in a namespace created
    after it started, with no refused call."""
    valkey = server_factory("valkey9", password=PASSWORD)
    with running_control_plane(tmp_path / "controlplane") as plane:
        admin = Kubectl(plane.kubeconfig)
        admin("create", "namespace", "streampipe-system")
        helm_cli(plane, "install", "streampipe", str(CHART), "--namespace", "streampipe-system")
        token = admin("create", "token", "streampipe", "-n", "streampipe-system").stdout.strip()
        kubeconfig = plane.kubeconfig_for_token(
            token, tmp_path / "operator.kubeconfig", user="system:serviceaccount:streampipe-system:streampipe"
        )
        operator = Operator(kubeconfig, "", tmp_path / "operator.log", ("--standalone",), all_namespaces=True)
        operator.start()
        try:
            admin("create", "namespace", "shop")
            admin(
                "create",
                "secret",
                "generic",
                "redis-creds",
                "-n",
                "shop",
                f"--from-literal=password={PASSWORD}",
            )
            admin.apply(pipeline("orders", valkey, ["billing"]), "-n", "shop")
            eventually(
                lambda: (
                    admin("get", "deployment", "orders-billing", "-n", "shop", check=False).returncode == 0
                ),
                f"Deployment orders-billing\n{operator.tail()}",
            )
            eventually(
                lambda: conditions(admin, "shop", "orders").get("RedisReachable", {}).get("status") == "True",
                f"RedisReachable=True\n{operator.tail()}",
            )
            with valkey.client() as redis_client:
                assert [g["name"] for g in redis_client.xinfo_groups("{orders}:events")] == ["billing"]
            admin("delete", "streampipeline", "orders", "-n", "shop", "--wait=false")
            eventually(
                lambda: admin("get", "streampipeline", "orders", "-n", "shop", check=False).returncode != 0,
                f"the finalizer released the pipeline\n{operator.tail()}",
            )
            assert refused_calls(operator.tail(200_000)) == []
        finally:
            operator.stop()
