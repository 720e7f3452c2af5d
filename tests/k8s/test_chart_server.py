"""The chart on the real kube-apiserver (tests/controlplane): every rendered object accepted by a
server-side dry run (with Pod Security "restricted" enforced on the namespaces), `helm install` and
`helm uninstall`, and the chart's RBAC proven with a token of the chart's own ServiceAccount: what the
operator must be able to do works, what it must not do is refused by the API server.

ServiceMonitor, PodMonitor and PrometheusRule are not dry-run here: the Prometheus Operator CRDs are not
installed on the test control plane, so those objects are checked statically (tests/unit/test_chart.py,
tests/unit/test_monitoring.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.config import kube_config

from tests.support.controlplane import ControlPlane, ControlPlaneError, Kubectl, unique_name
from tests.support.k8s_fixtures import CRD_NAME
from tests.unit.test_chart import CHART, HELM, VALUE_SETS, by_kind, render

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def restricted_namespace(kubectl: Kubectl, prefix: str) -> str:
    """A namespace that enforces Pod Security "restricted" (and warns on workloads that would not)."""
    name = unique_name(prefix)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    f"pod-security.kubernetes.io/{mode}": "restricted"
                    for mode in ("enforce", "warn", "audit")
                }
                | {f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "warn")},
            },
        }
    )
    # A real cluster's controller-manager creates each namespace's "default" ServiceAccount, which the
    # chart test pod runs as; the test control plane has no controller-manager, so the test does it.
    kubectl("create", "serviceaccount", "default", "-n", name)
    return name


def helm_cli(control_plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    done = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, env=env, timeout=150, check=False
    )
    if check and done.returncode != 0:
        raise ControlPlaneError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def peering_crds(kubectl: Kubectl, crd_installed: str) -> None:
    """The chart's crds/ folder (the StreamPipeline CRD is the fixture's; kopf's peering CRDs)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    for name in PEERING_CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="module")
def namespaces(kubectl: Kubectl) -> Iterator[dict[str, str]]:
    """A release namespace and two watched namespaces, all enforcing Pod Security "restricted"."""
    names = {
        "release": restricted_namespace(kubectl, "chart-release"),
        "team-a": restricted_namespace(kubectl, "chart-team-a"),
        "team-b": restricted_namespace(kubectl, "chart-team-b"),
    }
    yield names
    for name in names.values():
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def value_set_args(name: str, namespaces: dict[str, str]) -> list[str]:
    """The ci/ value set, with its watched namespaces replaced by this module's real ones."""
    args: list[str] = []
    values = VALUE_SETS[name]
    if values is not None:
        args += ["--values", str(values)]
        if yaml.safe_load(values.read_text()).get("watchNamespaces"):
            args += [
                "--set-json",
                f"watchNamespaces={json.dumps([namespaces['team-a'], namespaces['team-b']])}",
            ]
    return args


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    name: str, kubectl: Kubectl, peering_crds: None, namespaces: dict[str, str]
) -> None:
    release_namespace = namespaces["release"]
    objects = render(
        None, *value_set_args(name, namespaces), release=f"dry-{name}", namespace=release_namespace
    )
    objects = [obj for obj in objects if obj["kind"] not in MONITORING_KINDS]
    assert {"Deployment", "ServiceAccount", "Pod"} <= {obj["kind"] for obj in objects}
    done = kubectl(
        "apply",
        "--dry-run=server",
        # No --namespace: every namespaced object names its own (GitOps tools apply them as rendered).
        "-f",
        "-",
        input=yaml.safe_dump_all(objects, sort_keys=False),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Pod Security admission "restricted": enforced on the test Pod, warned on the Deployment's template.
    assert "would violate PodSecurity" not in done.stderr, done.stderr
    assert "violate" not in done.stderr.lower(), done.stderr
    accepted = [line for line in done.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), done.stdout


def test_pod_security_admission_refuses_a_weakened_pod(
    kubectl: Kubectl, peering_crds: None, namespaces: dict[str, str]
) -> None:
    """The dry run above can fail: the same chart with privilege escalation allowed is refused."""
    objects = render(
        None,
        "--set",
        "securityContext.allowPrivilegeEscalation=true",
        release="weak",
        namespace=namespaces["release"],
    )
    (pod,) = by_kind(objects, "Pod")
    done = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespaces["release"],
        "-f",
        "-",
        input=yaml.safe_dump(pod),
        check=False,
    )
    assert done.returncode != 0
    assert "violates PodSecurity" in done.stderr
    assert "allowPrivilegeEscalation" in done.stderr


# --- helm install and the ServiceAccount's rights ------------------------------------------------


