"""The chart's PrometheusRule and Grafana dashboard, checked without promtool: every expression is parsed by
a real PromQL parser (promql-parser, the Rust parser Greptime uses), and every metric and label it names
is one the code really exports, taken from the operator's and the worker's own metric objects (never from
a list written here). Worker series get ``namespace`` and ``pod`` from the scrape and ``pipeline`` from
the chart's PodMonitor relabeling, which is read from the rendered PodMonitor too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streampipe_operator.controller.metrics import OperatorMetrics
from streampipe_operator.kube import deployments
from streampipe_worker.metrics import WorkerMetrics
from tests.unit.test_chart import MONITORING_APIS, VALUE_SETS, one, render

pytestmark = pytest.mark.timeout(60)

# Labels Prometheus itself (or the Prometheus Operator's PodMonitor) puts on every scraped series.
SCRAPE_TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "instance", "job"}
HISTOGRAM_LABEL = "le"
GRAFANA_VARIABLE = re.compile(r"\$\{?(__\w+|\w+)\}?")
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.*),\s*(?P<label>\w+)\)$")


def _exported(metrics: object, registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample name -> label names, from a live registry. Labelled metrics without children yet (the
    operator's, before its first reconcile) are given one child so that their samples show."""
    for value in vars(metrics).values():
        # A parent with label names and no values yet (a child already has its values).
        if isinstance(value, MetricWrapperBase) and not value._labelvalues:
            label_names = value._labelnames  # no public accessor; needed to make a child
            if label_names:
                value.labels(*("x" for _ in label_names))
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture(scope="module")
def operator_series() -> dict[str, set[str]]:
    metrics = OperatorMetrics()
    return _exported(metrics, metrics.registry)


@pytest.fixture(scope="module")
def worker_series() -> dict[str, set[str]]:
    metrics = WorkerMetrics("{orders}:events", "billing")
    # The worker's handler histogram is filled a batch at a time; one observation makes its buckets show.
    metrics.handler_duration.observe_many([0.001])
    return _exported(metrics, metrics.registry)


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    return render(
        VALUE_SETS["monitoring"], api_versions=(*MONITORING_APIS, "monitoring.coreos.com/v1/PodMonitor")
    )


