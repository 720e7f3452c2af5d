"""The operator as a real process for tests (``streampipe operator run``), and small readers of what it
wrote (StreamPipelines, Deployments, Events) through the official client.

Each test starts its own operator for its own namespace(s), so killing and restarting it is real,
and stops it by PID. There is no wall-clock assertion anywhere here: ``eventually`` only bounds how
long a test waits before it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from streampipe_operator import api
from tests.support.polling import eventually
from tests.support.servers import free_port

STREAMPIPE = Path(sys.executable).parent / "streampipe"
T = TypeVar("T")


@dataclass
class OperatorProcess:
    """One ``streampipe operator run`` process owned by a test."""

    kubeconfig: Path
    namespaces: Sequence[str]
    logfile: Path
    extra_args: Sequence[str] = ()
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        args = [str(STREAMPIPE), "operator", "run", "--kubeconfig", str(self.kubeconfig)]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        args += [
            "--metrics-port", str(self.metrics_port),
            "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
            "--log-format", "json",
        ]  # fmt: skip
        if not any(arg.startswith(("--peering", "--standalone")) for arg in self.extra_args):
            args.append("--standalone")
        return [*args, *self.extra_args]

    def start(self, *, timeout: float = 60.0) -> OperatorProcess:
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        eventually(self.alive, within=timeout, what=f"the operator's liveness endpoint\n{self.log_tail()}")
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(
                f"the operator exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as reply:
            return str(reply.read().decode())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (kopf stops its daemons first); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, mid-whatever it was doing."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> OperatorProcess:
        self.stop()
        return self.start()

    def log_tail(self, size: int = 6000) -> str:
        if not self.logfile.exists():
            return ""
        return self.logfile.read_text(errors="replace")[-size:]

    def log_records(self) -> list[dict[str, Any]]:
        """The operator's log (``--log-format json``), one dict per line; a line that is not JSON
        (the interpreter's own output before logging is set up) becomes ``{"message": line}``."""
        records: list[dict[str, Any]] = []
        if not self.logfile.exists():
            return records
        for line in self.logfile.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            records.append(record if isinstance(record, dict) else {"message": line})
        return records


# An API refusal in the log: kopf's APIForbiddenError and the server's Status ("reason": "Forbidden",
# "code": 403), the kubernetes client's "(403)" line. "Forbidden" anywhere, as before; the digits 403
# only where they are the status, so a timestamp, an entry ID or a port holding them does not count.
_API_FORBIDDEN = re.compile(r"""Forbidden|["']code["']:\s*403\b|^\(403\)$""", re.MULTILINE)


def forbidden_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log records that report an HTTP 403 from the API server."""
    timestamps = ("timestamp", "time", "asctime", "created")
    return [
        r
        for r in records
        if any(_API_FORBIDDEN.search(str(value)) for name, value in r.items() if name not in timestamps)
    ]


class Cluster:
    """Reads (and a few writes) through the official client with the admin kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        configuration = client.Configuration()
        loader: Any = config
        loader.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        self.api_client: Any = client.ApiClient(configuration)
        self.custom: Any = client.CustomObjectsApi(self.api_client)
        self.apps: Any = client.AppsV1Api(self.api_client)
        self.core: Any = client.CoreV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def pipeline(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def status(self, namespace: str, name: str) -> api.StreamPipelineStatus:
        body = self.pipeline(namespace, name) or {}
        return api.StreamPipelineStatus.model_validate(body.get("status") or {})

    def condition(self, namespace: str, name: str, type_: str) -> api.Condition | None:
        return self.status(namespace, name).condition(type_)

    def delete_pipeline(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            reply = self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(reply.data)
        return found

    def deployments(self, namespace: str) -> list[dict[str, Any]]:
        reply = self.apps.list_namespaced_deployment(namespace, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(reply.data)["items"]
        return items

    def replicas(self, namespace: str, name: str) -> int | None:
        deployment = self.deployment(namespace, name)
        return None if deployment is None else int(deployment["spec"].get("replicas", 1))

    def events(self, namespace: str, involved: str | None = None) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the namespace's Events, oldest first."""
        reply = self.core.list_namespaced_event(namespace, _preload_content=False)
        items = json.loads(reply.data)["items"]
        items.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"].get("resourceVersion", "")))
        return [
            (e["type"], e["reason"], e.get("message", ""))
            for e in items
            if involved is None or e["involvedObject"].get("name") == involved
        ]

    def reasons(self, namespace: str, involved: str | None = None) -> list[str]:
        return [reason for _, reason, _ in self.events(namespace, involved)]

    def event(self, namespace: str, involved: str, reason: str, *, within: float = 30.0) -> str:
        """The message of the first Event with ``reason`` about ``involved``, once there is one (the
        operator posts an Event right after the change it reports)."""

        def message() -> str | None:
            return next((m for _, r, m in self.events(namespace, involved) if r == reason), None)

        found: str = eventually(message, within=within, what=f"Event {reason} on {involved}")
        return found


def pipeline_manifest(
    name: str,
    namespace: str,
    url: str,
    *,
    stream: str = "{orders}:events",
    groups: Iterable[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A StreamPipeline for tests: one group ``billing`` scaled every second with a 3 s window."""
    if groups is None:
        groups = [worker_group("billing")]
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"redis": {"url": url}, "stream": stream, "groups": list(groups), **spec},
    }


def worker_group(name: str, **fields: Any) -> dict[str, Any]:
    scaling = {
        "minReplicas": 0,
        "maxReplicas": 4,
        "backlogPerReplica": 1000,
        "pollInterval": "1s",
        "scaleDownStabilization": "3s",
        **fields.pop("scaling", {}),
    }
    return {
        "name": name,
        "handler": "shop_handlers.orders:handle",
        "image": "registry.example.com/streampipe/worker:test",
        "scaling": scaling,
        **fields,
    }
