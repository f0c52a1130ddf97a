"""KEDA and the HPA scale real workloads through the scaler: from zero by push, down without deleting a busy
worker, back to zero, across a scaler restart, on fallback when the database stops, and ahead of a DAG run.

KEDA's operator and metrics adapter run as processes (tests/support/control_plane.start_keda); the
HPA controller reads the external metric through the aggregation layer, as in a cluster; the scaler
runs as the base's ServiceAccount. Nothing here sets replicas but KEDA and the HPA: the test plays
the node (FakeNode) and Celery (it moves task_instance rows), and runs the scaler's deletion-cost
rounds itself, between the moves, so their order is never left to chance.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from urllib.parse import urlsplit

import pytest

from scaler.fixtures.airflow_schema import insert_rows, insert_task_instances
from scaler.rules.prewarm import PrewarmSettings
from scaler.service.metrics import NAMESPACE as N
from tests.cluster.conftest import (
    KEDA_DEADLINE,
    METADATA,
    NS,
    Celery,
    costs,
    deployment,
    replicas_reach,
    report,
    running_pods,
    scaled_object,
    start_protected_scaler,
    stateful_set,
    to_zero_deleting_no_busy_pod,
    with_keda,
    workload,
)
from tests.conftest import AirflowDatabase, Running, StartScaler, replace_login
from tests.support.control_plane import ControlPlane, start_keda
from tests.support.fake_node import FakeNode
from tests.support.prewarm_history import PastRunSpec, ScheduledDag, add_dags
from tests.support.scrape import Scrape, scrape
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.cluster

DEADLINE = KEDA_DEADLINE
# Longer than any test: KEDA's first poll (when the ScaledObject is created) finds nothing to do, and the next
# would come after the test's deadline, so an activation can only come from the scaler's push.
PUSH_ONLY = 600
SO_PATH = f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/airflow-worker"
METRIC_PATH = (
    f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/s0-airflow-celery-workers"
    "?labelSelector=scaledobject.keda.sh%2Fname%3Dairflow-worker"
)


async def until_keda(plane: ControlPlane, what: str, holds: Any) -> dict[str, Any]:
    """The ScaledObject once `holds(it)` is true, as KEDA's operator writes its status."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        so: dict[str, Any] = await plane.api("GET", SO_PATH)
        if holds(so):
            return so
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"KEDA never reported {what}: {so.get('status')}")
        await asyncio.sleep(0.2)


def condition(so: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in so.get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


async def until_metric(scaler: Running, name: str, value: float) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while (await scrape(scaler.server.http.port)).value(name) != value:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} never reached {value}")
        await asyncio.sleep(0.1)


async def keda_errors(plane: ControlPlane) -> float:
    """KEDA's count of failed calls for the ScaledObject (keda_scaled_object_errors_total), from its operator."""
    assert plane._session is not None
    async with plane._session.get(plane.keda_metrics) as response:
        text = await response.text()
    return Scrape(text).value("keda_scaled_object_errors_total", namespace=NS, scaledObject="airflow-worker") or 0.0


async def until_keda_errors(plane: ControlPlane, count: float) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while (seen := await keda_errors(plane)) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"KEDA counted {seen} errors, never {count}")
        await asyncio.sleep(0.2)


def keda_scaled_object(address: str, *, polling: int, **spec: Any) -> dict[str, Any]:
    so = scaled_object()
    so["spec"] |= {
        "pollingInterval": polling,
        "cooldownPeriod": 5,
        # The HPA's default 5-minute scale-down window would only slow the test down.
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}},
        **spec,
    }
    so["spec"]["triggers"][0] = {"type": "external-push", "metadata": {"scalerAddress": address, **METADATA}}
    return so