@pytest.fixture(scope="module")
def known_series(
    operator_series: dict[str, set[str]], worker_series: dict[str, set[str]], monitoring: list[dict[str, Any]]
) -> dict[str, set[str]]:
    """Every series the deployed system exposes, with the labels it has after scraping."""
    pod_monitor = one(monitoring, "PodMonitor")
    relabeled = {
        relabel["targetLabel"]
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]
        for relabel in endpoint.get("relabelings", [])
    }
    known = {name: labels | SCRAPE_TARGET_LABELS | relabeled for name, labels in worker_series.items()}
    # The operator is scraped with honorLabels: its own `namespace` label (the pipeline's) is kept.
    service_monitor = one(monitoring, "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    known.update({name: labels | SCRAPE_TARGET_LABELS for name, labels in operator_series.items()})
    return known


def walk(node: Any) -> Iterator[Any]:
    """Every node of a promql_parser expression tree."""
    yield node
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from walk(child)
    if isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from walk(argument)


def problems_in(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Unknown metrics, and labels a selector or aggregation uses that its metrics do not carry."""
    tree = promql_parser.parse(expr)
    problems: list[str] = []
    selectors = [node for node in walk(tree) if isinstance(node, promql_parser.VectorSelector)]
    if not selectors:
        problems.append(f"{expr!r} selects no metric")
    names = []
    for selector in selectors:
        if selector.name not in known:
            problems.append(f"{selector.name} is not exported by the operator or the worker")
            continue
        names.append(selector.name)
        for matcher in selector.matchers.matchers:
            if matcher.name not in known[selector.name]:
                problems.append(f"{selector.name} has no label {matcher.name!r}")
    available = set.intersection(*(known[name] for name in names)) if names else set()
    if any(name.endswith("_bucket") for name in names):
        available.add(HISTOGRAM_LABEL)
    for node in walk(tree):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            missing = set(node.modifier.labels) - available
            if missing:
                problems.append(f"{expr!r} aggregates by {sorted(missing)}, which its metrics lack")
    return problems


def test_checker_catches_unknown_metrics_and_labels(known_series: dict[str, set[str]]) -> None:
    assert problems_in("sum(rate(streampipe_worker_processed_total[5m]))", known_series) == []
    assert problems_in("rate(streampipe_worker_nonexistent_total[5m])", known_series) == [
        "streampipe_worker_nonexistent_total is not exported by the operator or the worker"
    ]
    assert problems_in('streampipe_operator_group_backlog{shard="1"}', known_series) == [
        "streampipe_operator_group_backlog has no label 'shard'"
    ]
    assert problems_in("sum by (topic) (streampipe_operator_group_backlog)", known_series)
    with pytest.raises(ValueError, match=r".+"):
        promql_parser.parse("sum by (group (streampipe_operator_group_backlog)")


# --- PrometheusRule ---------------------------------------------------------------------------------


def alert_rules(monitoring: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = one(monitoring, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_parses_and_references_exported_metrics(
    monitoring: list[dict[str, Any]], known_series: dict[str, set[str]]
) -> None:
    rules = alert_rules(monitoring)
    assert len(rules) >= 5
    problems = {rule["alert"]: problems_in(rule["expr"], known_series) for rule in rules}
    assert {alert: found for alert, found in problems.items() if found} == {}


def test_alerts_cover_what_the_recipe_recommends(monitoring: list[dict[str, Any]]) -> None:
    rules = {rule["alert"]: rule for rule in alert_rules(monitoring)}
    # backlog above a threshold for N minutes
    backlog = rules["StreampipeBacklogHigh"]
    assert "streampipe_operator_group_backlog" in backlog["expr"]
    assert backlog["expr"].endswith("> 10000")
    assert backlog["for"] == "10m"
    # oldest pending entry older than a bound
    oldest = rules["StreampipeOldestPendingTooOld"]
    assert "streampipe_operator_group_oldest_pending_age_seconds" in oldest["expr"]
    assert oldest["expr"].endswith("> 300")
    assert oldest["for"] == "5m"
    # dead-letter stream growing, operator reconcile errors, Redis unreachable
    assert "streampipe_operator_dead_letter_length" in rules["StreampipeDeadLetterGrowing"]["expr"]
    assert "streampipe_operator_errors_total" in rules["StreampipeReconcileErrors"]["expr"]
    assert "streampipe_operator_redis_up" in rules["StreampipeRedisUnreachable"]["expr"]
    assert rules["StreampipeRedisUnreachable"]["labels"]["severity"] == "critical"
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["labels"]["team"] == "platform", "prometheusRule.alertLabels reach every alert"
        assert {"summary", "description"} <= set(rule["annotations"])
        # Prometheus' own templating survives Helm's.
        assert "{{ $labels." in rule["annotations"]["summary"]


def test_alert_thresholds_come_from_values() -> None:
    objects = render(
        VALUE_SETS["monitoring"],
        "--set",
        "prometheusRule.backlogThreshold=250",
        "--set",
        "prometheusRule.backlogFor=3m",
        "--set",
        "prometheusRule.deadLetterWindow=1h",
        "--set",
        "prometheusRule.oldestPendingSeconds=90",
        "--set",
        "prometheusRule.oldestPendingFor=2m",
        api_versions=MONITORING_APIS,
    )
    rules = {rule["alert"]: rule for rule in alert_rules(objects)}
    assert rules["StreampipeBacklogHigh"]["expr"].endswith("> 250")
    assert rules["StreampipeBacklogHigh"]["for"] == "3m"
    assert rules["StreampipeOldestPendingTooOld"]["expr"].endswith("> 90")
    assert rules["StreampipeOldestPendingTooOld"]["for"] == "2m"
    assert "90 s ago" in rules["StreampipeOldestPendingTooOld"]["annotations"]["description"]
    assert "[1h]" in rules["StreampipeDeadLetterGrowing"]["expr"]


# --- Grafana dashboard -------------------------------------------------------------------------------


def dashboard(monitoring: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(monitoring, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"]["grafana_folder"] == "streampipe"
    loaded: dict[str, Any] = json.loads(config_map["data"]["streampipe.json"])
    return loaded


def as_promql(grafana_expr: str) -> str:
    """Grafana's variables replaced by values a Prometheus would see."""
    return GRAFANA_VARIABLE.sub(
        lambda m: "5m" if m.group(1) in {"__rate_interval", "__interval", "__range"} else ".*", grafana_expr
    )


def test_every_dashboard_query_parses_and_references_exported_metrics(
    monitoring: list[dict[str, Any]], known_series: dict[str, set[str]]
) -> None:
    board = dashboard(monitoring)
    queries = [
        (panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])
    ]
    assert len(queries) >= 15
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable
            queries.append((f"${variable['name']}", match.group("expr")))
            expr = as_promql(match.group("expr"))
            metric = promql_parser.parse(expr)
            assert isinstance(metric, promql_parser.VectorSelector)
            assert match.group("label") in known_series[metric.name]
    problems = {title: problems_in(as_promql(expr), known_series) for title, expr in queries}
    assert {title: found for title, found in problems.items() if found} == {}


def test_dashboard_shows_what_an_operator_of_a_pipeline_needs(monitoring: list[dict[str, Any]]) -> None:
    board = dashboard(monitoring)
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in (
        "streampipe_operator_stream_length",  # stream length
        "streampipe_operator_group_backlog",  # backlog per group
        "streampipe_operator_group_pending",  # pending per group
        "streampipe_operator_group_oldest_pending_age_seconds",
        "streampipe_operator_group_replicas",  # replicas
        "streampipe_worker_processed_total",  # throughput
        "streampipe_operator_stream_entries_added",
        "streampipe_operator_dead_letter_length",  # DLQ
        "streampipe_worker_dead_lettered_total",
        "streampipe_operator_stream_memory_bytes",  # memory
    ):
        assert metric in exprs, metric
    assert board["uid"] == "streampipe-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


# --- the worker PodMonitor selects what the operator renders -----------------------------------------


def test_pod_monitor_selects_the_operators_worker_pods(monitoring: list[dict[str, Any]]) -> None:
    pod_monitor = one(monitoring, "PodMonitor")
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    pod_labels = deployments.workload_labels("orders", "billing")
    assert selector.items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == deployments.METRICS_PORT_NAME
    relabel = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    label_key = re.sub(r"[^a-zA-Z0-9_]", "_", deployments.LABEL_PIPELINE)
    assert relabel["sourceLabels"] == [f"__meta_kubernetes_pod_label_{label_key}"]
    assert pod_labels[deployments.LABEL_PIPELINE] == "orders"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = render(
        VALUE_SETS["namespaced"],
        "--set",
        "podMonitor.enabled=true",
        api_versions=("monitoring.coreos.com/v1/PodMonitor",),
    )
    assert one(namespaced, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
