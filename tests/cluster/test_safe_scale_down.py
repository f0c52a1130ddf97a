"""Safe scale-down on a real control plane: the real API server (RBAC, ServiceAccount tokens) and the
real ReplicaSet controller choose which worker pod goes, from the pod-deletion-cost the scaler keeps.

`make cluster-e2e`. The scaler runs with a kubeconfig whose identity is the ServiceAccount of
manifests/base, with that base's Role and RoleBinding applied unchanged, so every request it makes
is one RBAC allows; a fake node (tests/support/fake_node.py) plays the kubelet. The HPA's part
(setting the Deployment's replicas from KEDA's answer) is done here by `kubectl scale`.
"""

from __future__ import annotations

import json

import pytest

from scaler.fixtures.airflow_schema import TaskInstance
from tests.cluster.conftest import (
    METADATA,
    NS,
    costs,
    deployment,
    running_pods,
    scaled_object,
    start_protected_scaler,
    stateful_set,
)
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.control_plane import ControlPlane
from tests.support.fake_node import FakeNode

pytestmark = pytest.mark.cluster


async def test_the_replicaset_controller_removes_idle_workers_first_by_the_costs_the_scaler_keeps(
    plane: ControlPlane, node: FakeNode, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
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


async def test_on_a_stateful_set_the_floor_keeps_every_ordinal_up_to_the_busy_one(
    plane: ControlPlane, node: FakeNode, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
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
