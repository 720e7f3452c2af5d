"""The operator and its workers as real pods on the one-node cluster (tests/support/cluster.py).

One Helm install per module (the chart's default image, two peered replicas) into a namespace that
enforces Pod Security ``restricted``, and one StreamPipeline in another such namespace: the quickstart
image's fulfilment handler (slow on purpose: ``QUICKSTART_WORK_MS``), scaling 0 -> 3 on backlog. A
second, partitioned pipeline with per-key ordering lives through one test of its own (section 7). Each
test produces its own range of order numbers (streampipe_operator.local.demo decides what each one
is: fine, flaky once, or poison) and checks the outcome on Valkey: every order has a completion record
(``<stream>:done``, quickstart_shop/completions.py) or a dead-letter envelope, and the group ends with
nothing pending and no lag. The tests run in file order and share the install; the last one uninstalls.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import pytest
from kubernetes import config

import redis
from streampipe_operator import api
from streampipe_operator.kube.deployments import deployment_name
from streampipe_operator.local.demo import order_event, order_kind
from streampipe_worker.deadletter import DeadLetterEnvelope, exception_name
from streampipe_worker.ownership import owner_key
from streampipe_worker.partitions import PartitionLayout
from streampipe_worker.producer import Producer
from streampipe_worker.router import InvalidEventError, PermanentError
from tests.support.cluster import Cluster, expose_on_node
from tests.support.controlplane import Kubectl, condition
from tests.support.polling import eventually
from tests.support.servers import ROOT, ServerProcess

T = TypeVar("T")
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RELEASE = "streampipe-ha"  # contains the chart's name: the operator's Deployment is named after it
OPERATOR_NAMESPACE = "sp-operator"
SHOP = "sp-shop"
REDIS_SERVICE, REDIS_PORT = "redis", 6379
PIPELINE = "orders"
GROUP = "fulfilment"
WORKERS = deployment_name(PIPELINE, GROUP)
STREAM = "{cluster}:orders"
DONE_SUFFIX = ":done"  # quickstart_shop.completions.SUFFIX
DONE = STREAM + DONE_SUFFIX
DEAD_LETTERS = STREAM + ":dlq"
MAX_REPLICAS = 3
CLAIM_IDLE_SECONDS = 4
WORK_MS = 100  # per order, one at a time: a batch keeps a worker busy for BATCH_SIZE / 10 seconds
# A worker stopped mid-batch hands back the entries it has not started; it has none only while it
# runs a batch's last entry (1 in BATCH_SIZE of the time).
BATCH_SIZE = 20
BACKLOG_AT_SCALE_DOWN = 200  # undelivered orders when maxReplicas drops: ~7 s of work for 3 workers
PIPELINE_CRD = "streampipelines.streampipe.dev"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
WORKER_SELECTOR = f"streampipe.dev/pipeline={PIPELINE},streampipe.dev/group={GROUP}"
# Bounds on waits, never speed assertions.
WITHIN = 180.0
POD_START = 120.0


# --- reading the cluster --------------------------------------------------------------------------


def pod_ready(pod: dict[str, Any]) -> bool:
    ready = condition(pod, "Ready")
    return ready is not None and ready["status"] == "True" and "deletionTimestamp" not in pod["metadata"]


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def pod_summary(items: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"{p['metadata']['name']}: {p['status'].get('phase')}"
        f"{' ready' if pod_ready(p) else ''}{' terminating' if 'deletionTimestamp' in p['metadata'] else ''}"
        for p in items
    ]


def get(kubectl: Kubectl, *args: str) -> Any:
    """The object as JSON, or None when it does not exist."""
    out = kubectl("get", *args, "--ignore-not-found", "-o", "json").stdout
    return json.loads(out) if out.strip() else None


# --- reading Valkey -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One completion record the quickstart handler wrote."""

    entry_id: str
    consumer: str
    deliveries: int


def stream_fields(valkey: redis.Redis, key: str) -> list[dict[str, str]]:
    """The fields of every entry of ``key`` (the session's clients decode replies)."""
    return [fields for _, fields in cast("list[tuple[str, dict[str, str]]]", valkey.xrange(key))]


def completions(valkey: redis.Redis) -> dict[str, list[Completion]]:
    """Entry id -> its completion records (more than one when an entry was processed twice)."""
    done: dict[str, list[Completion]] = {}
    for fields in stream_fields(valkey, DONE):
        if fields["group"] == GROUP:
            record = Completion(fields["id"], fields["consumer"], int(fields["deliveries"]))
            done.setdefault(record.entry_id, []).append(record)
    return done


def dead_letters(valkey: redis.Redis, key: str = DEAD_LETTERS) -> dict[str, DeadLetterEnvelope]:
    """Original entry id -> its envelope in the dead-letter stream ``key``."""
    return {
        envelope.original_id: envelope
        for envelope in map(DeadLetterEnvelope.from_fields, stream_fields(valkey, key))
    }