class Installed:
    """A namespaced release (two watched namespaces) installed with `helm install`."""

    def __init__(self, release: str, namespaces: dict[str, str], kubeconfig: Path) -> None:
        self.release = release
        self.namespace = namespaces["release"]
        self.watched = [namespaces["team-a"], namespaces["team-b"]]
        self.fullname = f"{release}-streampipe"
        self.kubeconfig = kubeconfig
        self.as_operator = Kubectl(kubeconfig)


@pytest.fixture(scope="module")
def installed(
    control_plane: ControlPlane,
    kubectl: Kubectl,
    peering_crds: None,
    namespaces: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    release = unique_name("sp")[:20]
    watched = [namespaces["team-a"], namespaces["team-b"]]
    helm_cli(
        control_plane,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespaces["release"],
        "--values",
        str(VALUE_SETS["namespaced"]),
        "--set-json",
        f"watchNamespaces={json.dumps(watched)}",
        "--set",
        "networkPolicy.enabled=true",
    )
    service_account = f"{release}-streampipe"
    token = kubectl("create", "token", service_account, "-n", namespaces["release"], "--duration=3600s")
    kubeconfig = control_plane.kubeconfig_for_token(
        token.stdout.strip(),
        tmp_path_factory.mktemp("operator-sa") / "operator.kubeconfig",
        user=f"system:serviceaccount:{namespaces['release']}:{service_account}",
    )
    yield Installed(release, namespaces, kubeconfig)
    helm_cli(control_plane, "uninstall", release, "--namespace", namespaces["release"], check=False)


def test_helm_install_creates_the_release_objects(
    control_plane: ControlPlane, kubectl: Kubectl, installed: Installed
) -> None:
    status = json.loads(
        helm_cli(control_plane, "status", installed.release, "-n", installed.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    deployment = kubectl.json("get", "deployment", installed.fullname, "-n", installed.namespace)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == installed.fullname
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [f"--namespace={ns}" for ns in installed.watched] == [
        a for a in args if a.startswith("--namespace")
    ]
    for namespace in installed.watched:
        kubectl("get", "role", installed.fullname, "-n", namespace)
        kubectl("get", "rolebinding", installed.fullname, "-n", namespace)
        kubectl("get", "kopfpeering", installed.fullname, "-n", namespace)
    kubectl("get", "networkpolicy", installed.fullname, "-n", installed.namespace)
    kubectl("get", "crd", CRD_NAME, *PEERING_CRDS)
    # helm install applied what `helm template` renders, hooks aside.
    rendered = render(
        None,
        "--values",
        str(VALUE_SETS["namespaced"]),
        "--set-json",
        f"watchNamespaces={json.dumps(installed.watched)}",
        "--set",
        "networkPolicy.enabled=true",
        release=installed.release,
        namespace=installed.namespace,
    )
    manifest = helm_cli(control_plane, "get", "manifest", installed.release, "-n", installed.namespace).stdout
    installed_kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(manifest) if doc)
    rendered_kinds = sorted(
        obj["kind"] for obj in rendered if "helm.sh/hook" not in obj["metadata"].get("annotations", {})
    )
    assert installed_kinds == rendered_kinds


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "streampipe"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "worker",
                            "image": "streampipe-worker:0.1.0",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsUser": 10001,
                            },
                        }
                    ],
                },
            },
        },
    }


def _secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"password": "s3cret"},
    }


