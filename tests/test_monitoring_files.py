"""The shipped Grafana dashboard and Prometheus alerts load, and use only series the scaler exports."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from scaler.adapters.celery_broker.control import CeleryControl
from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.rules.broker_urls import parse_broker_url
from scaler.rules.database_urls import parse_url
from scaler.service.drain_loop import DrainSettings
from tests.conftest import AirflowDatabase, StartScaler, fast_settings
from tests.support.celery_workers import CeleryWorkers, until_consumers
from tests.support.fake_kubernetes import FakeKubernetes, kubeconfig
from tests.support.scrape import PROMTOOL, Scrape, scrape_with_every_series
from tests.support.servers import Redis, ServerUnavailable

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "manifests" / "monitoring" / "grafana-dashboard.json"
ALERTS = ROOT / "manifests" / "monitoring" / "prometheus-rules.yaml"
ALERT_TESTS = ROOT / "tests" / "monitoring" / "prometheus-rules.test.yaml"
REFERENCE = ROOT / "docs" / "reference.md"
# Series Prometheus makes itself, and labels it adds to every scraped series.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> Iterator[str]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, label) asks for series matching the selector.
            match = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert match, variable
            yield match.group(1)


def selectors(query: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in a PromQL query."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"select series by name: {query}"
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    # Grafana fills in its interval variables before Prometheus sees the query.
    promql_parser.walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", query)), visit)
    return found


def test_dashboard_loads_as_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "airflow-keda-scaler"
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "namespace", "scaled_object", "database"} <= variables
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", GRAFANA_INTERVALS.sub("", target["expr"])))
            assert used <= variables, (panel["title"], used - variables)
    titles = {panel["title"] for panel in panels}
    assert {"Demand against workers asked for", "Snapshot query latency", "Snapshot errors by kind"} <= titles


def test_alert_rules_load() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "AirflowKedaScalerDown",
        "AirflowKedaScalerDatabaseFailing",
        "AirflowKedaScalerDatabaseErrors",
        "AirflowKedaScalerStaleSnapshot",
        "AirflowKedaScalerRejectsScaledObject",
        "AirflowKedaScalerDeletionCostNotKept",
        "AirflowKedaScalerWithoutKubernetes",
        "AirflowKedaScalerMemoryBudgetNearlyUsed",
        "AirflowKedaScalerRefusingForMemory",
        "AirflowKedaScalerWorkerDrainedTooLong",
        "AirflowKedaScalerDrainCannotAct",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        promql_parser.parse(rule["expr"])


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        result = subprocess.run(
            [PROMTOOL, *command], capture_output=True, text=True, timeout=120, check=False, cwd=ALERT_TESTS.parent
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def test_reference_metrics_table_lists_exactly_what_the_scaler_exports(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start_scaler(fast_settings({"airflow": parse_url(airflow3_db.dsn)}))
    exported = await scrape_with_every_series(scaler, airflow3_db)
    ours = {name for name in exported.family_names() if name.startswith("airflow_keda_scaler_")}
    documented = set(re.findall(r"^\| `(airflow_keda_scaler_\w+)` \|", REFERENCE.read_text(), re.MULTILINE))
    # The parser names counter families without `_total`; the reference uses the series' name.
    assert {name.removesuffix("_total") for name in documented} == ours


async def test_dashboard_and_alerts_use_only_series_the_scaler_exports(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler, tmp_path: Path
) -> None:
    exported = await scrape_with_safe_scale_down(airflow3_db, start_scaler, tmp_path)
    labels = dict(PROMETHEUS_SERIES)
    for name, sample_labels in exported.labels_by_sample().items():
        labels[name] = sample_labels | TARGET_LABELS

    queries = [*dashboard_queries(), *(rule["expr"] for rule in alert_rules())]
    used = 0
    for query in queries:
        for name, matched in selectors(query):
            assert name in labels, f"{name} is not exported by the scaler (in: {query})"
            assert matched <= labels[name], f"{name} has no label {matched - labels[name]} (in: {query})"
            used += 1
    assert used >= len(queries)
    # And the other way round: every scaling-decision and safe scale-down series is on the dashboard.
    on_dashboard = {name for query in dashboard_queries() for name, _ in selectors(query)}
    for name in (
        "demand_tasks",
        "queue_demand_tasks",
        "desired_workers",
        "active",
        "snapshot_errors_total",
        "busy_worker_floor",
        "pod_deletion_cost_skipped",
        "pod_deletion_cost_patches_total",
        "kubernetes_access",
        "drained_workers",
        "drained_longest_seconds",
        "drain_commands_total",
        "drain_restorations_total",
        "drain_skipped",
        "drain_leader",
    ):
        assert f"airflow_keda_scaler_{name}" in on_dashboard
    # ... and the safe scale-down series that say something is wrong are alerted on.
    alerted = {name for rule in alert_rules() for name, _ in selectors(rule["expr"])}
    assert {
        "airflow_keda_scaler_pod_deletion_cost_skipped",
        "airflow_keda_scaler_kubernetes_access",
        "airflow_keda_scaler_drained_longest_seconds",
        "airflow_keda_scaler_drain_skipped",
    } <= alerted


async def scrape_with_safe_scale_down(database: AirflowDatabase, start_scaler: StartScaler, tmp_path: Path) -> Scrape:
    """Every series exported once, the Kubernetes side's included: a kept pod-deletion-cost and one not kept; and
    drain on real Celery workers: one drained, one restored, and a ScaledObject it cannot act for."""
    try:
        redis = Redis()
    except ServerUnavailable as error:
        pytest.skip(str(error))
    redis.start()
    cluster = await FakeKubernetes().start()
    try:
        labels = {"component": "worker", "pod-template-hash": "h1"}
        cluster.add_scaled_object("airflow", "workers", "workers")
        cluster.add_workload("Deployment", "airflow", "workers", {"component": "worker"})
        for pod in ("workers-h1-a", "workers-h1-b"):
            cluster.add_pod("airflow", pod, labels, owner=("ReplicaSet", "workers-h1"))
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(cluster.url, "token"))
        kubernetes = KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600, patch_rate=1000)
        drain = DrainSettings(brokers={"airflow": parse_broker_url(redis.url)}, interval=3600, timeout=1.0, lease="off")
        settings = dataclasses.replace(
            fast_settings({"airflow": parse_url(database.dsn)}), kubernetes=kubernetes, drain=drain
        )
        scaler = await start_scaler(settings)
        await database.add(TaskInstance("busy", "running", queue="default", hostname="workers-h1-a"))
        await scaler.keda.poll({"database": "airflow", "drain": "true"}, name="workers")
        await scaler.keda.poll({"database": "airflow", "drain": "true"}, name="not-in-the-cluster")  # not_found
        assert scaler.server.reconciler is not None
        await scaler.server.reconciler.reconcile_once()
        assert cluster.patches(), "the busy pod's pod-deletion-cost was not patched"
        with CeleryWorkers(redis.url, ["workers-h1-a", "workers-h1-b"]) as workers:
            control = CeleryControl(parse_broker_url(redis.url), timeout=1.0)
            try:
                nodes = [workers.nodename(name) for name in workers.names]
                await until_consumers(control, dict.fromkeys(nodes, frozenset({"default"})))
                await control.cancel_consumer(nodes[0], "default")  # left drained: the busy one is restored
                assert scaler.server.drain is not None
                await scaler.server.drain.drain_once()  # ... and the idle one drained
                assert await control.consumers(nodes) == {nodes[0]: frozenset({"default"}), nodes[1]: frozenset()}
            finally:
                await control.close()
        return await scrape_with_every_series(scaler, database)
    finally:
        await cluster.stop()
        redis.stop()
