"""Safe scale-down on a real control plane: the real API server (RBAC, ServiceAccount tokens) and the
real ReplicaSet controller choose which worker pod goes, from the pod-deletion-cost the scaler keeps.

`make cluster-e2e`. The scaler runs with a kubeconfig whose identity is the ServiceAccount of
manifests/base, with that base's Role and RoleBinding applied unchanged, so every request it makes
is one RBAC allows; a fake node (tests/support/fake_node.py) plays the kubelet. The HPA's part
(setting the Deployment's replicas from KEDA's answer) is done here by `kubectl scale`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scaler.databases.urls import parse_url
from scaler.demo.airflow_schema import TaskInstance
from scaler.kubernetes.access import KubernetesSettings
from scaler.kubernetes.api import DELETION_COST
from tests.conftest import AirflowDatabase, Running, StartScaler, fast_settings
from tests.support.control_plane import ROOT, ControlPlane, build_tools, control_plane
from tests.support.fake_node import FakeNode
from tests.support.kustomize import build

pytestmark = pytest.mark.cluster

KEDA_CRDS = ROOT.parent / "shared" / "schemas" / "keda"
NS = "airflow"
WORKER = {"component": "worker", "release": "airflow"}
METADATA = {"database": "airflow", "concurrency": "16"}
SETTLE_DEADLINE = 120.0  # far above what a pass needs; reaching it is a finding


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    if not (KEDA_CRDS / "keda.sh_scaledobjects.yaml").exists():
        pytest.skip("KEDA's CRD schemas are not here (../shared/schemas/keda)")
    tools = await asyncio.to_thread(build_tools)
    async with control_plane(tmp_path / "control-plane", tools) as started:
        for namespace in ("keda", NS):
            await started.kubectl("create", "namespace", namespace)
        await started.kubectl("apply", "-f", str(KEDA_CRDS / "keda.sh_scaledobjects.yaml"))
        await started.kubectl("wait", "--for=condition=established", "crd/scaledobjects.keda.sh", "--timeout=60s")
        # The base's identity and permissions, unchanged: its ServiceAccount, Role and RoleBinding.
        rbac = [r for r in build(ROOT / "manifests" / "base") if r["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
        assert {r["kind"] for r in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
        await started.apply(rbac)
        yield started


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "airflow-worker", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": WORKER},
            "template": {
                "metadata": {"labels": WORKER},
                "spec": {
                    "terminationGracePeriodSeconds": 600,
                    "containers": [{"name": "worker", "image": "apache/airflow:3.3.2", "args": ["celery", "worker"]}],
                },
            },
        },
    }


def scaled_object() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "airflow-worker", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "airflow-worker"},
            "minReplicaCount": 0,
            "maxReplicaCount": 10,
            "triggers": [
                {"type": "external", "metadata": {"scalerAddress": "airflow-keda-scaler.keda:6000", **METADATA}}
            ],
        },
    }


async def running_pods(node: FakeNode, count: int) -> list[dict[str, Any]]:
    """Settle the node until exactly `count` pods are Running and none is being deleted; them, by name."""
    deadline = asyncio.get_running_loop().time() + SETTLE_DEADLINE
    while True:
        await node.settle()
        pods = await node.pods()
        alive = [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        if len(pods) == count and len(alive) == count:
            return sorted(alive, key=lambda p: p["metadata"]["name"])
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {count} running pods, have {[p['metadata']['name'] for p in pods]}")
        await asyncio.sleep(0.1)


def costs(pods: list[dict[str, Any]]) -> dict[str, str | None]:
    return {p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST) for p in pods}


async def start_protected_scaler(plane: ControlPlane, database: AirflowDatabase, start_scaler: StartScaler) -> Running:
    token = await plane.service_account_token("keda", "airflow-keda-scaler")
    config = plane.token_kubeconfig(token)
    # An hour between rounds: the test runs its rounds itself.
    kubernetes = KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600, patch_rate=1000)
    settings = fast_settings({"airflow": parse_url(database.dsn)})
    return await start_scaler(dataclasses.replace(settings, kubernetes=kubernetes))


async def test_the_replicaset_controller_removes_idle_workers_first_by_the_costs_the_scaler_keeps(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    node = FakeNode(plane, NS)
    await node.register()
    await plane.apply([deployment(3)])
    idle, light, busy = (p["metadata"]["name"] for p in await running_pods(node, 3))
    await plane.apply([scaled_object()])
    for i in range(3):
        await direct_db.add(TaskInstance(f"busy_{i}", "running", hostname=busy))
    await direct_db.add(TaskInstance("light_0", "running", hostname=light))

    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    # KEDA asks; 4 tasks need 1 worker at concurrency 16, but two workers are busy: the floor says 2.
    assert (await scaler.keda.poll(METADATA, name="airflow-worker")).value_int == 2
    assert scaler.server.reconciler is not None
    await scaler.server.reconciler.reconcile_once()
    assert costs(await node.pods()) == {idle: None, light: "1", busy: "3"}

    # The HPA sets the Deployment to what KEDA was told; the ReplicaSet controller picks the pod to delete.
    await plane.kubectl("scale", "deployment/airflow-worker", "-n", NS, "--replicas=2")
    assert [p["metadata"]["name"] for p in await running_pods(node, 2)] == sorted([light, busy])
    # Below the floor (as a too-eager HPA or a person could): the lighter worker goes, never the busiest.
    await plane.kubectl("scale", "deployment/airflow-worker", "-n", NS, "--replicas=1")
    assert [p["metadata"]["name"] for p in await running_pods(node, 1)] == [busy]


async def test_the_base_role_lets_the_scaler_do_what_it_needs_and_nothing_else(plane: ControlPlane) -> None:
    who = "--as=system:serviceaccount:keda:airflow-keda-scaler"
    allowed = [
        ("get", "scaledobjects.keda.sh", NS),
        ("get", "deployments.apps", NS),
        ("get", "statefulsets.apps", NS),
        ("list", "pods", NS),
        ("patch", "pods", NS),
    ]
    refused = [
        ("delete", "pods", NS),
        ("list", "secrets", NS),
        ("get", "secrets", "keda"),
        ("patch", "deployments.apps", NS),
        ("list", "pods", "default"),
    ]
    for verb, resource, namespace in allowed + refused:
        answer = (await plane.kubectl("auth", "can-i", verb, resource, "-n", namespace, who, check=False)).strip()
        assert answer == ("yes" if (verb, resource, namespace) in allowed else "no"), (verb, resource, namespace)
    # A token the API server issued for that ServiceAccount authenticates as it.
    token = await plane.service_account_token("keda", "airflow-keda-scaler")
    review = await plane.api(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
    )
    assert review["status"]["user"]["username"] == "system:serviceaccount:keda:airflow-keda-scaler", json.dumps(review)


def stateful_set(replicas: int) -> dict[str, Any]:
    """The official chart's worker is a StatefulSet (workers.persistence.enabled, its default)."""
    workload = deployment(replicas)
    workload["kind"] = "StatefulSet"
    workload["spec"] |= {"serviceName": "airflow-worker", "podManagementPolicy": "Parallel"}
    return workload


async def test_on_a_stateful_set_the_floor_keeps_every_ordinal_up_to_the_busy_one(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    node = FakeNode(plane, NS)
    await node.register()
    await plane.apply([stateful_set(4)])
    names = [p["metadata"]["name"] for p in await running_pods(node, 4)]
    assert names == [f"airflow-worker-{ordinal}" for ordinal in range(4)]
    so = scaled_object()
    so["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"
    await plane.apply([so])
    await direct_db.add(TaskInstance("long_task", "running", hostname="airflow-worker-2"))

    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    await scaler.keda.poll(METADATA, name="airflow-worker")
    assert scaler.server.reconciler is not None
    # The reconciler reads the scale target from the API server and learns it is a StatefulSet.
    await scaler.server.reconciler.reconcile_once()
    # One task on ordinal 2: a StatefulSet removes its highest ordinals first, so 3 pods must stay.
    assert (await scaler.keda.poll(METADATA, name="airflow-worker")).value_int == 3
    await plane.kubectl("scale", "statefulset/airflow-worker", "-n", NS, "--replicas=3")
    assert [p["metadata"]["name"] for p in await running_pods(node, 3)] == names[:3]
