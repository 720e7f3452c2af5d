"""The test control plane is a real API server: CRDs, status subresource, watches, RBAC, TokenRequest."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.controlplane import (
    KUBECTL,
    ControlPlane,
    Kubectl,
    decode_jwt_subject,
    running_control_plane,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.timeout(180)

# A CRD of the tests' own, so these checks of the server's mechanics do not depend on ours.
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.controlplane.test"},
    "spec": {
        "group": "controlplane.test",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1, "default": 3}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.size <= 10", "message": "size must be at most 10"}
                                ],
                            },
                            "status": {"type": "object", "properties": {"seen": {"type": "integer"}}},
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widget_crd(kubectl: Kubectl) -> None:
    kubectl.apply(WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.controlplane.test", "--timeout=60s")


def widget(name: str, namespace: str, size: int | None = None) -> dict[str, object]:
    spec = {} if size is None else {"size": size}
    return {
        "apiVersion": "controlplane.test/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_server_is_kubernetes_1_35(kubectl: Kubectl, control_plane: ControlPlane) -> None:
    version = kubectl.json("version")
    assert version["serverVersion"]["gitVersion"].startswith("v1.35.")
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert "default" in kubectl("get", "namespaces", "-o", "name").stdout


@pytest.mark.usefixtures("widget_crd")
def test_crd_defaulting_cel_and_status_subresource(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(widget("w1", namespace))
    created = kubectl.json("get", "widget", "w1", "-n", namespace)
    assert created["spec"] == {"size": 3}, "the server applies the schema default"

    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(widget("w2", namespace, 11)), check=False)
    assert refused.returncode != 0
    assert "size must be at most 10" in refused.stderr

    # A status change through the main resource is ignored; through /status it sticks.
    kubectl("patch", "widget", "w1", "-n", namespace, "--type=merge", "-p", '{"status": {"seen": 1}}')
    assert "status" not in kubectl.json("get", "widget", "w1", "-n", namespace)
    kubectl(
        "patch", "widget", "w1", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"seen": 2}}',
    )  # fmt: skip
    assert kubectl.json("get", "widget", "w1", "-n", namespace)["status"] == {"seen": 2}


@pytest.mark.usefixtures("widget_crd")
def test_watch_sees_changes(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(widget("watched", namespace))
    events: list[dict[str, object]] = []
    done = threading.Event()
    proc = subprocess.Popen(
        [str(KUBECTL), "get", "widget", "watched", "-n", namespace, "--watch", "--output-watch-events",
         "-o", "json", "--request-timeout=60s"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)},
    )  # fmt: skip

    def read_events() -> None:
        assert proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in proc.stdout:
            buffer += line
            try:
                event, _ = decoder.raw_decode(buffer.strip())
            except json.JSONDecodeError:
                continue
            buffer = ""
            events.append(event)
            if len(events) >= 2:
                done.set()
                return

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    try:
        # Patch until the watch reports a change: the watch may start after the first patch.
        for size in range(4, 10):
            patch = json.dumps({"spec": {"size": size}})
            kubectl("patch", "widget", "watched", "-n", namespace, "--type=merge", "-p", patch)
            if done.wait(3):
                break
        assert done.wait(30), f"watch saw only {events}"
    finally:
        proc.terminate()
        proc.wait(10)
    assert [event["type"] for event in events] == ["ADDED", "MODIFIED"]


def test_rbac_is_enforced_for_service_account_tokens(
    kubectl: Kubectl, namespace: str, service_account: Callable[..., Path]
) -> None:
    reader = service_account(
        namespace,
        "cm-reader",
        rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    )
    as_reader = Kubectl(reader)
    kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=a=b")

    assert as_reader("get", "configmap", "settings", "-n", namespace).returncode == 0
    token = yaml.safe_load(reader.read_text())["users"][0]["user"]["token"]
    assert decode_jwt_subject(token) == f"system:serviceaccount:{namespace}:cm-reader"

    for forbidden in (
        ("get", "secrets", "-n", namespace),
        ("delete", "configmap", "settings", "-n", namespace),
        ("get", "configmaps", "-n", "default"),
    ):
        denied = as_reader(*forbidden, check=False)
        assert denied.returncode != 0, forbidden
        assert "Forbidden" in denied.stderr, denied.stderr
        assert f"system:serviceaccount:{namespace}:cm-reader" in denied.stderr

    can_i = as_reader("auth", "can-i", "list", "configmaps", "-n", namespace, check=False)
    assert can_i.stdout.strip() == "yes"
    cannot = as_reader("auth", "can-i", "create", "deployments", "-n", namespace, check=False)
    assert cannot.stdout.strip() == "no"


@pytest.mark.k8s
def test_restart_keeps_objects_kubeconfig_and_service_account_tokens(tmp_path: Path) -> None:
    """A restart (SIGTERM, start again on the same data dir and port) is what a client of a real cluster
    sees: same address, same CA, the admin token and ServiceAccount tokens minted before still valid,
    every object still there. A control plane of its own: the session one is shared."""
    with running_control_plane(tmp_path / "controlplane") as plane:
        kubectl = Kubectl(plane.kubeconfig)
        kubectl("create", "namespace", "kept")
        kubectl("create", "configmap", "settings", "-n", "kept", "--from-literal=colour=blue")
        reader = service_account_kubeconfig(
            kubectl, plane, "kept", "reader", tmp_path / "reader.kubeconfig",
            rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        )  # fmt: skip
        assert plane.proc is not None
        server, kubeconfig, pid = plane.server, plane.kubeconfig.read_text(), plane.proc.pid

        plane.restart()

        assert plane.proc is not None
        assert plane.proc.pid != pid, "a new process"
        assert plane.server == server
        assert plane.kubeconfig.read_text() == kubeconfig, "same server, CA and admin token"
        settings = kubectl.json("get", "configmap", "settings", "-n", "kept")
        assert settings["data"] == {"colour": "blue"}
        as_reader = Kubectl(reader)
        whoami = as_reader.json("auth", "whoami")
        assert whoami["status"]["userInfo"]["username"] == "system:serviceaccount:kept:reader"
        assert as_reader.json("get", "configmap", "settings", "-n", "kept")["data"] == {"colour": "blue"}
        # And the server works after the restart, not just reads from before: RBAC still enforced.
        denied = as_reader("delete", "configmap", "settings", "-n", "kept", check=False)
        assert "Forbidden" in denied.stderr, denied.stderr
        kubectl("create", "configmap", "after", "-n", "kept")