def _refused(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode != 0 and "forbidden" in done.stderr.lower()


def operator_client(installed: Installed) -> ApiClient:
    """A kubernetes-client ApiClient authenticated as the chart's ServiceAccount (what the operator uses)."""
    configuration = Configuration()
    kube_config.load_kube_config(config_file=str(installed.kubeconfig), client_configuration=configuration)
    return ApiClient(configuration)


def test_operator_service_account_can_do_its_job_in_a_watched_namespace(
    kubectl: Kubectl, installed: Installed
) -> None:
    """The API calls the operator makes (streampipe_operator.kube.client, kopf's watches and patches),
    made with the chart's ServiceAccount token, all succeed in a watched namespace."""
    namespace = installed.watched[0]
    kubectl.apply(_secret("redis-creds"), "-n", namespace)
    kubectl.apply(
        {
            "apiVersion": "streampipe.dev/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"name": "orders"},
            "spec": {
                "redis": {"url": "redis://redis:6379/0"},
                "stream": "{orders}:events",
                "groups": [{"name": "billing", "handler": "shop.billing:handle", "image": "w:1"}],
            },
        },
        "-n",
        namespace,
    )
    with operator_client(installed) as api:
        core, apps, custom = CoreV1Api(api), AppsV1Api(api), CustomObjectsApi(api)
        # Secrets: one by name.
        assert core.read_namespaced_secret("redis-creds", namespace).data["password"]
        # Worker Deployments: list (kopf's watch), create, patch drift back, scale through /scale, delete.
        apps.list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/managed-by=streampipe")
        apps.create_namespaced_deployment(namespace, _deployment("orders-billing"))
        apps.patch_namespaced_deployment(
            "orders-billing", namespace, [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
        )
        apps.patch_namespaced_deployment_scale("orders-billing", namespace, {"spec": {"replicas": 3}})
        assert kubectl.json("get", "deployment", "orders-billing", "-n", namespace)["spec"]["replicas"] == 3
        # StreamPipelines: list (kopf's watch), patch (finalizer, progress annotations), patch status.
        custom.list_namespaced_custom_object("streampipe.dev", "v1alpha1", namespace, "streampipelines")
        for finalizers in (["streampipe.dev/finalizer"], None):
            custom.patch_namespaced_custom_object(
                "streampipe.dev",
                "v1alpha1",
                namespace,
                "streampipelines",
                "orders",
                {
                    "metadata": {
                        "finalizers": finalizers,
                        "annotations": {"streampipe.dev/last-handled": "{}"},
                    }
                },
            )
        custom.patch_namespaced_custom_object_status(
            "streampipe.dev",
            "v1alpha1",
            namespace,
            "streampipelines",
            "orders",
            {"status": {"observedGeneration": 1}},
        )
        # core/v1 Events about it, posted.
        core.create_namespaced_event(
            namespace,
            {
                "metadata": {"generateName": "orders.", "namespace": namespace},
                "involvedObject": {"kind": "StreamPipeline", "name": "orders", "namespace": namespace},
                "reason": "GroupCreated",
                "message": "group billing created",
                "type": "Normal",
            },
        )
        # kopf peering keep-alive in the release's own KopfPeering.
        custom.list_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings")
        custom.patch_namespaced_custom_object(
            "kopf.dev",
            "v1",
            namespace,
            "kopfpeerings",
            installed.fullname,
            {"status": {"replica-0": {"priority": 1, "lifetime": 60, "lastseen": "2026-01-01T00:00:00"}}},
        )
        apps.delete_namespaced_deployment("orders-billing", namespace)


def test_operator_service_account_is_refused_everything_else(kubectl: Kubectl, installed: Installed) -> None:
    watched = installed.watched[0]
    other = unique_name("chart-unwatched")
    kubectl("create", "namespace", other)
    try:
        kubectl.apply(_secret("elsewhere"), "-n", other)
        kubectl.apply(_deployment("someone-elses"), "-n", other)
        # Another kopf operator's peering object in a watched namespace: readable, never writable.
        kubectl.apply(
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "someone-else"}},
            "-n",
            watched,
        )
        op = installed.as_operator
        refusals = {
            "read a Secret in a namespace it does not watch": op(
                "get", "secret", "elsewhere", "-n", other, check=False
            ),
            "list Secrets in a watched namespace": op("get", "secrets", "-n", watched, check=False),
            "watch Secrets in a watched namespace": op(
                "get", "secrets", "-n", watched, "--watch", "--request-timeout=2s", check=False
            ),
            "create a Deployment outside the watched namespaces": op.__call__(
                "apply", "-n", other, "-f", "-", input=yaml.safe_dump(_deployment("intruder")), check=False
            ),
            "scale another namespace's Deployment": op(
                "scale", "deployment", "someone-elses", "-n", other, "--replicas=5", check=False
            ),
            "delete another namespace's Deployment": op(
                "delete", "deployment", "someone-elses", "-n", other, check=False
            ),
            "list StreamPipelines cluster-wide": op("get", "streampipelines", "-A", check=False),
            "create Pods": op("run", "shell", "-n", watched, "--image=busybox", check=False),
            "create a Secret": op(
                "apply", "-n", watched, "-f", "-", input=yaml.safe_dump(_secret("x")), check=False
            ),
            "read ConfigMaps": op("get", "configmaps", "-n", watched, check=False),
            "read Events": op("get", "events", "-n", watched, check=False),
            "read a Deployment by name": op("get", "deployment", "someone-elses", "-n", other, check=False),
            # --validate=false: refused by the server's authorizer, not by kubectl's CRD lookup.
            "create a StreamPipeline": op(
                "create",
                "--validate=false",
                "-n",
                watched,
                "-f",
                "-",
                check=False,
                input=yaml.safe_dump(
                    {
                        "apiVersion": "streampipe.dev/v1alpha1",
                        "kind": "StreamPipeline",
                        "metadata": {"name": "x"},
                        "spec": {
                            "redis": {"url": "redis://r:6379/0"},
                            "stream": "{x}:s",
                            "groups": [{"name": "g", "handler": "a:b", "image": "i:1"}],
                        },
                    }
                ),
            ),
            "grant itself a ClusterRoleBinding": op(
                "create",
                "clusterrolebinding",
                "escalate",
                "--clusterrole=cluster-admin",
                f"--serviceaccount={installed.namespace}:{installed.fullname}",
                check=False,
            ),
            "edit its own Role": op(
                "patch",
                "role",
                installed.fullname,
                "-n",
                watched,
                "--type=json",
                "-p",
                '[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]',
                check=False,
            ),
            "delete a namespace": op("delete", "namespace", other, "--wait=false", check=False),
            "patch another KopfPeering": op(
                "patch",
                "kopfpeering",
                "someone-else",
                "-n",
                watched,
                "--type=merge",
                "-p",
                '{"status":{}}',
                check=False,
            ),
            "touch the ClusterKopfPeering": op("get", "clusterkopfpeerings", check=False),
            "list namespaces": op("get", "namespaces", check=False),
            "list CRDs": op("get", "crd", check=False),
            "modify a CRD": op(
                "patch",
                "crd",
                CRD_NAME,
                "--type=merge",
                "-p",
                '{"metadata":{"labels":{"x":"y"}}}',
                check=False,
            ),
        }
        allowed = {what: done.stdout for what, done in refusals.items() if not _refused(done)}
        assert allowed == {}
        # The other namespace's objects are untouched.
        other_deployment = kubectl.json("get", "deployment", "someone-elses", "-n", other)
        assert other_deployment["spec"]["replicas"] == 0
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)


