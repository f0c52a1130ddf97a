"""The Helm chart: lints, renders what manifests/ holds, and renders the official chart's worker sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from scaler.rules.trigger_metadata import parse_metadata
from tests.support.helm import CHART, helm, template, without_helm_labels
from tests.support.kustomize import Resource, build, load_documents

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


def by_id(resources: list[Resource]) -> dict[tuple[str, str, str], Any]:
    return {
        (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]): without_helm_labels(r)
        for r in resources
    }


def one(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def test_helm_lint_passes_strictly() -> None:
    result = helm("lint", "--strict", str(CHART), "--set", "workerSets[0].name=worker", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overlay", "values"),
    [
        ("base", ()),
        ("overlays/tls", ("tls.enabled=true",)),
        ("overlays/cluster-wide", ("rbac.clusterWide=true",)),
        ("overlays/drain", ("brokers.existingSecret=airflow-keda-scaler-brokers",)),
    ],
)
def test_the_chart_renders_exactly_what_the_kustomize_manifests_hold(overlay: str, values: tuple[str, ...]) -> None:
    """One source of truth: the chart's defaults and manifests/ give the same objects, field for field."""
    chart = by_id(template(*values))
    kustomized = by_id(build(MANIFESTS / overlay))
    assert chart.keys() == kustomized.keys()
    for key, resource in kustomized.items():
        assert chart[key] == resource, key


