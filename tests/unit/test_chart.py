"""The Helm chart, rendered by the real helm 4.1.4 (.cache/bin): lint, value sets, names, operator
arguments, RBAC least privilege, Pod Security "restricted" on every pod spec, schema strictness.

The value sets are the chart's own ``ci/*-values.yaml`` files (chart-testing's convention) plus the
defaults; tests/k8s/test_chart_server.py sends the same renders to a real API server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.servers import TOOL_BIN

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streampipe"
HELM = TOOL_BIN / "helm"
RELEASE_NAMESPACE = "streampipe-system"

# name -> values file (None: the chart's defaults).
VALUE_SETS: dict[str, Path | None] = {
    "default": None,
    **{path.name.removesuffix("-values.yaml"): path for path in sorted((CHART / "ci").glob("*-values.yaml"))},
}
MONITORING_APIS = tuple(
    f"monitoring.coreos.com/v1/{kind}" for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
)
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}

pytestmark = pytest.mark.timeout(60)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} missing: run `make tools`")
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def render(
    values: Path | None = None,
    *args: str,
    release: str = "sp",
    namespace: str = RELEASE_NAMESPACE,
    api_versions: Iterable[str] = (),
    show_only_tests: bool = False,
) -> list[dict[str, Any]]:
    """``helm template`` -> the rendered objects (chart test hooks included)."""
    command = ["template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        command += ["--values", str(values)]
    for api in api_versions:
        command += ["--api-versions", api]
    command += list(args)
    documents = yaml.safe_load_all(helm(*command).stdout)
    return [doc for doc in documents if doc]


def refusal(*args: str) -> str:
    """``helm template`` with these arguments must fail; its error output."""
    done = helm("template", "sp", str(CHART), "--namespace", RELEASE_NAMESPACE, *args, check=False)
    assert done.returncode != 0, f"rendered with {args}"
    return done.stderr


def render_values(tmp_path: Path, values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """``render`` with a values file written from ``values``."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(path, **kwargs)


