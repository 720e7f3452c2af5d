"""A real one-node Kubernetes cluster for tests: the test API server and etcd, kube-controller-manager,
kube-scheduler, a kubelet on a private containerd (CRI, runc), kube-proxy (iptables), a cluster DNS and
a CNI bridge network, all on this machine.

The Kubernetes components are the upstream ones, built from Go modules (tests/controlplane: the
``streampipe-controlplane`` and ``streampipe-node`` binaries); the images the pods run are ours, built
from the Dockerfiles by ``make images`` and loaded into the node's containerd.

Networking (the workplace's rule: pod traffic stays on this machine):

- the pods live on a Linux bridge ``BRIDGE`` with the subnet ``POD_CIDR``; the node's own address on it,
  ``NODE_IP``, is where the API server, the cluster DNS, the kubelet and the tests' Redis servers listen;
- a pod's only routes are its subnet and the Service range (no default route), and iptables drops
  anything forwarded from or to the pod subnet that does not stay on the bridge, so nothing a pod sends
  can leave the host; nothing is masqueraded;
- Service cluster IPs are kube-proxy's (iptables mode); the ``kubernetes`` Service's endpoint is
  ``NODE_IP`` (the API server's lease reconciler), so in-cluster clients reach the API as on any cluster.

Root is needed (bridge, iptables, containerd, kubelet). Everything the cluster writes lives under its
workdir and is removed (mounts unmounted) by ``stop()``, which also removes its iptables rules, the
bridge and kube-proxy's chains, and puts ``net.ipv4.ip_forward`` back as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from hack.images import Role

from tests.support.containerd import Containerd, import_built_images, mounts_under
from tests.support.controlplane import ControlPlane, ControlPlaneError, Kubectl
from tests.support.servers import ROOT, TOOL_BIN, ServerProcess, free_port, start_server

NODE_BINARY = TOOL_BIN / "streampipe-node"
NODE_NAME = "streampipe-node"
BRIDGE = "spbr0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
CLUSTER_DOMAIN = "cluster.local"
# Tags the iptables rules this module adds, so stop() removes exactly those.
RULE_COMMENT = "streampipe-test-cluster"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# One cluster at a time per machine: its bridge, its address and kube-proxy's iptables chains are the
# host's. A second test session waits here for the first one's cluster to stop.
LOCK_FILE = Path("/run/lock/streampipe-test-cluster.lock")
# Chains the kubelet adds to the host's tables (its iptables canary and the localnet firewall).
KUBELET_CHAINS = {
    "filter": ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY"],
    "nat": ["KUBE-KUBELET-CANARY"],
    "mangle": ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"],
}


NODE_IMAGES: tuple[Role, ...] = ("pause", "operator", "worker", "team", "quickstart")


class ClusterError(RuntimeError):
    pass


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise ClusterError(
            f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
        )
    return done


def _forward_rules() -> list[list[str]]:
    """FORWARD rules (without -A/-D): pod traffic may only be forwarded bridge to bridge."""
    tag = ["-m", "comment", "--comment", RULE_COMMENT]
    return [
        ["-s", POD_CIDR, "!", "-o", BRIDGE, *tag, "-j", "DROP"],
        ["-d", POD_CIDR, "!", "-i", BRIDGE, *tag, "-j", "DROP"],
    ]


@dataclass
class Component:
    """One process of the cluster, logging to ``<workdir>/logs/<name>.log``."""

    name: str
    args: Sequence[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        with (logdir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(list(self.args), stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


@dataclass
class Cluster:
    """``Cluster(workdir).start()`` ... ``stop()``; ``serve`` (tests/cluster/serve) runs one by hand."""

    workdir: Path
    control_plane: ControlPlane = field(init=False)
    containerd: Containerd = field(init=False)
    components: dict[str, Component] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    startup_seconds: float = 0.0
    lock_timeout: float = 1800
    _lock: TextIO | None = field(default=None, repr=False)
    _ip_forward_before: str | None = field(default=None, repr=False)
    _network_up: bool = field(default=False, repr=False)

    node_ip: str = NODE_IP
    node_name: str = NODE_NAME

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.control_plane = ControlPlane(self.workdir / "controlplane", address=NODE_IP, node_name=NODE_NAME)
        self.containerd = Containerd(
            self.workdir / "containerd",
            cni_bin_dir=Path("/usr/lib/cni"),
            cni_conf_dir=self.workdir / "cni" / "net.d",
        )

    # -- what tests use -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.kubeconfig)

    @property
    def env(self) -> dict[str, str]:
        """The environment for helm and kubectl subprocesses: the admin kubeconfig, the pinned tools."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(TOOL_BIN), str(ROOT / ".venv" / "bin"), env.get("PATH", "")])
        # helm keeps its cache and config under HOME; keep them with the cluster.
        env["HELM_CACHE_HOME"] = str(self.workdir / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        return env

    @property
    def logdir(self) -> Path:
        return self.workdir / "logs"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path})"

    # -- start ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> Cluster:
        if os.geteuid() != 0:
            raise ClusterError("the test cluster needs root (bridge, iptables, containerd, kubelet)")
        if not NODE_BINARY.exists():
            raise ClusterError(f"{NODE_BINARY} missing: run `make controlplane` (make test does it)")
        self._acquire_lock()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._network_setup()
            self.control_plane.start()
            self.containerd.start()
            # Sandboxes need the pause image before the kubelet asks for one. The base image is only
            # a build input: no pod runs it.
            loaded = import_built_images(self.containerd, roles=NODE_IMAGES)
            self.images = {role: image.tags[0] for role, image in loaded.items()}
            self._start_components()
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _acquire_lock(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_FILE.open("a")
        deadline = time.monotonic() + self.lock_timeout
        waiting = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    print(
                        f"waiting for another test cluster on this machine to stop ({LOCK_FILE})",
                        file=sys.stderr,
                    )
                    waiting = True
                if time.monotonic() > deadline:
                    lock.close()
                    raise ClusterError(
                        f"another test cluster held {LOCK_FILE} for {self.lock_timeout:.0f} s"
                    ) from None
                time.sleep(1)
        self._lock = lock

    def _network_setup(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            raise ClusterError(
                f"network interface {BRIDGE} exists: another test cluster runs on this machine (or one "
                f"was killed before it could clean up: `ip link delete {BRIDGE}` once none runs)"
            )
        self._network_up = True
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # The bridge plugin turns forwarding on (isGateway); it is put back on stop().
        self._ip_forward_before = IP_FORWARD.read_text().strip()
        for rule in _forward_rules():
            _run("iptables", "-I", "FORWARD", *rule)
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "1.0.0",
            "name": "streampipe",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        # No default route: a pod reaches its subnet and the Services, nothing else.
                        "routes": [{"dst": SERVICE_CIDR}],
                    },
                }
            ],
        }
        (conf_dir / "10-streampipe.conflist").write_text(json.dumps(network, indent=2))

    def _start_components(self) -> None:
        components = self.control_plane.components_dir
        ca = str(self.control_plane.ca_file)
        node = str(NODE_BINARY)
        kubelet_dir = self.workdir / "kubelet"
        kubelet_config = self._write_kubelet_config(kubelet_dir)
        self.components = {
            "cluster-dns": Component(
                "cluster-dns",
                [node, "cluster-dns", "--kubeconfig", str(components / "cluster-dns.kubeconfig"),
                 "--listen", f"{NODE_IP}:53", "--cluster-domain", CLUSTER_DOMAIN],
            ),
            "kube-controller-manager": Component(
                "kube-controller-manager",
                [node, "kube-controller-manager",
                 "--kubeconfig", str(components / "kube-controller-manager.kubeconfig"),
                 # One client per controller, with that controller's bootstrap role, as kubeadm does.
                 "--use-service-account-credentials",
                 "--root-ca-file", ca,
                 "--service-account-private-key-file", str(self.control_plane.data_dir / "certs" / "sa.key"),
                 "--leader-elect=false", "--secure-port=0", "--allocate-node-cidrs=false",
                 "--cluster-cidr", POD_CIDR, "--service-cluster-ip-range", SERVICE_CIDR],
            ),
            "kube-scheduler": Component(
                "kube-scheduler",
                [node, "kube-scheduler", "--kubeconfig", str(components / "kube-scheduler.kubeconfig"),
                 "--leader-elect=false", "--secure-port=0"],
            ),
            "kube-proxy": Component(
                "kube-proxy",
                [node, "kube-proxy", "--kubeconfig", str(components / "kube-proxy.kubeconfig"),
                 "--hostname-override", NODE_NAME, "--proxy-mode", "iptables",
                 "--cluster-cidr", POD_CIDR,
                 # Leave the host's conntrack settings alone.
                 "--conntrack-max-per-core=0", "--conntrack-min=0",
                 "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
                 # NodePorts only on the node's bridge address, never on the host's own interfaces.
                 f"--nodeport-addresses={NODE_IP}/32",
                 f"--healthz-bind-address=127.0.0.1:{free_port()}",
                 f"--metrics-bind-address=127.0.0.1:{free_port()}"],
            ),
            "kubelet": Component(
                "kubelet",
                [node, "kubelet", "--config", str(kubelet_config),
                 "--kubeconfig", str(components / "kubelet.kubeconfig"),
                 "--root-dir", str(kubelet_dir / "root"), "--cert-dir", str(kubelet_dir / "pki"),
                 "--hostname-override", NODE_NAME, "--node-ip", NODE_IP],
            ),
        }  # fmt: skip
        for component in self.components.values():
            component.start(self.logdir)

    def _write_kubelet_config(self, kubelet_dir: Path) -> Path:
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The kubelet's API listens on the node's bridge address only; the API server reaches it
            # there for logs and exec. No client certificates exist in this test cluster, so it
            # trusts its callers (the API server, and pods on the bridge: all of them ours).
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd.socket}",
            "imageServiceEndpoint": f"unix://{self.containerd.socket}",
            # This machine mounts cgroup v1 (hybrid), which kubelet 1.35 refuses unless told.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            "podLogsDir": str(kubelet_dir / "pod-logs"),
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            # Pods get the cluster DNS and its search path only, not the host's resolver settings.
            "resolvConf": "",
            "volumePluginDir": str(kubelet_dir / "volume-plugins"),
            "serializeImagePulls": False,
            # The images are loaded, not pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "nodeStatusUpdateFrequency": "5s",
        }
        path = kubelet_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _wait_ready(self, deadline: float) -> None:
        kubectl = self.kubectl

        def check_components() -> None:
            for component in self.components.values():
                if not component.running():
                    raise ClusterError(f"{component.name} exited:\n{self.log_tail(component.name)}")

        def wait(what: str, ready: Any) -> None:
            while not ready():
                check_components()
                if time.monotonic() > deadline:
                    raise ClusterError(f"cluster not ready: {what}\n{self.log_tail('kubelet')}")
                time.sleep(0.5)

        def node_ready() -> bool:
            done = kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if done.returncode != 0:
                return False
            conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        def has(*args: str) -> bool:
            return kubectl("get", *args, check=False).returncode == 0

        wait(f"node {NODE_NAME} Ready", node_ready)
        # Pods need their namespace's "default" ServiceAccount and the root CA ConfigMap, both made by
        # the controller-manager; the "kubernetes" Service's endpoint by the API server.
        wait("ServiceAccount default/default", lambda: has("serviceaccount", "default", "-n", "default"))
        wait(
            "ConfigMap default/kube-root-ca.crt",
            lambda: has("configmap", "kube-root-ca.crt", "-n", "default"),
        )

    # -- stop -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every pod, then every component, and remove what the cluster added to the host."""
        controllers = [self.components.get(name) for name in ("kube-controller-manager", "kube-scheduler")]
        for component in controllers:
            if component is not None:
                component.stop()
        kubelet = self.components.get("kubelet")
        if kubelet is not None and kubelet.running() and self.control_plane.proc is not None:
            self._delete_all_pods()
        for name in ("kubelet", "kube-proxy", "cluster-dns"):
            component = self.components.get(name)
            if component is not None:
                component.stop()
        with contextlib.suppress(Exception):
            self.containerd.stop()
        with contextlib.suppress(ControlPlaneError):
            self.control_plane.stop()
        if "kube-proxy" in self.components:
            # kube-proxy's own clean-up of its iptables chains.
            _run(str(NODE_BINARY), "kube-proxy", "--cleanup", check=False)
        if "kubelet" in self.components:
            remove_kubelet_chains()
        if self._network_up:
            for rule in _forward_rules():
                _run("iptables", "-D", "FORWARD", *rule, check=False)
            _run("ip", "link", "delete", BRIDGE, check=False)
            if self._ip_forward_before is not None:
                IP_FORWARD.write_text(self._ip_forward_before + "\n")
            self._network_up = False
        unmount_below(self.workdir)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _delete_all_pods(self, timeout: float = 60) -> None:
        """Let the kubelet stop every pod (containers, sandboxes, their network namespaces) while it
        still runs; pods deleted behind its back would leave their sandboxes to containerd."""
        kubectl = self.kubectl
        kubectl("delete", "pods", "--all", "-A", "--grace-period=2", "--wait=false", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = kubectl("get", "pods", "-A", "-o", "json", check=False)
            if done.returncode != 0 or not json.loads(done.stdout)["items"]:
                return
            time.sleep(0.5)


def remove_kubelet_chains() -> None:
    """Remove the chains the kubelet added to the host's iptables and ip6tables, and the jumps to them."""
    for tool in ("iptables", "ip6tables"):
        for table, chains in KUBELET_CHAINS.items():
            for chain in chains:
                for builtin in ("INPUT", "OUTPUT"):
                    while _run(tool, "-t", table, "-D", builtin, "-j", chain, check=False).returncode == 0:
                        pass
                _run(tool, "-t", table, "-F", chain, check=False)
                _run(tool, "-t", table, "-X", chain, check=False)


def unmount_below(path: Path) -> None:
    """Unmount every mount point at or below ``path`` (deepest first), e.g. the kubelet's volumes."""
    for point in mounts_under(path):
        _run("umount", "-l", str(point), check=False)


def expose_on_node(kubectl: Kubectl, namespace: str, name: str, port: int, target_port: int) -> None:
    """A Service ``name`` (port ``port``) whose one endpoint is ``NODE_IP:target_port``: pods reach a
    server the test runs on the node as ``name.namespace.svc:port``, through cluster DNS and
    kube-proxy, as they would reach a Redis Service on any cluster."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "redis", "port": port, "targetPort": target_port, "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-node",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "redis", "port": target_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
    }
    kubectl.apply([service, endpoints])


def start_node_valkey(workdir: Path, extra_args: Sequence[str] = ()) -> ServerProcess:
    """A Valkey 9.1 server bound to the node's bridge address: reachable from pods and from the test.
    Protected mode would refuse every client not on loopback; the bridge address is this machine's own
    and the pod network reaches nothing else."""
    return start_server("valkey9", workdir, ["--protected-mode", "no", *extra_args], host=NODE_IP)


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[Cluster]:
    cluster = Cluster(workdir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def serve(workdir: Path, out: TextIO) -> None:
    """Run a cluster in the foreground until SIGINT/SIGTERM (tests/cluster/serve)."""
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A fresh cluster each time: what an earlier one left (certificates, pods' volumes) goes first.
    if workdir.exists():
        unmount_below(workdir)
        shutil.rmtree(workdir)
    print(f"starting a one-node cluster in {workdir} (about a minute)...", file=out, flush=True)
    with running_cluster(workdir) as cluster:
        print(f"ready in {cluster.startup_seconds:.1f} s", file=out)
        print(f"kubeconfig: {cluster.kubeconfig}", file=out)
        print(
            f"try:        {TOOL_BIN / 'kubectl'} --kubeconfig {cluster.kubeconfig} get nodes,pods -A",
            file=out,
        )
        print(f"images:     {', '.join(sorted(cluster.images.values()))}", file=out)
        print(f"logs:       {cluster.logdir}", file=out)
        print("stop:       Ctrl-C", file=out, flush=True)
        while not stop:
            for component in cluster.components.values():
                if not component.running():
                    print(f"{component.name} exited; stopping:\n{cluster.log_tail(component.name)}", file=out)
                    stop = True
            time.sleep(0.5)
    print("stopped", file=out, flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the one-node test cluster in the foreground.")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "cluster")
    serve(parser.parse_args().workdir, sys.stdout)