def group_state(valkey: redis.Redis, stream: str = STREAM, name: str = GROUP) -> tuple[int | None, int]:
    """(lag, pending) of the group, as XINFO GROUPS has them."""
    group = next(g for g in valkey.xinfo_groups(stream) if g["name"] == name)
    lag = group.get("lag")
    return (None if lag is None else int(lag), int(group["pending"]))


def pending_by_consumer(
    valkey: redis.Redis, stream: str = STREAM, group: str = GROUP
) -> dict[str, list[str]]:
    rows = valkey.xpending_range(stream, group, "-", "+", 10_000)
    held: dict[str, list[str]] = {}
    for row in rows:
        held.setdefault(str(row["consumer"]), []).append(str(row["message_id"]))
    return held


# --- the module's install -------------------------------------------------------------------------


@dataclass
class Install:
    """The module's operator release and pipeline, and the readers the tests share."""

    cluster: Cluster
    valkey: ServerProcess
    redis: redis.Redis

    @property
    def kubectl(self) -> Kubectl:
        return self.cluster.kubectl

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["helm", *args], env=self.cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done

    def deployment(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = get(self.kubectl, "deployment", WORKERS, "-n", SHOP)
        return found

    def pipeline(self) -> dict[str, Any]:
        found: dict[str, Any] = self.kubectl.json("get", "streampipeline", PIPELINE, "-n", SHOP)
        return found

    def workers(self) -> list[dict[str, Any]]:
        return pods(self.kubectl, SHOP, WORKER_SELECTOR)

    def operator_pods(self) -> list[dict[str, Any]]:
        return pods(self.kubectl, OPERATOR_NAMESPACE, OPERATOR_SELECTOR)

    def operator_logs(self, lines: int = 25) -> str:
        done = self.kubectl(
            "logs", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR, "--prefix", f"--tail={lines}",
            check=False,
        )  # fmt: skip
        return done.stdout[-5000:] or done.stderr

    def state(self) -> str:
        """What a failure message shows: the Deployment, pods, pipeline status, group, operator logs."""
        deployment = self.deployment() or {}
        lag, pending = group_state(self.redis) if self.redis.exists(STREAM) else (None, 0)
        try:
            status = self.pipeline().get("status", {})
        except Exception as exc:  # the state is shown on failures: never fail while showing it
            status = {"error": str(exc)}
        return (
            f"\n--- deployment {WORKERS}: spec.replicas={deployment.get('spec', {}).get('replicas')} "
            f"status={deployment.get('status')}"
            f"\n--- worker pods: {pod_summary(self.workers())}"
            f"\n--- operator pods: {pod_summary(self.operator_pods())}"
            f"\n--- group {GROUP}: lag={lag} pending={pending} held={pending_by_consumer(self.redis)}"
            f"\n--- pipeline conditions: "
            f"{[(c['type'], c['status'], c['reason']) for c in status.get('conditions', [])]}"
            f" groups={status.get('groups')}"
            f"\n--- operator logs:\n{self.operator_logs()}"
            f"\n--- kubelet log:\n{self.cluster.log_tail('kubelet', 1500)}"
        )

    def wait(self, probe: Callable[[], T], what: str, within: float = WITHIN) -> T:
        """``eventually`` with the cluster's state in the failure message."""
        try:
            return eventually(probe, within=within, every=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.state()}") from None

    def ready_workers(self) -> int:
        return sum(1 for pod in self.workers() if pod_ready(pod))

    def replicas(self) -> int:
        deployment = self.deployment()
        return -1 if deployment is None else int(deployment["spec"]["replicas"])

    def wait_scaled_to_zero(self) -> None:
        self.wait(
            lambda: self.replicas() == 0 and not self.workers(),
            "the worker Deployment scaled to 0 and its pods gone",
        )

    def set_max_replicas(self, count: int) -> None:
        patch = {"spec": {"groups": [pipeline_spec(self.cluster)["groups"][0] | {"scaling": scaling(count)}]}}
        self.kubectl("patch", "streampipeline", PIPELINE, "-n", SHOP, "--type=merge", "-p", json.dumps(patch))

    def produce(self, order_ids: Sequence[int]) -> dict[int, str]:
        """Order number -> entry id; the poison orders go as they are (no router validates them)."""
        ids = Producer(self.redis, STREAM).send_many(order_event(order_id) for order_id in order_ids)
        return dict(zip(order_ids, ids, strict=True))

    def wait_settled(self, produced: dict[int, str]) -> tuple[dict[str, list[Completion]], dict[str, Any]]:
        """Wait until every produced entry is processed or dead-lettered and the group is empty."""

        def settled() -> bool:
            done, dead = completions(self.redis), dead_letters(self.redis)
            missing = [o for o, i in produced.items() if i not in done and i not in dead]
            assert not missing, f"{len(missing)} orders neither processed nor dead-lettered: {missing[:10]}"
            assert group_state(self.redis) == (0, 0), f"group (lag, pending) = {group_state(self.redis)}"
            return True

        self.wait(settled, f"{len(produced)} orders processed or dead-lettered, group drained")
        return completions(self.redis), dead_letters(self.redis)


def scaling(max_replicas: int) -> dict[str, Any]:
    return {
        "minReplicas": 0,
        "maxReplicas": max_replicas,
        "backlogPerReplica": 20,
        "pollInterval": "1s",
        "scaleDownStabilization": "5s",
    }


def pipeline_spec(cluster: Cluster) -> dict[str, Any]:
    return {
        "redis": {"url": f"redis://{REDIS_SERVICE}.{SHOP}.svc:{REDIS_PORT}/0"},
        "stream": STREAM,
        "retry": {
            "maxDeliveries": 3,
            "backoff": {"initial": "200ms", "multiplier": 2.0, "max": "1s"},
            "claimIdle": f"{CLAIM_IDLE_SECONDS}s",
        },
        "groups": [
            {
                "name": GROUP,
                "startId": "0",
                "handler": "quickstart_shop.fulfilment:router",
                "image": cluster.images["quickstart"],
                "batchSize": BATCH_SIZE,
                "scaling": scaling(MAX_REPLICAS),
                "template": {
                    "env": [{"name": "QUICKSTART_WORK_MS", "value": str(WORK_MS)}],
                    "terminationGracePeriodSeconds": 15,
                },
            }
        ],
    }


def pipeline_manifest(cluster: Cluster) -> dict[str, Any]:
    manifest = {
        "apiVersion": "streampipe.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": PIPELINE, "namespace": SHOP},
        "spec": pipeline_spec(cluster),
    }
    api.StreamPipeline.model_validate(manifest)  # what we apply is a valid pipeline by our own models
    return manifest