def operator_container(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def render_text(values: Path | None = None, *args: str, **kwargs: Any) -> str:
    return yaml.safe_dump_all(render(values, *args, **kwargs), sort_keys=False)


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            yield name, obj["spec"]
        elif obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
            yield name, obj["spec"]["template"]["spec"]


def operator_args(objects: list[dict[str, Any]]) -> list[str]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args: list[str] = container["args"]
    return args


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def operator_cluster_role(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The operator's ClusterRole: the one not aggregated into Kubernetes' default roles."""
    roles = [
        role
        for role in by_kind(objects, "ClusterRole")
        if not any(key.startswith(AGGREGATE) for key in role["metadata"].get("labels", {}))
    ]
    assert len(roles) == 1, [role["metadata"]["name"] for role in roles]
    return roles[0]


def rbac_rules(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in {"Role", "ClusterRole"}:
            for rule in obj.get("rules", []):
                yield f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}", rule


def restricted_violations(name: str, spec: dict[str, Any]) -> list[str]:
    """Pod Security Standard "restricted" (v1.29+ profile), checked field by field."""
    problems = []
    pod_sc = spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"{name}: {host}")
    for volume in spec.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
        allowed |= {"projected", "secret", "name"}
        if set(volume) - allowed:
            problems.append(f"{name}: volume {volume['name']} of a restricted type")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for container in containers:
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where}: seccompProfile {seccomp!r}")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{where}: hostPort")
        # Not part of "restricted" but promised by the chart: nothing writes to the image.
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
    return problems


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render(VALUE_SETS[name], api_versions=MONITORING_APIS)


# --- lint and shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    values = VALUE_SETS[name]
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    done = helm(*args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_at_least_four_value_sets() -> None:
    assert {"default", "namespaced", "ha", "monitoring", "networkpolicy"} <= set(VALUE_SETS)


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version.group(1)
    assert chart["kubeVersion"].startswith(">=1.")
    crd_names = [crd["name"] for crd in yaml.safe_load(chart["annotations"]["artifacthub.io/crds"])]
    assert "streampipelines.streampipe.dev" in crd_names


def test_chart_names_its_maintainer_sources_and_icon() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = "https://github.com/streampipe/streampipe"
    assert chart["maintainers"] == [{"name": "streampipe", "url": project}]
    assert all("email" not in maintainer for maintainer in chart["maintainers"])
    assert chart["sources"][0] == project
    assert all(source.startswith(project) for source in chart["sources"])
    # The icon is a file of this repository, served raw from its main branch.
    prefix = "https://raw.githubusercontent.com/streampipe/streampipe/main/"
    assert chart["icon"].startswith(prefix)
    icon = ROOT / chart["icon"].removeprefix(prefix)
    assert icon.is_file()
    assert icon.read_text().lstrip().startswith("<svg")
    lint = helm("lint", "--strict", str(CHART))
    assert "icon is recommended" not in lint.stdout


def test_chart_crds_are_the_generated_crd_and_kopf_peering() -> None:
    crd_dir = CHART / "crds"
    assert (crd_dir / "streampipeline.yaml").read_text() == (
        ROOT / "crds" / "streampipeline.yaml"
    ).read_text()
    peering = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((crd_dir / "kopf-peering.yaml").read_text())
    }
    assert set(peering) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert peering["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert peering["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    # kopf keeps the replicas' keep-alives in .status: it must accept arbitrary keys.
    for crd in peering.values():
        (version,) = crd["spec"]["versions"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def _documented_keys(lines: list[str]) -> list[str]:
    """Dotted paths of values.yaml keys that lack a ``# --`` comment and are not inside a map or list
    documented as a whole (a ``# --`` above its parent)."""
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment_block: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        if not stripped:
            comment_block = []
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match or stripped.startswith("-"):
            comment_block = []
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(documented for _, _, documented in stack)
        documented = any(comment.startswith("# --") for comment in comment_block)
        path = ".".join([key for _, key, _ in stack] + [match.group(2)])
        has_children = stripped.endswith(":")
        if not documented and not inherited and not has_children:
            undocumented.append(path)
        stack.append((indent, match.group(2), documented))
        comment_block = []
    return undocumented


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert _documented_keys(lines) == []
    # The checker itself finds an undocumented key.
    assert _documented_keys(["# -- ok", "a: 1", "b:", "  c: 2"]) == ["b.c"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "imagee.tag=1"], "imagee"),
        (["--set", "image.tagg=1"], "tagg"),
        (["--set", "replicaCount=-1"], "replicaCount"),
        (["--set", "operator.logFormat=xml"], "logFormat"),
        (["--set", "image.digest=latest"], "digest"),
        (["--set-json", 'watchNamespaces=["Not_A_Namespace"]'], "watchNamespaces"),
        (["--set", "networkPolicy.redis.ports[0]=70000"], "ports"),
        (["--set", "serviceMonitor.interval=30"], "interval"),
        (["--set", "namespaceOverride=Not_A_Namespace"], "namespaceOverride"),
        (["--set", "livenessProbe.httpGett.path=/"], "httpGett"),
        (["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=Never"], "unhealthyPodEvictionPolicy"),
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "negative-replicas",
        "log-format",
        "digest",
        "namespace",
        "port-range",
        "interval-unit",
        "namespace-override",
        "probe-field",
        "eviction-policy",
    ],
)
def test_schema_refuses_typos_and_bad_values(args: list[str], message: str) -> None:
    done = helm("template", "sp", str(CHART), *args, check=False)
    assert done.returncode != 0, f"accepted {args}"
    assert message in done.stderr, done.stderr


# --- rendering per value set -------------------------------------------------------------------------


