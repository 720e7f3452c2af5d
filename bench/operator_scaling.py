"""The operator on a real control plane: scaling reaction, 200 pipelines to Ready, idle cost.

A real kube-apiserver + etcd (tests/controlplane, no kubelet: no pod runs, the operator's decisions
are read from the Deployments it writes), a real Valkey, and the operator as users run it:
``streampipe operator run --kubeconfig ... --namespace ...``.

- Reaction: a pipeline whose group scales at ``pollInterval: 1s``, 1000 backlog per replica, no
  workers. Each trial adds entries in one pipelined write so that the backlog crosses the next
  replica's threshold at a known instant (the time the write is sent), then polls the Deployment's
  ``spec.replicas`` every 20 ms until it changes. Trials start at random offsets, so the operator's
  poll phase is sampled uniformly: the expected reaction is about half a poll interval plus the
  operator's own work, the worst about one interval plus it.
- Growth, at each size N (10, 100, 1000): a fresh operator watching a namespace of its own; N
  pipelines (default spec: one group, ``pollInterval`` 5s) applied with one ``kubectl apply``; the
  time from the apply until every one reports ``Ready=True`` and the operator's CPU meanwhile. Then,
  with nothing happening, over a window: the operator's CPU share (one core = 100 %), RSS, the
  Redis connections it holds (``INFO clients`` against the count before it started) and the API
  requests it makes per minute, writes and reads apart (the API server's own
  ``apiserver_request_total`` without Leases, which only the API server itself renews here; nothing
  else talks to this API server in the window).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.support.controlplane import BINARY as CONTROLPLANE_BINARY
from tests.support.controlplane import ControlPlane, Kubectl
from tests.support.servers import free_port

import redis
from harness import ROOT, BenchServer, cpu_seconds, progress, rss_bytes

CRD_FILE = ROOT / "crds" / "streampipeline.yaml"
STREAMPIPE = Path(sys.executable).with_name("streampipe")
API_VERSION = "streampipe.dev/v1alpha1"
NAMESPACE = "bench"


@dataclass
class OperatorResult:
    """What the operator benchmark measured (seconds, percent of one core, MiB)."""

    poll_interval_s: float
    reaction_s: list[float] = field(default_factory=list)
    pipelines: int = 0
    apply_s: float | None = None  # kubectl apply of all of them
    all_ready_s: float | None = None  # from the start of the apply until the last is Ready
    ready_curve: list[tuple[float, int]] = field(default_factory=list)  # (seconds, Ready count)
    idle_window_s: float | None = None
    idle_cpu_percent: float | None = None
    idle_rss_mb: float | None = None
    ramp_cpu_percent: float | None = None  # while the N pipelines were being made Ready
    control_plane_start_s: float | None = None
    growth: list[ScalePoint] = field(default_factory=list)  # one point per size, smallest first


@dataclass
class ScalePoint:
    """The operator with ``pipelines`` StreamPipelines: making them Ready, then idle."""

    pipelines: int
    apply_s: float
    all_ready_s: float
    ramp_cpu_percent: float
    idle_window_s: float
    idle_cpu_percent: float
    idle_rss_mb: float
    redis_connections: int  # held by the operator while idle
    api_writes_per_min: float  # POST/PUT/PATCH/DELETE while idle
    api_reads_per_min: float  # GET/LIST (open watches are not counted again)


def available() -> str | None:
    """Why the operator benchmark cannot run here, or None."""
    if not CONTROLPLANE_BINARY.exists():
        return f"{CONTROLPLANE_BINARY} missing (make controlplane builds it)"
    if not STREAMPIPE.exists():
        return f"{STREAMPIPE} missing (make setup installs it)"
    return None


def group_spec(name: str, **scaling: Any) -> dict[str, Any]:
    group: dict[str, Any] = {
        "name": name,
        "handler": "shop_handlers.billing:router",
        "image": "registry.example.com/shop/billing-worker:1.0.0",
    }
    if scaling:
        group["scaling"] = scaling
    return group


def pipeline(
    name: str, url: str, stream: str, groups: list[dict[str, Any]], namespace: str = NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"redis": {"url": url}, "stream": stream, "groups": groups},
    }


class Api:
    """Minimal reads through the official client with the admin kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        loader: Any = config
        loader.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        self.api_client: Any = client.ApiClient(configuration)
        self.apps: Any = client.AppsV1Api(self.api_client)
        self.custom: Any = client.CustomObjectsApi(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def replicas(self, name: str) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            reply = self.apps.read_namespaced_deployment(name, NAMESPACE, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return int(json.loads(reply.data)["spec"].get("replicas", 1))

    def deployment_for(self, pipeline: str) -> str | None:
        reply = self.apps.list_namespaced_deployment(
            NAMESPACE, label_selector=f"streampipe.dev/pipeline={pipeline}", _preload_content=False
        )
        items = json.loads(reply.data)["items"]
        return str(items[0]["metadata"]["name"]) if items else None

    def ready_count(self, prefix: str, namespace: str = NAMESPACE) -> int:
        """How many StreamPipelines named ``prefix...`` have Ready=True."""
        reply = self.custom.list_namespaced_custom_object(
            "streampipe.dev", "v1alpha1", namespace, "streampipelines", _preload_content=False
        )
        count = 0
        for item in json.loads(reply.data)["items"]:
            if not item["metadata"]["name"].startswith(prefix):
                continue
            for condition in (item.get("status") or {}).get("conditions") or []:
                if condition.get("type") == "Ready" and condition.get("status") == "True":
                    count += 1
        return count


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path, logfile: Path, namespace: str = NAMESPACE
) -> Iterator[subprocess.Popen[bytes]]:
    liveness = free_port()
    command = [
        str(STREAMPIPE), "operator", "run", "--kubeconfig", str(kubeconfig), "--namespace", namespace,
        "--metrics-port", "0", "--liveness", f"http://127.0.0.1:{liveness}/healthz", "--standalone",
        "--log-format", "json",
    ]  # fmt: skip
    with logfile.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited ({proc.returncode}): {logfile.read_text()[-3000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=1) as reply,
            ):
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator not live after 60 s: {logfile.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait(probe: Any, within: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {within:.0f}s waiting for {what}")
        time.sleep(every)


def reaction_trials(api: Api, kubectl: Kubectl, server: BenchServer, trials: int) -> list[float]:
    """Seconds from the backlog crossing a replica threshold to the Deployment's new replica count."""
    stream = "{react}:events"
    group = group_spec(
        "billing",
        minReplicas=0,
        maxReplicas=trials + 1,
        backlogPerReplica=1000,
        pollInterval="1s",
        scaleDownStabilization="1h",
    )
    kubectl.apply(pipeline("react", server.url, stream, [group]))
    name = _wait(lambda: api.deployment_for("react"), 60, "the react pipeline's Deployment")
    _wait(lambda: api.replicas(name) == 0, 60, "0 replicas before the first trial")
    client = redis.Redis.from_url(server.url)
    reactions: list[float] = []
    added = 0
    rng = random.Random(7)
    for trial in range(1, trials + 1):
        time.sleep(rng.uniform(0.3, 1.3))
        # Backlog goes to trial * 1000 - 500: just past the threshold of `trial` replicas.
        target = trial * 1000 - 500
        pipe = client.pipeline(transaction=False)
        for _ in range(target - added):
            pipe.xadd(stream, {"type": "order.created", "version": "1", "payload": "{}"})
        crossed = time.perf_counter()
        pipe.execute()
        added = target
        _wait(lambda t=trial: api.replicas(name) == t, 30, f"{trial} replicas", every=0.02)
        reactions.append(time.perf_counter() - crossed)
        progress(f"  operator reaction trial {trial}/{trials}: {reactions[-1]:.2f}s")
    client.close()
    return reactions


def many_ready(
    api: Api, kubectl: Kubectl, server: BenchServer, count: int, *, operator_pid: int, namespace: str
) -> tuple[float, float, list[tuple[float, int]], float]:
    """Apply ``count`` default pipelines at once; (apply s, all Ready s, curve, operator CPU %)."""
    manifests = [
        pipeline(
            f"p{i:04d}", server.url, f"{{{namespace}-p{i:04d}}}:events", [group_spec("billing")], namespace
        )
        for i in range(count)
    ]
    text = yaml.safe_dump_all(manifests)
    cpu0 = cpu_seconds(operator_pid)
    started = time.perf_counter()
    kubectl("apply", "-f", "-", input=text, timeout=300)
    applied = time.perf_counter() - started
    curve: list[tuple[float, int]] = [(0.0, 0)]
    while True:
        ready = api.ready_count("p", namespace)
        elapsed = time.perf_counter() - started
        curve.append((round(elapsed, 2), ready))
        if ready >= count:
            break
        if elapsed > 600:
            raise RuntimeError(f"only {ready}/{count} pipelines Ready after 600 s")
        time.sleep(0.25)
    cpu_percent = (cpu_seconds(operator_pid) - cpu0) / elapsed * 100
    # Keep the curve short: one point per second is plenty for the plot.
    thinned: list[tuple[float, int]] = []
    for point in curve:
        if not thinned or point[0] - thinned[-1][0] >= 1.0 or point is curve[-1]:
            thinned.append(point)
    return applied, elapsed, thinned, cpu_percent


def api_requests(kubectl: Kubectl) -> tuple[float, float]:
    """(writes, reads) the API server has served so far, from its ``apiserver_request_total``; not
    counted: Leases, which only the API server itself renews here (its identity lease, every 10 s)."""
    writes = reads = 0.0
    for line in kubectl("get", "--raw", "/metrics", timeout=60).stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        text, value = line.rsplit(" ", 1)
        labels = dict(part.split("=", 1) for part in text[text.index("{") + 1 : -1].split(","))
        verb = labels.get("verb", "").strip('"')
        if labels.get("resource", "").strip('"') == "leases":
            continue
        if verb in {"POST", "PUT", "PATCH", "DELETE", "APPLY"}:
            writes += float(value)
        elif verb in {"GET", "LIST"}:
            reads += float(value)
    return writes, reads


def redis_clients(server: BenchServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("clients")["connected_clients"]) - 1  # not this one
    finally:
        client.close()


def growth_point(
    api: Api, kubectl: Kubectl, server: BenchServer, count: int, *, workdir: Path, idle_window: float
) -> tuple[ScalePoint, list[tuple[float, int]]]:
    """A fresh operator on a namespace of its own with ``count`` pipelines: Ready, then idle."""
    namespace = f"scale-{count}"
    kubectl("create", "namespace", namespace)
    before = redis_clients(server)
    with operator_process(kubectl.kubeconfig, workdir / f"operator-{count}.log", namespace) as operator:
        progress(f"  operator: applying {count} StreamPipelines in {namespace}")
        applied, ready, curve, ramp_cpu = many_ready(
            api, kubectl, server, count, operator_pid=operator.pid, namespace=namespace
        )
        progress(f"  operator: {count} Ready after {ready:.1f}s; idle for {idle_window:.0f}s")
        time.sleep(min(5.0, idle_window))  # let the last status writes settle
        writes0, reads0 = api_requests(kubectl)
        cpu0 = cpu_seconds(operator.pid)
        time.sleep(idle_window)
        cpu = cpu_seconds(operator.pid) - cpu0
        writes1, reads1 = api_requests(kubectl)
        per_minute = 60.0 / idle_window
        point = ScalePoint(
            pipelines=count,
            apply_s=round(applied, 2),
            all_ready_s=round(ready, 2),
            ramp_cpu_percent=round(ramp_cpu, 1),
            idle_window_s=idle_window,
            idle_cpu_percent=round(cpu / idle_window * 100, 1),
            idle_rss_mb=round(rss_bytes(operator.pid) / 2**20, 1),
            redis_connections=redis_clients(server) - before,
            # The second metrics read itself is one GET; take it off.
            api_writes_per_min=round((writes1 - writes0) * per_minute, 1),
            api_reads_per_min=round(max(0.0, reads1 - reads0 - 1) * per_minute, 1),
        )
    progress(
        f"  operator at {count}: idle CPU {point.idle_cpu_percent:.1f} %, RSS {point.idle_rss_mb:.0f} MiB, "
        f"{point.redis_connections} Redis connections, {point.api_writes_per_min:.0f} API writes/min"
    )
    return point, curve


def run(
    server: BenchServer,
    *,
    trials: int = 8,
    sizes: tuple[int, ...] = (10, 100, 1000),
    idle_window: float = 30.0,
) -> OperatorResult:
    result = OperatorResult(poll_interval_s=1.0, pipelines=max(sizes))
    with tempfile.TemporaryDirectory(prefix="streampipe-bench-operator-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "controlplane").start()
        try:
            result.control_plane_start_s = round(plane.startup_seconds, 2)
            kubectl = Kubectl(plane.kubeconfig)
            kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
            kubectl(
                "wait", "--for=condition=Established", "crd/streampipelines.streampipe.dev", "--timeout=60s"
            )
            _wait(lambda: kubectl("get", "streampipelines", "-A", check=False).returncode == 0, 30, "the CRD")
            kubectl("create", "namespace", NAMESPACE)
            api = Api(plane.kubeconfig)
            try:
                with operator_process(plane.kubeconfig, workdir / "operator.log"):
                    progress("  operator: live; scaling reaction trials at pollInterval 1s")
                    result.reaction_s = [round(r, 3) for r in reaction_trials(api, kubectl, server, trials)]
                for size in sorted(sizes):
                    point, curve = growth_point(
                        api, kubectl, server, size, workdir=workdir, idle_window=idle_window
                    )
                    result.growth.append(point)
                    if size == result.pipelines:
                        result.apply_s, result.all_ready_s = point.apply_s, point.all_ready_s
                        result.ready_curve, result.ramp_cpu_percent = curve, point.ramp_cpu_percent
                        result.idle_window_s = point.idle_window_s
                        result.idle_cpu_percent = point.idle_cpu_percent
                        result.idle_rss_mb = point.idle_rss_mb
            finally:
                api.close()
        finally:
            plane.stop()
    return result
