"""docs/install.md, word for word, on a one-node cluster (tests/support/cluster.py).

Each scenario of the page (``tests/cluster/install_guide.py`` parses them) starts on a fresh cluster:
no release, no streampipe CRDs, no ``shop``/``billing``/``streampipe-system`` namespaces, an empty
Valkey. Every command of its steps runs as written, through bash in the repository root with the
cluster's environment, and must exit 0; after each step the outcome the page promises is checked with
kubectl's JSON and on the Valkey (Deployments available, Ready conditions, events processed, CRDs kept
or gone).

The page's precondition, a Redis that pods reach as ``redis.shop.svc:6379``, is the session's Valkey
on the node behind a Service ``redis`` in ``shop``, created right before the step ``pipeline`` (the
first moment ``shop`` exists in every scenario that has that step; the page's own throwaway-Redis block
is tagged ``skip`` for that reason). Nothing on the page is rewritten: it has no placeholders, so the
runner has no substitution table.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

import redis
from streampipe_operator import api
from streampipe_operator.api import Reason
from streampipe_operator.kube.deployments import deployment_name
from streampipe_worker.deadletter import DeadLetterEnvelope
from streampipe_worker.router import InvalidEventError
from tests.cluster.install_guide import ROOT, SCENARIOS, Command, Step, load_guide
from tests.support.cluster import expose_on_node
from tests.support.controlplane import Kubectl, condition
from tests.support.polling import eventually

pytestmark = pytest.mark.cluster

GUIDE = load_guide()
# Generous bounds on waits (never speed assertions): a cold node pulls nothing, but starts Python.
COMMAND_TIMEOUT = 600.0
WITHIN = 180.0

RELEASE = "streampipe"
RELEASE_NAMESPACE = "streampipe-system"
OPERATOR = "streampipe"  # the chart's Deployment: the release name, as the page's rollout status says
NAMESPACES = ("shop", "billing", RELEASE_NAMESPACE)
PIPELINE_CRD = "streampipelines.streampipe.dev"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
REDIS_SERVICE, REDIS_PORT = "redis", 6379  # redis.shop.svc:6379, as examples/minimal.yaml names it


class Cluster(Protocol):
    """What this test uses of the session's ``cluster`` fixture."""

    @property
    def kubeconfig(self) -> Path: ...
    @property
    def kubectl(self) -> Kubectl: ...
    @property
    def env(self) -> dict[str, str]: ...
    @property
    def node_ip(self) -> str: ...
    @property
    def images(self) -> dict[str, str]: ...


class Valkey(Protocol):
    """What this test uses of the session's ``cluster_valkey`` fixture."""

    @property
    def port(self) -> int: ...
    def client(self) -> redis.Redis: ...


def example(relative: str) -> api.StreamPipeline:
    document = next(d for d in yaml.safe_load_all((ROOT / relative).read_text()) if d)
    return api.StreamPipeline.model_validate(document)


# The pipelines the page applies, read from the same files, so the checks follow the examples.
ORDERS = example("examples/minimal.yaml")
QUICKSTART = example("examples/quickstart/pipeline.yaml")


def name_of(pipeline: api.StreamPipeline) -> str:
    assert pipeline.metadata.name, "the examples the page applies are named"
    return pipeline.metadata.name


@dataclass(frozen=True)
class Run:
    """One scenario in progress: what its hooks and checks look at."""

    scenario: str
    cluster: Cluster
    valkey: Valkey

    @property
    def kubectl(self) -> Kubectl:
        return self.cluster.kubectl

    def get(self, *args: str) -> Any:
        """The object as JSON, or None when it does not exist."""
        out = self.kubectl("get", *args, "--ignore-not-found", "-o", "json").stdout
        return json.loads(out) if out.strip() else None


# --- reading what the cluster and the Valkey say -------------------------------------------------