async def test_push_scales_from_zero_the_hpa_scales_down_deleting_no_busy_worker_and_keda_goes_back_to_zero(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    celery, node = await with_keda(plane, direct_db)
    await plane.apply([deployment(0)])
    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    await plane.apply([keda_scaled_object(f"127.0.0.1:{scaler.server.port}", polling=PUSH_ONLY)])
    # KEDA opened its StreamIsActive stream; its first poll found nothing to do.
    await until_metric(scaler, f"{N}_open_streams", 1)
    await until_keda(plane, "the ScaledObject ready", lambda so: condition(so, "Ready").get("status") == "True")

    # 1. From zero: 40 queued tasks at concurrency 16. The push activates (KEDA sets 1); the HPA then sets 3.
    loop = asyncio.get_running_loop()
    await direct_db.add_many(40, "queued", queue="default")
    committed = loop.time()
    while (await workload(plane))["spec"]["replicas"] == 0:
        assert loop.time() - committed < DEADLINE, "KEDA never activated the Deployment"
        await asyncio.sleep(0.02)
    report(f"activation latency (commit of the first queued task to spec.replicas = 1): {loop.time() - committed:.2f}s")
    await replicas_reach(plane, node, 3)
    assert [item["value"] for item in (await plane.api("GET", METRIC_PATH))["items"]] == ["3"]

    # 2. Safe scale-down. Celery starts 20 tasks on one worker and 1 on another (demand is still 40), the scaler
    # sets the deletion costs, then the queued rest is done: demand 21 needs 2 workers; the HPA lowers to 2 and
    # the ReplicaSet controller deletes the idle worker.
    idle, heavy, light = (p["metadata"]["name"] for p in await running_pods(node, 3))
    await celery.start(**{heavy: 20, light: 1})
    assert scaler.server.reconciler is not None
    await scaler.server.reconciler.reconcile_once()
    assert costs(await node.pods()) == {idle: None, heavy: "20", light: "1"}
    await celery.finish(None, 19)
    await replicas_reach(plane, node, 2)
    assert node.deleted == [idle]
    # 3 tasks left (ceil(3/16) is 1) on two workers: the busy-worker floor holds the HPA at 2.
    await celery.finish(heavy, 18)
    assert [item["value"] for item in (await plane.api("GET", METRIC_PATH))["items"]] == ["2"]
    await scaler.server.reconciler.reconcile_once()
    assert costs(await node.pods()) == {heavy: "2", light: "1"}
    # The light worker's task ends: the HPA lowers to 1 and the controller takes the worker now idle.
    await celery.finish(light, 1)
    await replicas_reach(plane, node, 1)
    assert node.deleted == [idle, light]

    # 3. Cooldown to zero after the last task (KEDA acts on a poll: a pushed `false` is ignored by design).
    await celery.finish(heavy, 2)
    assert await celery.unfinished() == 0
    await plane.api("PATCH", SO_PATH, {"spec": {"pollingInterval": 1}}, content_type="application/merge-patch+json")
    await to_zero_deleting_no_busy_pod(plane, node, "Deployment", "deployments")


async def test_on_the_charts_stateful_set_the_hpa_keeps_every_ordinal_up_to_the_busy_one(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    celery, node = await with_keda(plane, direct_db)
    await plane.apply([stateful_set(0)])
    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    so = keda_scaled_object(f"127.0.0.1:{scaler.server.port}", polling=1)
    so["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"
    await plane.apply([so])
    await direct_db.add_many(40, "queued", queue="default")
    await replicas_reach(plane, node, 3, "statefulsets")
    names = [p["metadata"]["name"] for p in await running_pods(node, 3)]
    assert names == [f"airflow-worker-{ordinal}" for ordinal in range(3)]

    # A long task on the top ordinal and 20 on the first; the queued rest ends. Demand 21 needs 2 workers, but a
    # StatefulSet removes its highest ordinal first: the floor keeps all 3, and the HPA stays there.
    assert scaler.server.reconciler is not None
    await scaler.server.reconciler.reconcile_once()  # learns from the API server that the target is a StatefulSet
    await celery.start(**{names[0]: 20, names[2]: 1})
    await celery.finish(None, 19)
    assert [item["value"] for item in (await plane.api("GET", METRIC_PATH))["items"]] == ["3"]
    # The top ordinal's task ends: the floor is 1 busy ordinal, demand 20 needs 2; the HPA removes ordinal 2 only.
    await celery.finish(names[2], 1)
    await replicas_reach(plane, node, 2, "statefulsets")
    assert node.deleted == [names[2]]
    await celery.finish(names[0], 20)
    await to_zero_deleting_no_busy_pod(plane, node, "StatefulSet", "statefulsets")


async def test_a_scaler_restart_scales_nothing_and_a_stopped_database_brings_the_fallback(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    celery, node = await with_keda(plane, direct_db)
    target = urlsplit(direct_db.dsn)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through_proxy = dataclasses.replace(direct_db, dsn=replace_login(direct_db.dsn, host="127.0.0.1", port=proxy.port))
    await plane.apply([deployment(0)])
    scaler = await start_protected_scaler(plane, through_proxy, start_scaler)
    port = scaler.server.port
    # The examples' fallback: after 3 failed calls, 2 workers, or as many as run now if that is more.
    fallback = {"failureThreshold": 3, "replicas": 2, "behavior": "currentReplicasIfHigher"}
    await plane.apply([keda_scaled_object(f"127.0.0.1:{port}", polling=1, fallback=fallback)])
    await direct_db.add_many(40, "queued", queue="default")
    await replicas_reach(plane, node, 3)

    # 4. The scaler restarts (a new version rolled out, the pod evicted). KEDA's calls fail meanwhile; an
    # unreachable external scaler gives KEDA no metric spec, so its fallback does not engage: the ScaledObject
    # turns Ready=False and the HPA holds. Nothing scales, not even once KEDA's cooldown has passed many times
    # over; the new process gets KEDA's stream back.
    before = (await workload(plane))["metadata"]["generation"]
    errors = await keda_errors(plane)
    await scaler.server.stop()
    await until_keda(plane, "the scaler unreachable", lambda so: condition(so, "Ready").get("status") == "False")
    # Each failed poll (1 s apart) is one error: 10 more are twice the 5 s cooldown.
    await until_keda_errors(plane, errors + 10)
    settings = dataclasses.replace(scaler.server.settings, grpc_address=f"127.0.0.1:{port}")
    restarted = await start_scaler(settings)
    await until_metric(restarted, f"{N}_open_streams", 1)
    await until_keda(plane, "the ScaledObject ready again", lambda so: condition(so, "Ready").get("status") == "True")
    # The Deployment's spec never changed in between (its generation counts every change of replicas).
    assert (await workload(plane))["metadata"]["generation"] == before
    assert len(await running_pods(node, 3)) == 3

    # 5. The database stops with 1 worker running: the scaler answers UNAVAILABLE (never 0), and after 3
    # failures KEDA gives the HPA the fallback: 2 workers.
    await celery.finish(None, 30)
    await replicas_reach(plane, node, 1)
    await proxy.cut()
    await replicas_reach(plane, node, 2)
    assert condition(await plane.api("GET", SO_PATH), "Fallback")["status"] == "True"
    metrics = await scrape(restarted.server.http.port)
    assert metrics.value(f"{N}_database_up", database="airflow") == 0
    assert node.busy_deleted == []


async def test_a_dag_due_within_the_lead_activates_the_workers_before_its_first_task_is_queued(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    node = FakeNode(plane, NS)
    await node.register()
    # Due in 90 s; its last three scheduled runs each queued 40 tasks in their first minute.
    dag = ScheduledDag("etl_hourly", due_in=90, runs=[PastRunSpec(40)] * 3)
    await add_dags(
        [dag],
        airflow3=direct_db.version.startswith("3."),
        insert_rows=lambda table, rows: insert_rows(direct_db.connection, table, rows),
        insert_tasks=lambda tasks: insert_task_instances(direct_db.connection, tasks),
    )
    await start_keda(plane)
    await plane.apply([deployment(0)])
    scaler = await start_protected_scaler(plane, direct_db, start_scaler, prewarm=PrewarmSettings(schedule_interval=1))
    so = keda_scaled_object(f"127.0.0.1:{scaler.server.port}", polling=PUSH_ONLY)
    so["spec"]["triggers"][0]["metadata"] |= {"prewarm": "true", "prewarmLeadSeconds": "300"}
    await plane.apply([so])

    # Nothing is queued or running, yet the push activates and the HPA brings the predicted 40 tasks' 3 workers.
    await replicas_reach(plane, node, 3)
    assert await Celery(direct_db).unfinished() == 0
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value(f"{N}_prewarm_workers", namespace=NS, scaled_object="airflow-worker") == 3
