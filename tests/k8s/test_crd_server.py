"""The generated CRD on a real kube-apiserver: accepted, refuses the invalid-spec table in the words the
offline validator uses, defaults exactly as the models do, explains itself, prints its columns."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streampipe_operator import api
from streampipe_operator.kube.deployments import build_deployment
from tests.support.controlplane import Kubectl, unique_name
from tests.support.invalid_specs import (
    INVALID_CHANGES,
    INVALID_SPECS,
    VALID_CHANGES,
    VALID_SPECS,
    InvalidChange,
    InvalidSpec,
    ValidChange,
    ValidSpec,
    minimal_manifest,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def dry_run_namespace(kubectl: Kubectl, crd_installed: str) -> Iterator[str]:
    """One namespace for the server-side dry runs of this module (they create nothing in it)."""
    name = unique_name("crd-dry-run")
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _dump(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def _poll(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for something the API server does asynchronously (publishing OpenAPI, for one)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.5)


def test_crd_is_accepted_and_established(kubectl: Kubectl, crd_installed: str) -> None:
    crd = kubectl.json("get", "crd", crd_installed)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["spipe"]
    assert crd["status"]["acceptedNames"]["categories"] == ["streampipe"]


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda case: case.id)
def test_invalid_spec_refused_by_server(kubectl: Kubectl, dry_run_namespace: str, case: InvalidSpec) -> None:
    done = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        dry_run_namespace,
        "-f",
        "-",
        input=_dump(case.manifest()),
        check=False,
    )
    assert done.returncode != 0, f"the API server accepted {case.id}:\n{done.stdout}"
    assert case.path in done.stderr, done.stderr
    assert case.expected_server_message in done.stderr, done.stderr


@pytest.mark.parametrize("case", INVALID_CHANGES, ids=lambda case: case.id)
def test_invalid_change_refused_by_server(kubectl: Kubectl, namespace: str, case: InvalidChange) -> None:
    old, new = case.manifests()
    for document in (old, new):
        document["metadata"] |= {"name": unique_name("change"), "namespace": namespace}
    new["metadata"]["name"] = old["metadata"]["name"]
    # --save-config: apply then removes what the new manifest leaves out (partitions-removed).
    kubectl("create", "--save-config", "-f", "-", input=_dump(old))
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=_dump(new), check=False)
    assert done.returncode != 0, f"the API server accepted {case.id}:\n{done.stdout}"
    assert case.path in done.stderr, done.stderr
    assert case.message in done.stderr, done.stderr


@pytest.mark.parametrize("case", VALID_CHANGES, ids=lambda case: case.id)
def test_change_accepted_by_server(kubectl: Kubectl, namespace: str, case: ValidChange) -> None:
    # The other side of the transition rules: growing is fine, under PerKey too.
    small, large = case.manifests()
    name = unique_name("grow")
    for document in (small, large):
        document["metadata"] |= {"name": name, "namespace": namespace}
    kubectl("create", "-f", "-", input=_dump(small))
    kubectl("apply", "-f", "-", input=_dump(large))
    stored = kubectl.json("get", "streampipeline", name, "-n", namespace)
    # As applied, with the server's defaults, which are the models' (ordering, leaseDuration).
    defaulted = api.PartitionsSpec.model_validate(large["spec"]["partitions"])
    assert stored["spec"]["partitions"] == defaulted.model_dump(mode="json", by_alias=True, exclude_none=True)


@pytest.mark.parametrize("case", VALID_SPECS, ids=lambda case: case.id)
def test_edge_of_a_rule_accepted_with_its_worker_deployment(
    kubectl: Kubectl, dry_run_namespace: str, case: ValidSpec
) -> None:
    # The pod-field rules must not refuse what Kubernetes takes, and what they let through must make a
    # worker Deployment the API server takes too (the gap tests/chaos/test_fuzz.py found).
    document = case.manifest()
    document["metadata"] |= {"namespace": dry_run_namespace}
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=_dump(document), check=False)
    assert done.returncode == 0, f"{case.id}: {done.stderr}"
    pipeline = api.StreamPipeline.model_validate(
        {**document, "metadata": {**document["metadata"], "uid": "0c0ffee0-0000-4000-8000-000000000000"}}
    )
    deployment = build_deployment(pipeline, pipeline.spec.groups[0], replicas=1)
    done = kubectl(
        "apply", "--dry-run=server", "-n", dry_run_namespace, "-f", "-", input=_dump(deployment), check=False
    )
    assert done.returncode == 0, f"{case.id}: worker Deployment refused: {done.stderr}"


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == api.KIND:
                found.append((path.name, document))
    return found


@pytest.mark.parametrize(("name", "document"), _example_documents(), ids=[n for n, _ in _example_documents()])
def test_examples_accepted_by_server(
    kubectl: Kubectl, dry_run_namespace: str, name: str, document: dict[str, Any]
) -> None:
    document = {**document, "metadata": {**document["metadata"], "namespace": dry_run_namespace}}
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=_dump(document), check=False)
    assert done.returncode == 0, f"{name}: {done.stderr}"


def _create_and_read(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    kubectl("create", "-f", "-", input=_dump(manifest))
    stored: dict[str, Any] = kubectl.json(
        "get", "streampipeline", manifest["metadata"]["name"], "-n", namespace
    )
    return stored


def test_server_defaults_equal_model_defaults(kubectl: Kubectl, crd_installed: str, namespace: str) -> None:
    minimal = minimal_manifest()
    stored = _create_and_read(kubectl, namespace, minimal)
    expected = api.StreamPipeline.model_validate(minimal).to_manifest()["spec"]
    assert stored["spec"] == expected
    # And what the server stored reads back into the same model.
    assert api.StreamPipeline.model_validate(stored).spec == api.StreamPipeline.model_validate(minimal).spec


def test_full_example_is_stored_as_the_model_reads_it(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    full = next(doc for doc in yaml.safe_load_all((EXAMPLES / "full.yaml").read_text()) if doc)
    stored = _create_and_read(kubectl, namespace, full)
    # Nothing pruned (every field is in the schema), nothing added beyond the models' defaults.
    assert stored["spec"] == api.StreamPipeline.model_validate(full).to_manifest()["spec"]


def test_null_means_default_on_the_server_too(kubectl: Kubectl, crd_installed: str, namespace: str) -> None:
    manifest = minimal_manifest()
    manifest["spec"]["redis"]["mode"] = None
    manifest["spec"]["retry"] = {"maxDeliveries": None}
    stored = _create_and_read(kubectl, namespace, manifest)
    assert stored["spec"]["redis"]["mode"] == "standalone"
    assert stored["spec"]["retry"]["maxDeliveries"] == 3
    assert stored["spec"] == api.StreamPipeline.model_validate(manifest).to_manifest()["spec"]


def test_explain_shows_the_model_descriptions(kubectl: Kubectl, crd_installed: str) -> None:
    outputs: list[str] = []

    def explained() -> bool:
        done = kubectl("explain", "streampipeline.spec.retry", check=False)
        outputs.append(done.stdout + done.stderr)
        return done.returncode == 0 and "maxDeliveries" in done.stdout

    _poll(explained, "kubectl explain streampipeline.spec.retry")
    text = " ".join(outputs[-1].split())  # explain re-wraps lines
    retry = api.StreamPipelineSpec.model_fields["retry"].description
    max_deliveries = api.RetrySpec.model_fields["max_deliveries"].description
    assert retry is not None
    assert max_deliveries is not None
    assert retry in text
    assert max_deliveries in text
    assert "claimIdle" in text
    assert "backoff" in text


def test_status_from_the_models_is_accepted_and_printed(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    _create_and_read(kubectl, namespace, minimal_manifest())
    now = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
    status = api.StreamPipelineStatus(
        observed_generation=1,
        conditions=api.set_condition(
            [], api.ConditionType.READY, "True", "Reconciled", observed_generation=1, now=now
        ),
        server=api.ServerStatus(family="valkey", version="9.1.0"),
        stream=api.StreamStatus(length=1200, last_generated_id="1764190800000-0", entries_added=1500),
        groups=[
            api.GroupStatus(
                name="billing",
                lag=40,
                pending=2,
                backlog=42,
                consumers=2,
                oldest_pending_age="2s",
                replicas=2,
                ready_replicas=2,
                desired_replicas=2,
            )
        ],
        dead_letter=api.DeadLetterStatus(stream="{orders}:events:dlq", length=12),
    ).summarized()
    body = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    kubectl(
        "patch", "streampipeline", "orders", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(body),
    )  # fmt: skip
    stored = kubectl.json("get", "streampipeline", "orders", "-n", namespace)
    assert api.StreamPipelineStatus.model_validate(stored["status"]) == status

    table = kubectl("get", "spipe", "orders", "-n", namespace).stdout.split("\n")
    assert table[0].split() == ["NAME", "STREAM", "PARTITIONS", "BACKLOG", "DLQ", "READY", "AGE"]
    # One stream: the Partitions cell is empty.
    assert table[1].split()[:5] == ["orders", "{orders}:events", "42", "12", "True"]
    wide = kubectl("get", "spipe", "orders", "-n", namespace, "-o", "wide").stdout.split("\n")
    assert wide[0].split() == [
        "NAME",
        "STREAM",
        "PARTITIONS",
        "BACKLOG",
        "DLQ",
        "READY",
        "WORKERS",
        "MODE",
        "REASON",
        "AGE",
    ]
    assert wide[1].split()[5:8] == ["2/2", "standalone", "Reconciled"]


def test_status_is_only_written_through_the_subresource(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    _create_and_read(kubectl, namespace, minimal_manifest())
    kubectl(
        "patch", "streampipeline", "orders", "-n", namespace,
        "--type=merge", "-p", json.dumps({"status": {"backlog": 99}}),
    )  # fmt: skip
    assert "status" not in kubectl.json("get", "streampipeline", "orders", "-n", namespace)


def test_short_name_category_and_field_selector(kubectl: Kubectl, crd_installed: str, namespace: str) -> None:
    _create_and_read(kubectl, namespace, minimal_manifest("orders"))
    other = minimal_manifest("clicks")
    other["spec"]["stream"] = "{clicks}:events"
    _create_and_read(kubectl, namespace, other)
    assert "orders" in kubectl("get", "spipe", "-n", namespace, "-o", "name").stdout
    assert "clicks" in kubectl("get", "streampipe", "-n", namespace, "-o", "name").stdout
    selected = kubectl(
        "get", "spipe", "-n", namespace, "--field-selector", "spec.stream={orders}:events", "-o", "name"
    ).stdout.split()
    assert selected == ["streampipeline.streampipe.dev/orders"]