def available_deployment(run: Run, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment once every wanted replica is available and updated, else None."""
    deployment: dict[str, Any] | None = run.get("deployment", name, "-n", namespace)
    if deployment is None:
        return None
    status, wanted = deployment.get("status", {}), deployment["spec"]["replicas"]
    done = (status.get("availableReplicas", 0), status.get("updatedReplicas", 0))
    return deployment if wanted >= 1 and done == (wanted, wanted) else None


def wait_available(run: Run, namespace: str, name: str) -> dict[str, Any]:
    deployment = eventually(
        lambda: available_deployment(run, namespace, name),
        within=WITHIN,
        every=1.0,
        what=f"Deployment {namespace}/{name} available",
    )
    assert deployment is not None  # eventually returns only a truthy result
    return deployment


def images_of(deployment: dict[str, Any]) -> list[str]:
    return [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]


def wait_gone(run: Run, *args: str) -> None:
    eventually(lambda: run.get(*args) is None, within=WITHIN, every=1.0, what=f"{' '.join(args)} gone")


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(run: Run, stream: str) -> list[dict[str, str]]:
    """The fields of every entry of ``stream``, as text whether or not the client decodes."""
    with run.valkey.client() as client:
        return [{text(k): text(v) for k, v in fields.items()} for _, fields in client.xrange(stream)]


def group_backlogs(run: Run, stream: str) -> dict[str, tuple[int | None, int]]:
    """group -> (lag, pending) as XINFO GROUPS has them."""
    with run.valkey.client() as client:
        return {text(g["name"]): (g.get("lag"), int(g["pending"])) for g in client.xinfo_groups(stream)}


def assert_pipeline_ready(run: Run, pipeline: api.StreamPipeline) -> None:
    obj = run.get("streampipeline", name_of(pipeline), "-n", "shop")
    assert obj is not None
    ready = condition(obj, api.ConditionType.READY)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", Reason.RECONCILED), ready


def assert_workers_run(run: Run, pipeline: api.StreamPipeline, image: str) -> None:
    for group in pipeline.spec.groups:
        deployment = wait_available(run, "shop", deployment_name(name_of(pipeline), group.name))
        assert images_of(deployment) == [image]


# --- hooks: what the page assumes exists ----------------------------------------------------------


def provide_redis(run: Run) -> None:
    expose_on_node(run.kubectl, "shop", REDIS_SERVICE, REDIS_PORT, run.valkey.port)


BEFORE: dict[str, Callable[[Run], None]] = {"pipeline": provide_redis}


# --- checks: what the page promises after each step -----------------------------------------------


def after_install(run: Run) -> None:
    deployment = wait_available(run, RELEASE_NAMESPACE, OPERATOR)
    # The chart's default image is the one the page relies on: no --set image.* anywhere.
    assert images_of(deployment) == [run.cluster.images["operator"]]
    crd = run.get("crd", PIPELINE_CRD)
    assert crd is not None
    assert (condition(crd, "Established") or {}).get("status") == "True"
    release_roles = ("-l", f"app.kubernetes.io/instance={RELEASE}")
    if run.scenario == "ha":
        assert deployment["spec"]["replicas"] == 2
        assert run.get("clusterkopfpeering", RELEASE) is not None
    if run.scenario == "namespaced":
        assert run.kubectl.json("get", "clusterroles", *release_roles)["items"] == []
        for namespace in ("shop", "billing"):
            assert run.kubectl.json("get", "roles", "-n", namespace, *release_roles)["items"], namespace
    else:
        assert run.kubectl.json("get", "clusterroles", *release_roles)["items"]


def after_namespace(run: Run) -> None:
    assert run.get("namespace", "shop") is not None


def after_pipeline(run: Run) -> None:
    assert_pipeline_ready(run, ORDERS)
    assert_workers_run(run, ORDERS, run.cluster.images["team"])
    spec = ORDERS.spec
    good = {"type": "order.created", "version": "1", "payload": json.dumps({"order_id": 1, "total": 9.5})}
    unknown = {"type": "order.refunded", "version": "1", "payload": "{}"}
    with run.valkey.client() as client:
        client.xadd(spec.stream, good)
        client.xadd(spec.stream, unknown)
    # The team image's Router handled both: the order is acknowledged, the unknown type is a dead letter.
    eventually(
        lambda: group_backlogs(run, spec.stream) == {g.name: (0, 0) for g in spec.groups},
        within=WITHIN,
        what="the billing group settles both events",
    )
    dead = [DeadLetterEnvelope.from_fields(fields) for fields in entries(run, spec.dead_letter_stream)]
    assert [(d.type, d.group, d.exception) for d in dead] == [
        ("order.refunded", "billing", f"{InvalidEventError.__module__}.{InvalidEventError.__qualname__}")
    ]


def after_quickstart(run: Run) -> None:
    assert_pipeline_ready(run, QUICKSTART)
    assert_workers_run(run, QUICKSTART, run.cluster.images["quickstart"])
    order = {"order_id": 1, "customer": "ada", "item": "teapot", "amount": 12.5}
    with run.valkey.client() as client:
        client.xadd(
            QUICKSTART.spec.stream, {"type": "order.placed", "version": "1", "payload": json.dumps(order)}
        )

    # The quickstart handlers write a completion record per entry (quickstart_shop/completions.py).
    done = QUICKSTART.spec.stream + ":done"
    groups = {g.name for g in QUICKSTART.spec.groups}
    eventually(
        lambda: {record["group"] for record in entries(run, done)} == groups,
        within=WITHIN,
        what="both quickstart groups handle the order",
    )


def after_upgrade(run: Run) -> None:
    after_install(run)
    assert_pipeline_ready(run, ORDERS)


def after_delete_pipelines(run: Run) -> None:
    assert run.kubectl.json("get", "streampipelines", "-A")["items"] == []
    for group in ORDERS.spec.groups:
        wait_gone(run, "deployment", deployment_name(name_of(ORDERS), group.name), "-n", "shop")
    # deletionPolicy Retain (the default): the stream keeps its groups.
    assert set(group_backlogs(run, ORDERS.spec.stream)) == {g.name for g in ORDERS.spec.groups}


def after_uninstall(run: Run) -> None:
    wait_gone(run, "deployment", OPERATOR, "-n", RELEASE_NAMESPACE)
    assert run.get("crd", PIPELINE_CRD) is not None, "Helm never deletes CRDs"
    left = {item["metadata"]["name"] for item in run.kubectl.json("get", "streampipelines", "-A")["items"]}
    if run.scenario == "finalizer-by-hand":
        # Not deleted before the uninstall: the pipeline stays, its workers keep running unmanaged.
        assert left == {name_of(ORDERS)}
        assert_workers_run(run, ORDERS, run.cluster.images["team"])
    else:
        assert left == set()


def after_remove_crds(run: Run) -> None:
    for crd in (PIPELINE_CRD, *PEERING_CRDS):
        wait_gone(run, "crd", crd)


def after_remove_finalizer(run: Run) -> None:
    wait_gone(run, "streampipeline", name_of(ORDERS), "-n", "shop")
    for group in ORDERS.spec.groups:
        wait_gone(run, "deployment", deployment_name(name_of(ORDERS), group.name), "-n", "shop")
    # The operator's clean-up was skipped: the Redis data is left as with Retain.
    assert set(group_backlogs(run, ORDERS.spec.stream)) == {g.name for g in ORDERS.spec.groups}


# Every step of the page needs an entry: a new step fails here until someone says what it promises.
AFTER: dict[str, Callable[[Run], None]] = {
    "install": after_install,
    "namespace": after_namespace,
    "pipeline": after_pipeline,
    "quickstart": after_quickstart,
    "upgrade": after_upgrade,
    "delete-pipelines": after_delete_pipelines,
    "uninstall": after_uninstall,
    "remove-crds": after_remove_crds,
    "remove-finalizer": after_remove_finalizer,
}


# --- running the page -----------------------------------------------------------------------------


def run_command(run: Run, step: Step, command: Command) -> None:
    done = subprocess.run(
        command.text,
        shell=True,
        executable="/bin/bash",
        cwd=ROOT,
        env=run.cluster.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    where = f"docs/install.md line {command.lines[0]} ({run.scenario}, step {step.name})"
    assert done.returncode == 0, (
        f"{where}: `{command.text}` exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )


def reset_cluster(cluster: Cluster, valkey: Valkey) -> None:
    """Remove whatever any scenario of the page creates, whether it finished or not."""
    kubectl = cluster.kubectl
    if kubectl("get", "crd", PIPELINE_CRD, "--ignore-not-found", "-o", "name").stdout.strip():
        # Finalizers go too: the operator may be gone already, and clean-up must not wait on it.
        kubectl("delete", "streampipelines", "--all", "-A", "--wait=false")
        for item in kubectl.json("get", "streampipelines", "-A")["items"]:
            meta = item["metadata"]
            kubectl(
                "patch", "streampipeline", meta["name"], "-n", meta["namespace"], "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    subprocess.run(
        ["helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", "--wait"],
        env=cluster.env,
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )
    kubectl("delete", "namespace", *NAMESPACES, "--ignore-not-found", "--wait=true", timeout=COMMAND_TIMEOUT)
    kubectl(
        "delete", "-f", str(ROOT / "charts" / "streampipe" / "crds"), "--ignore-not-found", "--wait=true",
        timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    with valkey.client() as client:
        client.flushall()


@pytest.fixture
def fresh_cluster(cluster: Cluster, cluster_valkey: Valkey) -> Iterator[None]:
    reset_cluster(cluster, cluster_valkey)
    yield
    reset_cluster(cluster, cluster_valkey)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.usefixtures("fresh_cluster")
def test_install_guide(scenario: str, cluster: Cluster, cluster_valkey: Valkey) -> None:
    run = Run(scenario, cluster, cluster_valkey)
    for step in GUIDE.scenario(scenario):
        if step.name in BEFORE:
            BEFORE[step.name](run)
        for command in step.commands:
            run_command(run, step, command)
        AFTER[step.name](run)