def restricted_namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}


def clean_up(cluster: Cluster, valkey: redis.Redis) -> None:
    """Remove what this module creates, whether its tests finished or not (CRDs stay: Helm's rule)."""
    kubectl = cluster.kubectl
    subprocess.run(
        ["helm", "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", "--wait"],
        env=cluster.env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    if get(kubectl, "crd", PIPELINE_CRD) is not None:
        for item in kubectl.json("get", "streampipelines", "-n", SHOP)["items"]:
            kubectl(
                "patch", "streampipeline", item["metadata"]["name"], "-n", SHOP, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    kubectl("delete", "namespace", SHOP, OPERATOR_NAMESPACE, "--ignore-not-found", "--wait=true", timeout=300)
    valkey.delete(STREAM, DONE, DEAD_LETTERS, *valkey.keys(f"*{ORDERED}*"))  # section 7's pipeline too


@pytest.fixture(scope="module")
def install(cluster: Cluster, cluster_valkey: ServerProcess) -> Iterator[Install]:
    with cluster_valkey.client() as valkey:
        clean_up(cluster, valkey)
        try:
            kubectl = cluster.kubectl
            kubectl.apply([restricted_namespace(OPERATOR_NAMESPACE), restricted_namespace(SHOP)])
            installed = Install(cluster, cluster_valkey, valkey)
            installed.helm(
                "install", RELEASE, "charts/streampipe", "--namespace", OPERATOR_NAMESPACE,
                "--set", "replicaCount=2", "--wait", "--timeout", "5m",
            )  # fmt: skip
            expose_on_node(kubectl, SHOP, REDIS_SERVICE, REDIS_PORT, cluster_valkey.port)
            kubectl.apply(pipeline_manifest(cluster))
            yield installed
        finally:
            clean_up(cluster, valkey)


def kinds(produced: dict[int, str], *wanted: str) -> dict[int, str]:
    return {order: entry for order, entry in produced.items() if order_kind(order) in wanted}


def assert_accounted(
    produced: dict[int, str], done: dict[str, list[Completion]], dead: dict[str, DeadLetterEnvelope]
) -> None:
    """Every order processed or dead-lettered; the poison ones (and only they) dead-lettered."""
    lost = [order for order, entry in produced.items() if entry not in done and entry not in dead]
    assert lost == []
    poison = kinds(produced, "too_expensive", "cursed", "invalid")
    assert {order for order, entry in produced.items() if entry in dead} == set(poison)
    assert not [order for order, entry in poison.items() if entry in done], "a poison order was processed"


# --- 1, 2: the install ----------------------------------------------------------------------------


def test_operator_runs_under_its_service_account_in_a_restricted_namespace(install: Install) -> None:
    kubectl = install.kubectl
    namespace = kubectl.json("get", "namespace", OPERATOR_NAMESPACE)
    assert namespace["metadata"]["labels"].items() >= RESTRICTED.items()
    # The namespace really enforces: a pod as `kubectl run` makes it (no security context) is refused.
    refused = kubectl(
        "run", "unrestricted", "-n", OPERATOR_NAMESPACE, "--dry-run=server", "--restart=Never",
        f"--image={install.cluster.images['operator']}", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr

    deployment = kubectl.json("get", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE)
    service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert get(kubectl, "serviceaccount", service_account, "-n", OPERATOR_NAMESPACE) is not None
    install.wait(
        lambda: len([pod for pod in install.operator_pods() if pod_ready(pod)]) == 2,
        "both operator pods Ready",
    )
    for pod in install.operator_pods():
        spec = pod["spec"]
        assert spec["serviceAccountName"] == service_account
        assert [c["image"] for c in spec["containers"]] == [install.cluster.images["operator"]]
        assert pod_ready(pod), pod_summary([pod])
        # Ready means its probes passed; the container has not been restarted by its liveness probe.
        assert [s["restartCount"] for s in pod["status"]["containerStatuses"]] == [0]
    # Two replicas are peered: both keep alive in the release's ClusterKopfPeering.
    install.wait(
        lambda: set(peers(install)) == {p["metadata"]["name"] for p in install.operator_pods()},
        "both operator pods in the peering object",
    )


def peers(install: Install) -> dict[str, int]:
    """Peer id (the pod name, kopf's POD_ID) -> priority, from the release's ClusterKopfPeering."""
    peering = get(install.kubectl, "clusterkopfpeering", RELEASE) or {}
    return {peer: int(record["priority"]) for peer, record in (peering.get("status") or {}).items()}


def active_operator(install: Install) -> str:
    """The pod that acts: the live peer with the highest priority."""
    live = {
        p["metadata"]["name"] for p in install.operator_pods() if "deletionTimestamp" not in p["metadata"]
    }
    ranked = sorted(
        ((priority, peer) for peer, priority in peers(install).items() if peer in live), reverse=True
    )
    assert ranked, f"no live peer in the peering object: {peers(install)}"
    return ranked[0][1]


def test_pipeline_reaches_valkey_through_a_service(install: Install) -> None:
    def ready() -> bool:
        obj = install.pipeline()
        reachable = condition(obj, api.ConditionType.REDIS_REACHABLE) or {}
        ready = condition(obj, api.ConditionType.READY) or {}
        return reachable.get("status") == "True" and ready.get("status") == "True"

    install.wait(ready, "the pipeline Ready, Redis reachable from the operator pod")
    # The operator created the group on the node's Valkey, and the worker Deployment at minReplicas 0.
    assert group_state(install.redis) == (0, 0)
    assert install.replicas() == 0


# --- 3: scaling 0 -> N -> 0 with real pods --------------------------------------------------------


def test_workers_scale_from_zero_process_everything_and_scale_back(install: Install) -> None:
    install.wait_scaled_to_zero()
    orders = [*range(101, 381), 456]  # fine, flaky, too expensive (123), cursed (321), invalid (456)
    produced = install.produce(orders)

    most_ready = 0

    def scaled_up() -> bool:
        nonlocal most_ready
        most_ready = max(most_ready, install.ready_workers())
        return most_ready >= 2

    install.wait(scaled_up, "at least 2 Ready worker pods", within=POD_START)
    for pod in install.workers():
        spec = pod["spec"]
        assert [c["image"] for c in spec["containers"]] == [install.cluster.images["quickstart"]]
        assert spec["securityContext"]["runAsNonRoot"] is True
    done, dead = install.wait_settled(produced)
    assert_accounted(produced, done, dead)
    # Invalid payloads and permanent errors at once; the cursed item after maxDeliveries attempts.
    expected = {
        "invalid": (1, exception_name(InvalidEventError("-"))),
        "too_expensive": (1, exception_name(PermanentError("-"))),
        "cursed": (3, "quickstart_shop.fulfilment.WarehouseCrashError"),
    }
    for kind, outcome in expected.items():
        for order, entry in kinds(produced, kind).items():
            assert (dead[entry].deliveries, dead[entry].exception) == outcome, (order, dead[entry])
    # Several pods shared the work.
    assert len({record.consumer for records in done.values() for record in records}) >= 2
    install.wait_scaled_to_zero()


# --- 4: a scale-down: the kubelet SIGTERMs workers that hold work ---------------------------------


@dataclass
class PendingRecorder:
    """Polls XPENDING in the background: entry -> consumer -> the delivery counts seen while it held it."""

    valkey: ServerProcess
    seen: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with self.valkey.client() as valkey:
            while not self._stop.is_set():
                for row in valkey.xpending_range(STREAM, GROUP, "-", "+", 10_000):
                    owners = self.seen.setdefault(str(row["message_id"]), {})
                    owners.setdefault(str(row["consumer"]), set()).add(int(row["times_delivered"]))
                time.sleep(0.05)

    def __enter__(self) -> PendingRecorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@contextmanager
def max_replicas_lowered(install: Install, count: int) -> Iterator[None]:
    """``maxReplicas`` at ``count`` inside the block, back at ``MAX_REPLICAS`` after it, even on a
    failure: the later tests of the module need their three workers."""
    install.set_max_replicas(count)
    try:
        yield
    finally:
        install.set_max_replicas(MAX_REPLICAS)


def test_scale_down_hands_unstarted_entries_back(install: Install) -> None:
    install.wait_scaled_to_zero()
    with PendingRecorder(install.valkey) as recorder:
        produced = install.produce(range(1001, 1241))

        def all_busy() -> bool:
            held = pending_by_consumer(install.redis)
            return install.ready_workers() == MAX_REPLICAS and len(held) == MAX_REPLICAS

        install.wait(all_busy, f"{MAX_REPLICAS} Ready workers, each holding entries", within=POD_START)
        # The pods start one by one; on a slow node the first ones may have read most of the backlog
        # before the last is Ready. Top the undelivered backlog up so that every worker is still in
        # the middle of a batch, with entries not yet started, when the kubelet stops it.
        lag, _ = group_state(install.redis)
        top_up = max(0, BACKLOG_AT_SCALE_DOWN - (lag or 0))
        if top_up:
            produced |= install.produce(range(1241, 1241 + top_up))
        before = {pod["metadata"]["name"] for pod in install.workers()}
        with max_replicas_lowered(install, 1):
            install.wait(
                lambda: install.replicas() == 1 and len(install.workers()) == 1,
                "the Deployment scaled down to 1 and the other pods gone",
            )
            terminated = before - {pod["metadata"]["name"] for pod in install.workers()}
            assert len(terminated) == MAX_REPLICAS - 1
            done, dead = install.wait_settled(produced)
    assert_accounted(produced, done, dead)

    # Nothing stays under a stopped worker's name: what it held was finished, dead-lettered or given back.
    assert not set(pending_by_consumer(install.redis)) & terminated
    # Entries a stopped worker held on their first delivery and did not finish itself were handed back
    # unstarted (XCLAIM ... RETRYCOUNT 0: the delivery they never got is given back), so a peer ran them
    # on their first delivery; a crashed worker's entries, taken with XAUTOCLAIM after claimIdle, would
    # be on their second.
    fine = set(kinds(produced, "ok").values())
    handed_back = {
        entry: sorted(record.deliveries for record in done[entry])
        for entry, owners in recorder.seen.items()
        if entry in fine
        and any(1 in owners.get(pod, ()) for pod in terminated)
        and not any(record.consumer in terminated for record in done[entry])
    }
    assert handed_back, f"the stopped workers {terminated} held no unstarted entries: {recorder.seen}"
    assert {entry: d[0] for entry, d in handed_back.items()} == dict.fromkeys(handed_back, 1), (
        f"held by {terminated}: {recorder.seen}"
    )
    install.wait_scaled_to_zero()


# --- 5: a worker killed without a grace period ----------------------------------------------------


def test_force_deleted_worker_loses_nothing(install: Install) -> None:
    install.wait_scaled_to_zero()
    produced = install.produce(range(2001, 2201))
    victim: dict[str, list[str]] = {}

    def busy_worker() -> bool:
        ready = {pod["metadata"]["name"] for pod in install.workers() if pod_ready(pod)}
        held = {name: ids for name, ids in pending_by_consumer(install.redis).items() if name in ready}
        if len(ready) < 2 or not held:
            return False
        name = max(held, key=lambda n: len(held[n]))
        victim[name] = held[name]
        return True

    install.wait(busy_worker, "2 Ready workers, one holding entries", within=POD_START)
    [(name, held)] = victim.items()
    install.kubectl("delete", "pod", name, "-n", SHOP, "--force", "--grace-period=0")
    done, dead = install.wait_settled(produced)
    assert_accounted(produced, done, dead)
    assert not [entry for entry in held if entry not in done and entry not in dead]
    assert name not in pending_by_consumer(install.redis)
    install.wait_scaled_to_zero()


# --- 6: the active operator replica goes away while it scales -------------------------------------


def test_standby_operator_takes_over_and_keeps_scaling(install: Install) -> None:
    install.wait_scaled_to_zero()
    install.wait(lambda: len(peers(install)) == 2, "two peers keeping alive")
    produced = install.produce(range(3001, 3201))
    install.wait(lambda: install.replicas() >= 1, "the active operator starts scaling up", within=60)
    active = active_operator(install)
    install.kubectl("delete", "pod", active, "-n", OPERATOR_NAMESPACE, "--wait=false")

    def taken_over() -> bool:
        return active not in peers(install) and active_operator(install) != active

    install.wait(taken_over, f"another replica acting instead of {active}", within=90)
    install.wait(
        lambda: install.ready_workers() == MAX_REPLICAS, f"{MAX_REPLICAS} Ready workers", within=POD_START
    )
    done, dead = install.wait_settled(produced)
    assert_accounted(produced, done, dead)
    # Only the new active replica can scale down once the backlog is gone.
    install.wait_scaled_to_zero()
    assert active not in {pod["metadata"]["name"] for pod in install.operator_pods()}


# --- 7: a partitioned PerKey pipeline under a worker-pod kill storm -------------------------------

ORDERED = "shipments"  # a second pipeline, beside the first, in the same namespace
ORDERED_GROUP = "dispatch"
ORDERED_WORKERS = deployment_name(ORDERED, ORDERED_GROUP)
ORDERED_SELECTOR = f"streampipe.dev/pipeline={ORDERED},streampipe.dev/group={ORDERED_GROUP}"
PARTITION_COUNT = 3
ORDERED_MAX_REPLICAS = 5  # above the count: PerKey caps the Deployment at PARTITION_COUNT
KEY_FIELD = "customer"
LEASE_DURATION = "3s"  # a killed lease holder stalls its partitions 2-4 s
KILLS = 3
WAVE = 300  # orders produced to wake the group, before each kill, and once more after the last


def customer_of(order_id: int) -> str:
    return f"c-{order_id % 23}"


def ordered_manifest(cluster: Cluster) -> api.StreamPipeline:
    group = pipeline_spec(cluster)["groups"][0] | {
        "name": ORDERED_GROUP,
        "concurrency": 2,
        "scaling": scaling(ORDERED_MAX_REPLICAS) | {"minReplicas": 1},  # a worker runs when it is deleted
        "template": {
            "env": [{"name": "QUICKSTART_WORK_MS", "value": "40"}],
            "terminationGracePeriodSeconds": 15,
        },
    }
    spec = pipeline_spec(cluster) | {
        "stream": ORDERED,
        # Each kill counts a delivery for every entry its victim had read (started or not): up to
        # KILLS + 1 for an entry the storm keeps hitting, under the crash-loop guard at 5.
        "retry": pipeline_spec(cluster)["retry"] | {"maxDeliveries": KILLS + 2},
        "partitions": {
            "count": PARTITION_COUNT,
            "key": KEY_FIELD,
            "ordering": "PerKey",
            "leaseDuration": LEASE_DURATION,
        },
        "deletionPolicy": "Delete",
        "groups": [group],
    }
    return api.StreamPipeline.model_validate(
        {
            "apiVersion": "streampipe.dev/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"name": ORDERED, "namespace": SHOP},
            "spec": spec,
        }
    )


def ordered_layout() -> PartitionLayout:
    return PartitionLayout(ORDERED, PARTITION_COUNT, KEY_FIELD)


@dataclass(frozen=True)
class Placed:
    """Where an order went: its partition and its entry id there (ids repeat across partitions)."""

    partition: int
    entry_id: str


def lease_holders(valkey: redis.Redis, layout: PartitionLayout) -> list[str | None]:
    """Each partition's lease holder (its consumer name, the pod's), None while it has none."""
    values = [valkey.get(owner_key(layout, index)) for index in range(layout.count)]
    return [str(value).rpartition("|")[0] if value else None for value in values]


def test_perkey_partitions_survive_a_worker_pod_kill_storm(install: Install) -> None:
    """Three partitions, ordering PerKey, as real pods: every few hundred orders a worker that holds a
    lease and has entries in flight is force-deleted (SIGKILL, no grace). Nothing is lost, the poison
    orders are dead-lettered in their own partitions, duplicates stay under kills x batch x count, and
    every customer's orders finish in the order they were produced."""
    kubectl, valkey, layout = install.kubectl, install.redis, ordered_layout()
    manifest = ordered_manifest(install.cluster)
    assert manifest.spec.partition_layout == layout
    kubectl.apply(manifest.model_dump(mode="json", by_alias=True, exclude_none=True))

    def ready() -> bool:
        obj = kubectl.json("get", "streampipeline", ORDERED, "-n", SHOP)
        return (condition(obj, api.ConditionType.READY) or {}).get("status") == "True"

    install.wait(ready, f"the pipeline {ORDERED} Ready")
    producer = Producer(valkey, layout)
    produced: dict[int, Placed] = {}
    replicas_seen: set[int] = set()

    def workers() -> list[dict[str, Any]]:
        return pods(kubectl, SHOP, ORDERED_SELECTOR)

    def produce(count: int) -> None:
        """The next ``count`` order numbers, each routed by its customer."""
        first = 5001 + len(produced)
        order_ids = range(first, first + count)
        events = [
            order_event(order_id).model_copy(update={"fields": {KEY_FIELD: customer_of(order_id)}})
            for order_id in order_ids
        ]
        ids = producer.send_many(events)
        for order_id, entry_id in zip(order_ids, ids, strict=True):
            produced[order_id] = Placed(layout.partition_for(customer_of(order_id)), entry_id)

    def busy_holder() -> str | None:
        """A Ready pod that holds a partition's lease and has entries of it pending."""
        deployment = get(kubectl, "deployment", ORDERED_WORKERS, "-n", SHOP)
        if deployment is not None:
            replicas_seen.add(int(deployment["spec"]["replicas"]))
        ready = {pod["metadata"]["name"] for pod in workers() if pod_ready(pod)}
        for index, holder in enumerate(lease_holders(valkey, layout)):
            if holder in ready and valkey.xpending_range(
                layout.stream(index), ORDERED_GROUP, "-", "+", 1, holder
            ):
                return holder
        return None

    def owners_shown() -> bool:
        """status.partitions[].owner names each partition's lease holder, a Ready worker pod."""
        status = kubectl.json("get", "streampipeline", ORDERED, "-n", SHOP).get("status") or {}
        shown = [partition.get("owner") for partition in status.get("partitions") or []]
        ready = {pod["metadata"]["name"] for pod in workers() if pod_ready(pod)}
        return shown == lease_holders(valkey, layout) and set(shown) <= ready

    killed: list[str] = []
    produce(WAVE)
    install.wait(owners_shown, "each partition's owner in the status, a Ready worker pod", POD_START)
    for _ in range(KILLS):
        produce(WAVE)
        victim = install.wait(
            busy_holder, f"a Ready worker holding a lease, with entries pending (killed: {killed})", POD_START
        )
        kubectl("delete", "pod", victim, "-n", SHOP, "--force", "--grace-period=0", "--wait=false")
        killed.append(victim)
    produce(WAVE)

    def settled() -> bool:
        busy_holder()  # keeps sampling the Deployment's replicas
        done, dead = partition_completions(valkey, layout), partition_dead_letters(valkey, layout)
        missing = [o for o, placed in produced.items() if placed not in done and placed not in dead]
        assert not missing, f"{len(missing)} orders neither processed nor dead-lettered: {missing[:10]}"
        groups = [group_state(valkey, stream, ORDERED_GROUP) for stream in layout.streams]
        assert groups == [(0, 0)] * layout.count, f"(lag, pending) per partition: {groups}"
        return True

    install.wait(settled, f"{len(produced)} orders processed or dead-lettered, every partition drained")
    done, dead = partition_completions(valkey, layout), partition_dead_letters(valkey, layout)

    poison = {order for order in produced if order_kind(order) in ("too_expensive", "cursed", "invalid")}
    unexpected = {
        order: (dead[placed].deliveries, dead[placed].exception, dead[placed].error)
        for order, placed in produced.items()
        if placed in dead and order not in poison
    }
    assert unexpected == {}, f"killed {killed}"
    assert {order for order, placed in produced.items() if placed in dead} == poison
    assert not [order for order in poison if produced[order] in done], "a poison order was processed"
    duplicates = sum(len(records) - 1 for records in done.values())
    assert duplicates <= len(killed) * BATCH_SIZE * layout.count, duplicates
    # Per customer, each order's first completion comes after the first completion of every older one.
    assert key_order_violations(produced, done) == []
    # The operator capped the Deployment at the partition count, though the backlog asked for more.
    assert max(replicas_seen) == PARTITION_COUNT, replicas_seen
    # The killed pods' names hold nothing: no lease and no pending entry.
    assert not set(lease_holders(valkey, layout)) & set(killed)
    for stream in layout.streams:
        assert not set(pending_by_consumer(valkey, stream, ORDERED_GROUP)) & set(killed)

    # deletionPolicy Delete while the workers still run: the operator removes every key of the
    # pipeline (streams, dead-letter streams, leases, generations, registry, layout record), and the
    # workers, alive until Kubernetes removes their pods, write none of it back (the registry they
    # heartbeat into expires with them); only the quickstart handler's completion streams stay.
    assert workers(), "minReplicas 1 keeps a worker running"
    kubectl("delete", "streampipeline", ORDERED, "-n", SHOP, "--wait=true", timeout=120)
    install.wait(
        lambda: get(kubectl, "deployment", ORDERED_WORKERS, "-n", SHOP) is None and not workers(),
        "the worker Deployment and its pods gone",
    )
    completion_streams = {stream + DONE_SUFFIX for stream in layout.streams}
    install.wait(
        lambda: set(valkey.keys(f"*{ORDERED}*")) == completion_streams,
        "no key of the deleted pipeline left but the completion streams",
        within=30,
    )
    valkey.delete(*completion_streams)


def partition_completions(valkey: redis.Redis, layout: PartitionLayout) -> dict[Placed, list[str]]:
    """(partition, entry id) -> the ids of its completion records, in the order the partition's done
    stream has them (one partition's entries finish in that order)."""
    done: dict[Placed, list[str]] = {}
    for index, stream in enumerate(layout.streams):
        for record_id, fields in valkey.xrange(stream + DONE_SUFFIX):
            done.setdefault(Placed(index, fields["id"]), []).append(str(record_id))
    return done


def partition_dead_letters(valkey: redis.Redis, layout: PartitionLayout) -> dict[Placed, DeadLetterEnvelope]:
    return {
        Placed(index, entry_id): envelope
        for index in range(layout.count)
        for entry_id, envelope in dead_letters(valkey, layout.dead_letter(index)).items()
    }


def stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence)


def key_order_violations(produced: dict[int, Placed], done: dict[Placed, list[str]]) -> list[tuple[int, int]]:
    """(older, newer) order pairs of one customer whose first completions came the other way round.
    A customer's orders share a partition, whose done stream orders its completion records; a repeat
    of an entry not yet acked comes later and is not a first completion, so it never counts."""
    by_customer: dict[str, list[tuple[tuple[int, int], tuple[int, int], int]]] = {}
    for order, placed in produced.items():
        if placed in done:
            first = min(map(stream_id, done[placed]))
            by_customer.setdefault(customer_of(order), []).append((stream_id(placed.entry_id), first, order))
    violations = []
    for orders in by_customer.values():
        orders.sort()  # by entry id: production order within the partition
        for (_, older_done, older), (_, newer_done, newer) in itertools.pairwise(orders):
            if newer_done < older_done:
                violations.append((older, newer))
    return violations


# --- 8: what kubectl shows ------------------------------------------------------------------------

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def table(install: Install) -> dict[str, Any]:
    """The pipeline as the API server's Table (what `kubectl get` prints), through the official client."""
    api_client = config.new_client_from_config(str(install.cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        method, url, headers, body, post = api_client.param_serialize(
            "GET",
            f"/apis/streampipe.dev/v1alpha1/namespaces/{SHOP}/streampipelines/{PIPELINE}",
            header_params={"Accept": TABLE},
            auth_settings=["BearerToken"],
        )
        response = api_client.call_api(method, url, header_params=headers, body=body, post_params=post)
        assert response.status == 200, (response.status, response.read())
        table: dict[str, Any] = json.loads(response.read())
        return table
    finally:
        api_client.close()


def age_seconds(text: str) -> int:
    """A Table's ``date`` cell (the API server's human duration: ``45s``, ``3m12s``, ``12m``) in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text) if text else None
    assert match is not None, f"not a human duration: {text!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_printer_columns_show_the_status(install: Install) -> None:
    crd = install.kubectl.json("get", "crd", PIPELINE_CRD)
    printer = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    dead = int(install.redis.xlen(DEAD_LETTERS))
    assert dead > 0, "the earlier tests dead-lettered their poison orders"

    def shown() -> dict[str, Any]:
        body: dict[str, Any] = table(install)
        names = [column["name"] for column in body["columnDefinitions"]]
        (row,) = body["rows"]
        cells = dict(zip(names, row["cells"], strict=True))
        # After the earlier tests: nothing left, their poison orders dead-lettered, no workers.
        settled = (cells["Backlog"], cells["DLQ"], cells["Ready"], cells["Workers"])
        assert settled == (0, dead, "True", "0/0"), cells
        return body

    body = install.wait(shown, "the Table's Backlog 0, DLQ, Ready True, Workers 0/0")
    defined = [(c["name"], c["type"], c.get("priority", 0)) for c in body["columnDefinitions"]]
    # The Table starts with Name, then the CRD's columns in order; `kubectl get` prints priority 0.
    from_crd = [(c["name"], c["type"], c.get("priority", 0)) for c in printer]
    assert defined == [("Name", "string", 0), *from_crd]
    assert [name for name, _, priority in defined if priority == 0] == [
        "Name", "Stream", "Partitions", "Backlog", "DLQ", "Ready", "Age"
    ]  # fmt: skip
    cells = dict(zip([name for name, _, _ in defined], body["rows"][0]["cells"], strict=True))
    assert (cells["Name"], cells["Stream"]) == (PIPELINE, STREAM)
    assert (cells["Mode"], cells["Reason"]) == ("standalone", "Reconciled")
    created = datetime.fromisoformat(install.pipeline()["metadata"]["creationTimestamp"])
    assert abs(age_seconds(cells["Age"]) - (datetime.now(UTC) - created).total_seconds()) < 60, cells["Age"]


def explain_fields(text: str) -> set[str]:
    """The field names of `kubectl explain`'s FIELDS section."""
    _, _, fields = text.partition("FIELDS:\n")
    return {match.group(1) for match in re.finditer(r"^  (\w+)\s+<", fields, re.MULTILINE)}


def test_kubectl_explain_lists_the_spec_fields(install: Install) -> None:
    done = install.kubectl("explain", "streampipeline.spec", check=False)
    assert done.returncode == 0, done.stderr
    expected = set(api.StreamPipelineSpec.model_json_schema(by_alias=True)["properties"])
    assert explain_fields(done.stdout) == expected, done.stdout


# --- 9: uninstall (last) --------------------------------------------------------------------------


def test_helm_uninstall_keeps_the_crd_and_the_pipelines(install: Install) -> None:
    install.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait")
    install.wait(lambda: not install.operator_pods(), "the operator pods gone")
    assert get(install.kubectl, "deployment", RELEASE, "-n", OPERATOR_NAMESPACE) is None
    assert get(install.kubectl, "clusterkopfpeering", RELEASE) is None
    assert get(install.kubectl, "crd", PIPELINE_CRD) is not None, "Helm never deletes CRDs"
    pipeline = install.pipeline()
    assert "deletionTimestamp" not in pipeline["metadata"]
    assert (condition(pipeline, api.ConditionType.READY) or {}).get("status") == "True"
    assert install.deployment() is not None, "the pipeline's worker Deployment stays, unmanaged"
    assert group_state(install.redis) == (0, 0)