def _resource_rules(done: subprocess.CompletedProcess[str]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) for each grant in a SelfSubjectRulesReview's answer."""
    return {
        (group, resource, verb)
        for rule in json.loads(done.stdout)["status"]["resourceRules"]
        for group in rule.get("apiGroups", [""])
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_api_server_summary_of_the_rights_matches_the_rendered_rules(
    kubectl: Kubectl, installed: Installed
) -> None:
    """A SelfSubjectRulesReview as the ServiceAccount: the API server's own list of what it may do in a
    watched namespace is exactly the chart's Role plus the grants every authenticated user has (the same
    review for a ServiceAccount bound to nothing, impersonated: the self-reviews, and on 1.37 reading
    ClusterTrustBundles too, so the baseline is the server's own, not a list true of one release)."""
    namespace = installed.watched[1]
    review = yaml.safe_dump(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }
    )
    # kubectl's client-side validation would list CRDs, which the operator may not: the server validates.
    granted = _resource_rules(
        installed.as_operator("create", "--validate=false", "-f", "-", "-o", "json", input=review)
    )
    nobody = f"system:serviceaccount:{namespace}:nobody-{os.getpid()}"
    groups = ("system:authenticated", "system:serviceaccounts", f"system:serviceaccounts:{namespace}")
    as_nobody = ["--as", nobody, *(arg for group in groups for arg in ("--as-group", group))]
    everyone = _resource_rules(
        kubectl("create", "--validate=false", "-f", "-", "-o", "json", *as_nobody, input=review)
    )
    assert ("authorization.k8s.io", "selfsubjectrulesreviews", "create") in everyone
    expected: set[tuple[str, str, str]] = set()
    role = kubectl.json("get", "role", installed.fullname, "-n", installed.watched[1])
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    expected.add((group, resource, verb))
    assert granted - everyone == expected
    assert not any(verb == "*" or resource == "*" for _, resource, verb in granted - everyone)
    assert {verb for _, resource, verb in granted if resource == "secrets"} == {"get"}


def test_helm_uninstall_removes_the_release_but_keeps_crds(
    control_plane: ControlPlane, kubectl: Kubectl, peering_crds: None, namespaces: dict[str, str]
) -> None:
    release = unique_name("gone")[:20]
    helm_cli(
        control_plane,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespaces["release"],
        "--set",
        "replicaCount=2",
    )
    kubectl("get", "clusterrole", f"{release}-streampipe")
    kubectl("get", "clusterkopfpeering", f"{release}-streampipe")
    helm_cli(control_plane, "uninstall", release, "--namespace", namespaces["release"])
    for what in (f"clusterrole/{release}-streampipe", f"clusterkopfpeering/{release}-streampipe"):
        assert kubectl("get", what, check=False).returncode != 0, f"{what} survived helm uninstall"
    assert (
        kubectl(
            "get", "deployment", f"{release}-streampipe", "-n", namespaces["release"], check=False
        ).returncode
        != 0
    )
    # Helm never deletes CRDs from crds/: StreamPipelines (and their Redis data) survive an uninstall.
    kubectl("get", "crd", CRD_NAME, *PEERING_CRDS)
    kept = json.loads(kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)["metadata"]["annotations"]
    # ... and it says so to Helm (templated CRDs) and to Argo CD (no prune, no delete with the app).
    assert kept["helm.sh/resource-policy"] == "keep"
    assert kept["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"
