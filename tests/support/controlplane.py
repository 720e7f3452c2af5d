"""A real Kubernetes control plane for tests: kube-apiserver + etcd, built from Go in tests/controlplane/.

There is no kubelet, scheduler or controller-manager: nothing runs Pods, garbage-collects owned objects
or finishes namespace deletion. The API server itself (validation, CRDs, CEL, admission, RBAC, watches,
status subresources) is the real one. Our own worker Deployments are run by the test pod runner.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import TOOL_BIN

# ``make compat`` points this at a build for another Kubernetes release
# (tests/controlplane/compat/build.sh); unset, it is the pinned one.
BINARY = Path(os.environ.get("STREAMPIPE_CONTROLPLANE_BIN") or TOOL_BIN / "streampipe-controlplane")
KUBECTL = TOOL_BIN / "kubectl"
READY_LINE = re.compile(r"^ready kubeconfig=(?P<kubeconfig>\S+) server=(?P<server>\S+)")


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class ControlPlane:
    """One streampipe-controlplane process, with its etcd data, certificates and tokens in
    ``workdir/data``. ``port`` 0 lets the first start pick a free one; it is then kept, so ``restart()``
    (and a ``start()`` after ``stop()``) comes back on the same address with the same CA, admin token
    and service-account signing key: the kubeconfig and ServiceAccount tokens from before still work."""

    workdir: Path
    port: int = 0
    # A whole cluster's API server (tests/support/cluster.py): listens on ``address`` (the node's
    # address on the pod network) and writes a kubeconfig per component into ``components_dir``.
    address: str = "127.0.0.1"
    node_name: str = ""
    kubeconfig: Path = field(init=False)
    server: str = field(init=False, default="")
    proc: subprocess.Popen[str] | None = field(init=False, default=None, repr=False)
    startup_seconds: float = field(init=False, default=0.0)
    stop_seconds: float = field(init=False, default=0.0)  # the last stop: SIGTERM to exit

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    @property
    def logfile(self) -> Path:
        return self.workdir / "controlplane.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def components_dir(self) -> Path:
        return self.workdir / "components"

    @property
    def ca_file(self) -> Path:
        """The PEM bundle that verifies the serving certificate (also the cluster's root CA)."""
        return self.data_dir / "certs" / "apiserver.crt"

    def start(self, timeout: float = 180.0) -> ControlPlane:
        """Start the process (on ``data_dir``, on ``port`` unless 0) and wait until it is ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise ControlPlaneError(f"control plane already running (pid {self.proc.pid})")
        if not BINARY.exists():
            raise ControlPlaneError(
                f"{BINARY} missing: run `make controlplane` (make test does; `make compat`, the others)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        args = [
            str(BINARY), "--kubeconfig", str(self.kubeconfig), "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--address", self.address,
        ]  # fmt: skip
        if self.node_name:
            args += ["--node-name", self.node_name, "--components-dir", str(self.components_dir)]
        # Appended to: a restart keeps the log of the run before it.
        log = self.logfile.open("a")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        ready: dict[str, str] = {}

        def read_stdout() -> None:
            assert self.proc is not None
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                match = READY_LINE.match(line.strip())
                if match:
                    ready.update(match.groupdict())
                    return

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready:
            self.stop()
            tail = self.logfile.read_text(errors="replace")[-3000:]
            raise ControlPlaneError(f"control plane not ready within {timeout}s:\n{tail}")
        self.server = ready["server"]
        self.port = int(self.server.rsplit(":", 1)[1])
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to this process's PID (a clean shutdown of the API server, then etcd), then wait;
        SIGKILL if it has not exited within ``timeout``. The exit code (None: never started)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
        finally:
            self.stop_seconds = time.monotonic() - started

    def restart(self, down: float = 0.0, timeout: float = 180.0) -> ControlPlane:
        """Stop the process, stay down ``down`` seconds more, start it again on the same data dir and
        port, and wait until it is ready. Objects, the kubeconfig and minted tokens carry over."""
        if not self.port:
            raise ControlPlaneError("restart() needs a control plane that was started (its port is unknown)")
        code = self.stop()
        if code != 0:
            tail = self.logfile.read_text(errors="replace")[-3000:]
            raise ControlPlaneError(f"control plane exited with {code} on SIGTERM, not 0:\n{tail}")
        time.sleep(down)
        return self.start(timeout)

    def admin_token(self) -> str:
        config = yaml.safe_load(self.kubeconfig.read_text())
        return str(config["users"][0]["user"]["token"])

    def kubeconfig_for_token(self, token: str, path: Path, user: str = "test-user") -> Path:
        """A kubeconfig with the same cluster and CA as the admin one but authenticating with ``token``."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": user, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = user
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


class Kubectl:
    """kubectl 1.35 (.cache/bin) bound to one kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        if not KUBECTL.exists():
            raise ControlPlaneError(f"{KUBECTL} missing: run `make tools`")
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(
            [str(KUBECTL), *args],
            check=False,
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: str | dict[str, Any] | Sequence[dict[str, Any]], *args: str) -> str:
        if isinstance(manifest, dict):
            text = yaml.safe_dump(manifest)
        elif isinstance(manifest, str):
            text = manifest
        else:
            text = yaml.safe_dump_all(manifest)
        return self("apply", "-f", "-", *args, input=text).stdout


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` in an object's ``status.conditions`` (as kubectl's JSON has it)."""
    found: dict[str, Any] | None = next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None
    )
    return found


def unique_name(prefix: str) -> str:
    """A DNS-1123 name: prefix, then random hex; at most 63 characters."""
    clean = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:50] or "t"
    return f"{clean}-{secrets.token_hex(3)}"


def service_account_kubeconfig(
    kubectl: Kubectl,
    plane: ControlPlane,
    namespace: str,
    name: str,
    path: Path,
    *,
    rules: Iterable[dict[str, Any]] = (),
    cluster_rules: Iterable[dict[str, Any]] = (),
    cluster_role: str | None = None,
    expiration_seconds: int = 3600,
) -> Path:
    """Create a ServiceAccount with the given Role / ClusterRole rules (or bind an existing ClusterRole),
    mint a token for it through the TokenRequest API, and write a kubeconfig that uses that token."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
    ]
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    rules = list(rules)
    cluster_rules = list(cluster_rules)
    if rules:
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": namespace},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subject,
            },
        ]
    if cluster_rules:
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"{namespace}-{name}"},
                "rules": cluster_rules,
            }
        )
        cluster_role = f"{namespace}-{name}"
    if cluster_role:
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{namespace}-{name}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_role,
                },
                "subjects": subject,
            }
        )
    kubectl.apply(objects)
    token = kubectl(
        "create", "token", name, "-n", namespace, f"--duration={expiration_seconds}s"
    ).stdout.strip()
    return plane.kubeconfig_for_token(token, path, user=f"system:serviceaccount:{namespace}:{name}")


def decode_jwt_subject(token: str) -> str:
    """The ``sub`` claim of a service-account token (no signature check: for test assertions only)."""
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return str(json.loads(base64.urlsafe_b64decode(payload))["sub"])


@contextlib.contextmanager
def running_control_plane(workdir: Path) -> Any:
    plane = ControlPlane(workdir).start()
    try:
        yield plane
    finally:
        plane.stop()
