"""KEDA and the HPA scale a real Deployment through the scaler: from zero on queued tasks, and back to zero.

KEDA's operator and metrics adapter run as processes (tests/support/control_plane.start_keda); the
HPA controller reads the external metric through the aggregation layer, as in a cluster; the scaler
runs as the base's ServiceAccount. Nothing here sets replicas but KEDA and the HPA.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.cluster.conftest import METADATA, NS, deployment, running_pods, scaled_object, start_protected_scaler
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.control_plane import ControlPlane, start_keda
from tests.support.fake_node import FakeNode

pytestmark = pytest.mark.cluster

DEADLINE = 180.0  # far above KEDA's 1 s polling and the HPA's 2 s sync; reaching it is a finding


async def replicas_reach(plane: ControlPlane, node: FakeNode, wanted: int) -> None:
    """Settle the node until the Deployment asks for `wanted` replicas and runs them."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        await node.settle()
        workload = await plane.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/airflow-worker")
        if workload["spec"]["replicas"] == wanted:
            await running_pods(node, wanted)
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the Deployment asks for {workload['spec']['replicas']} replicas, not {wanted}")
        await asyncio.sleep(0.5)


def keda_scaled_object(address: str) -> dict[str, Any]:
    so = scaled_object()
    so["spec"] |= {
        "pollingInterval": 1,
        "cooldownPeriod": 5,
        # The HPA's default 5-minute scale-down window would only slow the test down.
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}},
    }
    so["spec"]["triggers"][0]["metadata"] = {"scalerAddress": address, **METADATA}
    return so


async def test_keda_and_the_hpa_scale_workers_from_zero_to_the_scalers_answer_and_back(
    plane: ControlPlane, node: FakeNode, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    await start_keda(plane)
    await plane.apply([deployment(0)])
    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    await plane.apply([keda_scaled_object(f"127.0.0.1:{scaler.server.port}")])
    hpa = await plane.api("GET", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/airflow-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "airflow-worker"

    # 40 queued tasks at concurrency 16: the scaler answers 3; KEDA activates from 0, the HPA goes to 3.
    await direct_db.add_many(40, "queued", queue="default")
    await replicas_reach(plane, node, 3)
    # What the HPA reads through the aggregation layer is the scaler's answer.
    metric = await plane.api(
        "GET",
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/s0-airflow-celery-workers"
        "?labelSelector=scaledobject.keda.sh%2Fname%3Dairflow-worker",
    )
    assert [item["value"] for item in metric["items"]] == ["3"]

    # The work is done: the scaler answers 0 and inactive; after the cooldown KEDA takes the Deployment to 0.
    await direct_db.connection.execute("UPDATE task_instance SET state = 'success'")
    await replicas_reach(plane, node, 0)