def test_every_object_carries_the_standard_labels(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/version",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"


def test_pod_security_restricted_on_every_pod_spec(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    specs = list(pod_specs(objects))
    assert len(specs) >= 2, "the operator Deployment and the chart test pod"
    problems = [problem for name, spec in specs for problem in restricted_violations(name, spec)]
    assert problems == []


def test_restricted_checker_catches_a_violation() -> None:
    spec = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True}}]}
    problems = restricted_violations("Pod/x", spec)
    assert any("allowPrivilegeEscalation" in problem for problem in problems)
    assert any("runAsNonRoot" in problem for problem in problems)


def test_rbac_has_no_wildcards_or_privilege_verbs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    rules = list(rbac_rules(objects))
    assert rules
    for where, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"{where}: wildcard in {field}: {rule}"
        assert not FORBIDDEN_VERBS & set(rule["verbs"]), f"{where}: {rule}"
        assert not {"roles", "clusterroles", "rolebindings", "clusterrolebindings"} & set(rule["resources"])
        assert "nonResourceURLs" not in rule
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], f"{where}: secrets only get: {rule}"


def test_operator_container_runs_with_probes_ports_and_a_writable_tmp(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {port["name"] for port in container["ports"]} == {"health", "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert {"requests", "limits"} <= set(container["resources"])
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    health_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in container["args"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]


# --- watch scope, peering and RBAC shape ---------------------------------------------------------


def test_default_watches_all_namespaces_with_one_standalone_replica() -> None:
    objects = render()
    args = operator_args(objects)
    assert args[:3] == ["operator", "run", "--all-namespaces"]
    assert "--standalone" in args
    assert not any(arg.startswith(("--namespace", "--peering")) for arg in args)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert by_kind(objects, "Role") == []
    assert by_kind(objects, "ClusterKopfPeering") == []
    cluster_role = operator_cluster_role(objects)
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sp-streampipe", "namespace": RELEASE_NAMESPACE}
    ]
    resources = {resource for rule in cluster_role["rules"] for resource in rule["resources"]}
    assert "clusterkopfpeerings" not in resources
    assert {
        "streampipelines",
        "streampipelines/status",
        "deployments",
        "deployments/scale",
        "events",
        "secrets",
    } == resources


def test_namespaced_install_gets_a_role_per_namespace_and_no_cluster_wide_object_access() -> None:
    objects = render(VALUE_SETS["namespaced"])
    args = operator_args(objects)
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    roles = {role["metadata"]["namespace"]: role for role in by_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE
    # Nothing cluster-scoped: kopf's scanning of CRDs and namespaces is off in the operator.
    assert by_kind(objects, "ClusterRole") == []
    assert by_kind(objects, "ClusterRoleBinding") == []
    # Peering with two replicas: a KopfPeering per watched namespace; patch only on that object.
    peerings = by_kind(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}
    assert "--peering=sp-streampipe" in args
    for role in roles.values():
        patch_rules = [r for r in role["rules"] if "kopfpeerings" in r["resources"] and "patch" in r["verbs"]]
        assert patch_rules == [
            {
                "apiGroups": ["kopf.dev"],
                "resources": ["kopfpeerings"],
                "resourceNames": ["sp-streampipe"],
                "verbs": ["patch"],
            }
        ]


def test_ha_enables_peering_rolling_updates_and_spreads_pods() -> None:
    objects = render(VALUE_SETS["ha"])
    args = operator_args(objects)
    assert "--peering=sp-streampipe" in args
    assert "--standalone" not in args
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (peering,) = by_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "sp-streampipe"
    cluster_role = operator_cluster_role(objects)
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "resourceNames": ["sp-streampipe"],
        "verbs": ["patch"],
    } in cluster_role["rules"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"][0]["key"] == "dedicated"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["containers"][0]["image"] == ("ghcr.io/streampipe/streampipe-operator@sha256:" + "0" * 64)
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "minAvailable": 2,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": deployment["spec"]["selector"],
    }
    assert deployment["metadata"]["labels"]["team"] == "platform"
    assert deployment["metadata"]["annotations"]["owner"] == "platform@example.com"


def test_env_names_the_replica_after_its_pod() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_image_tag_defaults_to_app_version_and_can_be_overridden() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/streampipe/streampipe-operator:0.1.0"
    container = one(render(None, "--set", "image.tag=0.2.0-rc.1"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["image"] == "ghcr.io/streampipe/streampipe-operator:0.2.0-rc.1"


def test_names_are_truncated_to_63_characters() -> None:
    release = "a-very-long-release-name-that-a-platform-team-chose-x"
    objects = render(VALUE_SETS["namespaced"], release=release)
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    names = {obj["metadata"]["name"] for obj in objects}
    assert any(name.endswith("-test-health") for name in names)


def test_finalizers_update_only_where_owner_reference_enforcement_needs_it() -> None:
    rule = {"apiGroups": ["streampipe.dev"], "resources": ["streampipelines/finalizers"], "verbs": ["update"]}
    assert rule not in operator_cluster_role(render())["rules"]
    objects = render(VALUE_SETS["namespaced"], "--set", "rbac.ownerReferencesPermissionEnforcement=true")
    for role in by_kind(objects, "Role"):
        assert rule in role["rules"]


def test_rbac_create_false_renders_no_rbac_objects() -> None:
    objects = render(None, "--set", "rbac.create=false")
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in objects}


def test_existing_service_account_must_be_named() -> None:
    done = helm("template", "sp", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert done.returncode != 0
    assert "serviceAccount.name is required" in done.stderr
    objects = render(None, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert by_kind(objects, "ServiceAccount") == []
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


# --- optional objects ------------------------------------------------------------------------------


def test_service_monitor_only_when_the_cluster_serves_it() -> None:
    values = VALUE_SETS["monitoring"]
    without = render(values)
    assert by_kind(without, "ServiceMonitor") == []
    assert by_kind(without, "PrometheusRule") == []
    objects = render(values, api_versions=MONITORING_APIS)
    assert one(objects, "PodMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # PrometheusRule: tests/unit/test_monitoring.py


def test_network_policy_allows_only_dns_api_server_and_redis_egress() -> None:
    objects = render(VALUE_SETS["networkpolicy"])
    policies = {policy["metadata"]["name"]: policy for policy in by_kind(objects, "NetworkPolicy")}
    assert set(policies) == {"sp-streampipe", "sp-streampipe-test-health"}
    spec = policies["sp-streampipe"]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    egress = spec["egress"]
    assert len(egress) == 3
    dns, api, redis = egress
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert redis["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "valkey"}
    assert {p["port"] for p in redis["ports"]} == {6379, 26379}
    # Ingress: the metrics port from the monitoring namespace, the health port from the chart test.
    ports = [rule["ports"][0]["port"] for rule in spec["ingress"]]
    assert ports == ["metrics", "health"]
    # The chart test pod's own policy: egress to DNS and the operator's health port, no ingress.
    test_policy = policies["sp-streampipe-test-health"]
    assert test_policy["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "sp",
        "app.kubernetes.io/component": "chart-test",
    }
    assert "ingress" not in test_policy["spec"]
    to_operator = test_policy["spec"]["egress"][1]
    assert to_operator["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert to_operator["to"][0]["podSelector"]["matchLabels"] == spec["podSelector"]["matchLabels"]
    assert by_kind(render(None, "--set", "networkPolicy.enabled=false"), "NetworkPolicy") == []


def test_chart_test_pod_checks_the_health_port_through_the_service() -> None:
    objects = render()
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://sp-streampipe.{RELEASE_NAMESPACE}.svc:8080/healthz" in script
    # The test pod is not an operator pod: the Service must not select it.
    service_selector = one(objects, "Service")["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(key) == value for key, value in service_selector.items())
    compile(script, "test-health", "exec")  # the inline check is valid Python


# --- PodDisruptionBudget ---------------------------------------------------------------------------


def test_pdb_defaults_to_max_unavailable_one_and_always_allow() -> None:
    objects = render()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": one(objects, "Deployment")["spec"]["selector"],
    }
    pdb = one(
        render(None, "--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget"),
        "PodDisruptionBudget",
    )
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    pdb = one(render(None, "--set", "podDisruptionBudget.unhealthyPodEvictionPolicy="), "PodDisruptionBudget")
    assert "unhealthyPodEvictionPolicy" not in pdb["spec"]


def test_pdb_keeps_max_unavailable_zero() -> None:
    pdb = one(render(None, "--set", "podDisruptionBudget.maxUnavailable=0"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 0
    assert "minAvailable" not in pdb["spec"]
    pdb = one(render(None, "--set", "podDisruptionBudget.maxUnavailable=null"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("replicas", "min_available"),
    [("1", "1"), ("2", "2"), ("3", "5"), ("3", '"70%"'), ("1", '"100%"')],
)
def test_pdb_min_available_not_below_replicas_fails_rendering(replicas: str, min_available: str) -> None:
    stderr = refusal(
        "--set", f"replicaCount={replicas}", "--set-json", f"podDisruptionBudget.minAvailable={min_available}"
    )
    assert "podDisruptionBudget.minAvailable" in stderr
    assert "every node drain blocks" in stderr
    assert "below replicaCount" in stderr


@pytest.mark.parametrize(
    ("replicas", "min_available", "expected"), [("3", "2", 2), ("2", '"50%"', "50%"), ("2", "0", 0)]
)
def test_pdb_min_available_below_replicas_renders(
    replicas: str, min_available: str, expected: object
) -> None:
    objects = render(
        None,
        "--set",
        f"replicaCount={replicas}",
        "--set-json",
        f"podDisruptionBudget.minAvailable={min_available}",
    )
    spec = one(objects, "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == expected
    assert "maxUnavailable" not in spec


# --- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["podLabels", "commonLabels"])
@pytest.mark.parametrize(
    "label", ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"]
)
def test_schema_refuses_labels_that_override_the_selector(field: str, label: str) -> None:
    key = f"{field}.{label.replace('.', chr(92) + '.')}"
    stderr = refusal("--set", f"{key}=other")
    assert f"/{field}/{label.replace('/', '~1')}" in stderr, stderr
    assert f"invalid propertyName '{label}'" in stderr, stderr
    lint = helm("lint", "--strict", str(CHART), "--set", f"{key}=other", check=False)
    assert lint.returncode != 0
    assert f"invalid propertyName '{label}'" in lint.stdout + lint.stderr


def test_extra_pod_labels_are_added_next_to_the_selector_labels() -> None:
    objects = render(None, "--set", "podLabels.team=payments", "--set", "commonLabels.tier=ops")
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "payments"
    assert labels["tier"] == "ops"
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert labels[key] == value


# --- conventional values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "image"),
    [
        ({}, "ghcr.io/streampipe/streampipe-operator:0.1.0"),
        (
            {"image": {"registry": "registry.example.com"}},
            "registry.example.com/streampipe/streampipe-operator:0.1.0",
        ),
        ({"image": {"registry": ""}}, "streampipe/streampipe-operator:0.1.0"),
        (
            {"global": {"imageRegistry": "mirror.example.com/"}},
            "mirror.example.com/streampipe/streampipe-operator:0.1.0",
        ),
        (
            {
                "global": {"imageRegistry": "mirror.example.com"},
                "image": {"registry": "registry.example.com"},
            },
            "mirror.example.com/streampipe/streampipe-operator:0.1.0",
        ),
        (
            {"global": {"imageRegistry": "mirror.example.com"}, "image": {"digest": "sha256:" + "a" * 64}},
            "mirror.example.com/streampipe/streampipe-operator@sha256:" + "a" * 64,
        ),
        # A repository that names its own registry host is used as is.
        (
            {"global": {"imageRegistry": "mirror.example.com"}, "image": {"repository": "localhost:5000/op"}},
            "localhost:5000/op:0.1.0",
        ),
        (
            {"image": {"repository": "registry.example.com/ops/operator", "tag": "1.2"}},
            "registry.example.com/ops/operator:1.2",
        ),
    ],
    ids=[
        "default",
        "image-registry",
        "no-registry",
        "global",
        "global-wins",
        "digest",
        "own-host-port",
        "own-host",
    ],
)
def test_image_registry_prefixes_the_repository(tmp_path: Path, values: dict[str, Any], image: str) -> None:
    objects = render_values(tmp_path, values)
    assert operator_container(objects)["image"] == image
    assert one(objects, "Pod")["spec"]["containers"][0]["image"] == image  # the chart test pod


def test_global_image_pull_secrets_are_merged_with_the_charts(tmp_path: Path) -> None:
    values = {
        "imagePullSecrets": [{"name": "regcred"}],
        "global": {"imagePullSecrets": ["mirror-cred", {"name": "org-cred"}, "regcred"]},
    }
    objects = render_values(tmp_path, values)
    expected = [{"name": "regcred"}, {"name": "mirror-cred"}, {"name": "org-cred"}]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == expected
    assert one(objects, "Pod")["spec"]["imagePullSecrets"] == expected
    only_global = render_values(tmp_path, {"global": {"imagePullSecrets": ["mirror-cred"]}})
    assert one(only_global, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "mirror-cred"}
    ]
    assert "imagePullSecrets" not in one(render(), "Deployment")["spec"]["template"]["spec"]


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_namespace_override_moves_every_namespaced_object(name: str) -> None:
    objects = render(VALUE_SETS[name], "--set", "namespaceOverride=ops", api_versions=MONITORING_APIS)
    watched = {"team-a", "team-b"} if name == "namespaced" else set()
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, where
        elif obj["kind"] in {"Role", "RoleBinding", "KopfPeering"}:
            assert namespace in watched, where  # the watched namespaces' own objects stay there
        else:
            assert namespace == "ops", where
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "ops"
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    script = one(objects, "Pod")["spec"]["containers"][0]["command"][-1]
    assert "http://sp-streampipe.ops.svc:8080/healthz" in script


def test_service_account_automount() -> None:
    objects = render()
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is True
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    objects = render(None, "--set", "serviceAccount.automount=false")
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_revision_history_limit() -> None:
    assert one(render(), "Deployment")["spec"]["revisionHistoryLimit"] == 5
    assert (
        one(render(None, "--set", "revisionHistoryLimit=1"), "Deployment")["spec"]["revisionHistoryLimit"]
        == 1
    )
    assert (
        one(render(None, "--set", "revisionHistoryLimit=0"), "Deployment")["spec"]["revisionHistoryLimit"]
        == 0
    )


def test_extra_env_from_volumes_and_mounts_reach_the_deployment(tmp_path: Path) -> None:
    volume = {"name": "ca", "configMap": {"name": "corporate-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}
    env_from = [{"secretRef": {"name": "operator-env"}}, {"configMapRef": {"name": "operator-settings"}}]
    values = {"operator": {"extraEnvFrom": env_from}, "extraVolumes": [volume], "extraVolumeMounts": [mount]}
    pod = one(render_values(tmp_path, values), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == env_from
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, mount]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, volume]
    default = operator_container(render())
    assert "envFrom" not in default
    assert default["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_probe_defaults_and_overrides(tmp_path: Path) -> None:
    container = operator_container(render())
    health = {"path": "/healthz", "port": "health"}
    assert container["livenessProbe"] == {
        "httpGet": health,
        "initialDelaySeconds": 10,
        "periodSeconds": 15,
        "timeoutSeconds": 5,
        "failureThreshold": 4,
    }
    assert container["readinessProbe"]["httpGet"] == health
    assert "startupProbe" not in container
    values = {
        "livenessProbe": {"exec": {"command": ["python", "-c", "pass"]}, "periodSeconds": 30},
        "readinessProbe": {"tcpSocket": {"port": "health"}, "successThreshold": 2},
        "startupProbe": {"enabled": True, "failureThreshold": 60},
    }
    container = operator_container(render_values(tmp_path, values))
    assert container["livenessProbe"] == {
        "exec": {"command": ["python", "-c", "pass"]},
        "initialDelaySeconds": 10,
        "periodSeconds": 30,
        "timeoutSeconds": 5,
        "failureThreshold": 4,
    }
    assert container["readinessProbe"] == {
        "tcpSocket": {"port": "health"},
        "initialDelaySeconds": 5,
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
        "successThreshold": 2,
    }
    assert container["startupProbe"] == {
        "httpGet": health,
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 60,
    }
    container = operator_container(render(None, "--set", "livenessProbe.enabled=false"))
    assert "livenessProbe" not in container
    assert "readinessProbe" in container
    stderr = refusal("--set", "livenessProbe.tcpSocket.port=health", "--set", "livenessProbe.httpGet.path=/x")
    assert "livenessProbe has more than one handler (httpGet, tcpSocket)" in stderr


def test_monitor_relabelings(tmp_path: Path) -> None:
    relabel = {"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}
    drop = {"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}
    values = {
        "podMonitor": {"enabled": True, "relabelings": [relabel], "metricRelabelings": [drop]},
        "serviceMonitor": {"enabled": True, "relabelings": [relabel], "metricRelabelings": [drop]},
    }
    objects = render_values(tmp_path, values, api_versions=MONITORING_APIS)
    (endpoint,) = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_streampipe_dev_pipeline"], "targetLabel": "pipeline"},
        relabel,
    ]
    assert endpoint["metricRelabelings"] == [drop]
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"] == [relabel]
    assert endpoint["metricRelabelings"] == [drop]
    (endpoint,) = one(render(VALUE_SETS["monitoring"], api_versions=MONITORING_APIS), "PodMonitor")["spec"][
        "podMetricsEndpoints"
    ]
    assert len(endpoint["relabelings"]) == 1
    assert "metricRelabelings" not in endpoint


def test_monitoring_objects_take_their_own_namespace() -> None:
    values = VALUE_SETS["monitoring"]
    objects = render(values, api_versions=MONITORING_APIS)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["namespace"] == RELEASE_NAMESPACE
    objects = render(
        values,
        "--set",
        "serviceMonitor.namespace=monitoring",
        "--set",
        "podMonitor.namespace=monitoring",
        "--set",
        "prometheusRule.namespace=alerts",
        "--set",
        "namespaceOverride=ops",
        api_versions=MONITORING_APIS,
    )
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    # It still scrapes the Service, which stays with the operator.
    assert monitor["spec"]["namespaceSelector"] == {
        "matchNames": [one(objects, "Service")["metadata"]["namespace"]]
    }
    assert one(objects, "Service")["metadata"]["namespace"] == "ops"
    assert one(objects, "PodMonitor")["metadata"]["namespace"] == "monitoring"
    assert one(objects, "PrometheusRule")["metadata"]["namespace"] == "alerts"


# --- NOTES.txt -------------------------------------------------------------------------------------


def notes(*args: str) -> str:
    """The release notes of a client-side dry-run install (no cluster: no monitoring.coreos.com/v1)."""
    command = [
        str(HELM),
        "install",
        "sp",
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--dry-run=client",
        *args,
    ]
    env = {**os.environ, "KUBECONFIG": os.devnull}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_upgrade_with_reset_then_reuse_values() -> None:
    text = notes()
    upgrade = next(line for line in text.splitlines() if line.strip().startswith("helm upgrade"))
    assert upgrade.split() == [
        *("helm", "upgrade", "sp", "<chart", "reference>", "--version", "<new", "version>"),
        *("-n", RELEASE_NAMESPACE, "--reset-then-reuse-values"),
    ]
    assert "WARNING" not in text
    assert f"kubectl -n {RELEASE_NAMESPACE} rollout status deployment/sp-streampipe" in text
    text = notes("--set", "namespaceOverride=ops")
    assert "kubectl -n ops rollout status deployment/sp-streampipe" in text


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor", "prometheusRule"])
def test_notes_warn_when_a_monitoring_api_is_missing(monitor: str) -> None:
    text = notes("--set", f"{monitor}.enabled=true")
    kind = monitor[0].upper() + monitor[1:]
    warnings = [paragraph for paragraph in text.split("\n\n") if paragraph.startswith("WARNING")]
    assert len(warnings) == 1, text
    assert f"{monitor}.enabled is true" in warnings[0]
    assert f"monitoring.coreos.com/v1\n{kind}" in warnings[0]


def test_values_of_a_release_from_before_these_values_render_the_same_operator(tmp_path: Path) -> None:
    """``helm upgrade --reuse-values`` from an older release: the values added since are missing
    altogether (not even the chart's defaults), yet the operator keeps its probes, token and history."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ("global", "namespaceOverride", "revisionHistoryLimit", "extraVolumes", "extraVolumeMounts"):
        del values[key]
    del values["startupProbe"], values["livenessProbe"]["enabled"], values["readinessProbe"]["enabled"]
    del values["serviceAccount"]["automount"], values["operator"]["extraEnvFrom"]
    del values["podDisruptionBudget"]["unhealthyPodEvictionPolicy"]
    values["image"] = {**values["image"], "repository": "ghcr.io/streampipe/streampipe-operator"}
    del values["image"]["registry"]
    old_chart = tmp_path / "streampipe"
    shutil.copytree(CHART, old_chart)
    (old_chart / "values.schema.json").unlink()  # the old release's values, as Helm would reuse them
    (old_chart / "values.yaml").write_text(yaml.safe_dump(values))
    done = helm("template", "sp", str(old_chart), "--namespace", RELEASE_NAMESPACE)
    old = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert one(old, "Deployment") == one(render(), "Deployment")
    assert one(old, "ServiceAccount") == one(render(), "ServiceAccount")


def test_aggregated_roles_let_view_read_and_edit_change_pipelines_only() -> None:
    objects = render()
    roles = {
        role["metadata"]["name"]: role
        for role in by_kind(objects, "ClusterRole")
        if any(key.startswith(AGGREGATE) for key in role["metadata"]["labels"])
    }
    assert set(roles) == {"sp-streampipe-view", "sp-streampipe-edit"}
    view, edit = roles["sp-streampipe-view"], roles["sp-streampipe-edit"]
    aggregated = {
        key.removeprefix(AGGREGATE) for key in view["metadata"]["labels"] if key.startswith(AGGREGATE)
    }
    assert aggregated == {"view", "edit", "admin"}
    assert {k.removeprefix(AGGREGATE) for k in edit["metadata"]["labels"] if k.startswith(AGGREGATE)} == {
        "edit",
        "admin",
    }
    assert view["rules"] == [
        {
            "apiGroups": ["streampipe.dev"],
            "resources": ["streampipelines", "streampipelines/status"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert edit["rules"] == [
        {
            "apiGroups": ["streampipe.dev"],
            "resources": ["streampipelines"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        }
    ]
    # Nobody is bound to them by the chart: aggregation gives them to whoever has view/edit/admin.
    bound = {
        b["roleRef"]["name"] for b in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding")
    }
    assert not bound & set(roles)
    off = render(None, "--set", "rbac.aggregateToDefaultRoles=false")
    assert [r["metadata"]["name"] for r in by_kind(off, "ClusterRole")] == ["sp-streampipe"]