def test_monitoring_objects_match_manifests_monitoring_and_their_job_label_matches_the_rules() -> None:
    rendered = template("serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    rules_file = yaml.safe_load((MANIFESTS / "monitoring" / "prometheus-rules.yaml").read_text())
    assert yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text()) == rules_file
    shipped = by_id(
        load_documents(MANIFESTS / "monitoring" / "servicemonitor.yaml")
        + load_documents(MANIFESTS / "monitoring" / "prometheusrule.yaml")
    )
    chart = by_id(one(rendered, "ServiceMonitor") + one(rendered, "PrometheusRule"))
    assert chart == shipped
    (rule,) = one(rendered, "PrometheusRule")
    assert rule["spec"] == rules_file
    # Prometheus Operator sets job to the value of the scraped Service's label named by jobLabel.
    (monitor,) = one(rendered, "ServiceMonitor")
    services = [
        s
        for s in one(rendered, "Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ]
    assert [s["metadata"]["name"] for s in services] == ["airflow-keda-scaler-metrics"]
    job = services[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert job == "airflow-keda-scaler"
    expressions = [r["expr"] for group in rules_file["groups"] for r in group["rules"]]
    assert all(f'job="{job}"' in e for e in expressions if "job=" in e)
    assert any(f'up{{job="{job}"}}' in e for e in expressions)


def test_any_namespace_from_a_value_binds_the_workers_role_to_the_scaler_where_it_runs() -> None:
    rendered = template("rbac.namespaces={airflow,airflow-ml}", release="scaler", namespace="platform-keda")
    (account,) = one(rendered, "ServiceAccount")
    assert account["metadata"]["namespace"] == "platform-keda"
    bindings = one(rendered, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["airflow", "airflow-ml"]
    assert sorted(r["metadata"]["namespace"] for r in one(rendered, "Role")) == ["airflow", "airflow-ml"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "scaler-airflow-keda-scaler", "namespace": "platform-keda"}
        ]
    (deployment,) = one(rendered, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "scaler-airflow-keda-scaler"


def test_the_namespace_overlay_moves_the_scaler_and_keeps_the_workers_role() -> None:
    """manifests/overlays/namespace: the scaler in another namespace, RBAC still where the workers are."""
    rendered = build(MANIFESTS / "overlays" / "namespace")
    (account,) = one(rendered, "ServiceAccount")
    assert account["metadata"]["namespace"] == "platform-keda"
    assert {r["metadata"]["namespace"] for r in rendered if r["kind"] not in ("Role", "RoleBinding")} == {
        "platform-keda"
    }
    (role,) = one(rendered, "Role")
    (binding,) = one(rendered, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "airflow"
    assert binding["subjects"][0]["namespace"] == "platform-keda"


OFFICIAL_CHART_SETS = (
    # Chart 1.19 and earlier: one worker StatefulSet <release>-worker (workers.persistence.enabled).
    ("workerSets[0].name=worker",),
    # Chart 1.20 with per-queue sets, one a Deployment (persistence off) with pre-warm.
    (
        "workerSets[0].name=worker",
        "workerSets[1].name=worker-ml",
        "workerSets[1].queues={ml,gpu}",
        "workerSets[1].concurrency=4",
        "workerSets[1].kind=Deployment",
        "workerSets[1].prewarm=true",
        "workerSets[1].scaleDownWindowSeconds=120",
        "workerSets[1].excludeExecutors={KubernetesExecutor}",
    ),
)


@pytest.mark.parametrize("values", OFFICIAL_CHART_SETS)
def test_worker_sets_render_scaled_objects_the_scaler_accepts(values: tuple[str, ...]) -> None:
    rendered = template(*values, "tls.enabled=true")
    objects = one(rendered, "ScaledObject")
    assert len(objects) == len({v.split("]")[0] for v in values})
    for scaled_object in objects:
        spec = scaled_object["spec"]
        assert scaled_object["metadata"]["namespace"] == "airflow"
        assert spec["scaleTargetRef"]["name"] == scaled_object["metadata"]["name"]
        assert spec["fallback"]["behavior"] == "currentReplicasIfHigher"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "external-push"
        assert trigger["metadata"]["scalerAddress"] == "airflow-keda-scaler-headless.keda.svc:6000"
        assert trigger["metadata"]["scaleTargetKind"] == spec["scaleTargetRef"]["kind"]
        parse_metadata(trigger["metadata"])  # raises on anything the scaler would refuse
        assert trigger["authenticationRef"]["name"] == one(rendered, "TriggerAuthentication")[0]["metadata"]["name"]
    first = objects[0]["spec"]
    assert first["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "airflow-worker"}
    assert first["triggers"][0]["metadata"]["queues"] == "default"
    if len(objects) == 2:
        ml = objects[1]["spec"]
        assert ml["scaleTargetRef"]["kind"] == "Deployment"
        assert ml["triggers"][0]["metadata"]["queues"] == "ml,gpu"
        assert ml["triggers"][0]["metadata"]["prewarm"] == "true"
        assert ml["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
            "stabilizationWindowSeconds": 120
        }


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (("replicas=3",), "'replicas' not allowed"),
        (("workerSets[0].name=worker", "workerSets[0].queue=ml"), "'queue' not allowed"),
        (("workerSets[0].name=worker", "workerSets[0].kind=Deploy"), "/workerSets/0/kind"),
        (("workerSets[0].name=worker", "workerSets[0].concurrency=0"), "/workerSets/0/concurrency"),
        (("tls.enabled=true", "tls.certManager.enabled=true"), "tls.certManager.issuerRef.name is required"),
        (("workerSets[0].name=worker", "workerSets[0].drain=true"), "drain needs brokers.existingSecret"),
    ],
)
def test_a_mistyped_value_is_refused_naming_it(values: tuple[str, ...], named: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        template(*values)
    assert named in str(refused.value)
    assert len(str(refused.value).splitlines()) <= 4


def test_a_draining_worker_set_gets_drain_and_the_scaler_its_brokers_and_lease() -> None:
    rendered = template("workerSets[0].name=worker", "workerSets[0].drain=true", "brokers.existingSecret=brokers")
    (scaled_object,) = one(rendered, "ScaledObject")
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["metadata"]["drain"] == "true"
    assert parse_metadata(trigger["metadata"]).drain_queues == ("default",)
    (deployment,) = one(rendered, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIRFLOW_KEDA_SCALER_BROKER_FILE"] == "/etc/airflow-keda-scaler-brokers/brokers"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["brokers"]["secret"]["secretName"] == "brokers"
    lease_roles = [r for r in one(rendered, "Role") if r["metadata"]["name"].endswith("-drain-lease")]
    assert [r["metadata"]["namespace"] for r in lease_roles] == ["keda"]
    # Without a broker nothing of drain is rendered.
    plain = template("workerSets[0].name=worker")
    assert not [r for r in one(plain, "Role") if r["metadata"]["name"].endswith("-drain-lease")]
