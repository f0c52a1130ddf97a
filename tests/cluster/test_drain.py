"""Drain on a real control plane: the pods drain stops are the ones the real ReplicaSet controller removes,
and the replicas' Lease is held through the real API server with the drain overlay's Role.

`make cluster-e2e`. Real Celery workers on a real Redis stand in for the fake node's pods, named after them
(celery@<pod name>), so that `inspect active_queues` shows what drain did; the HPA's part is `kubectl scale`
to what KEDA is told, as in test_safe_scale_down.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scaler.adapters.celery_broker.control import CeleryControl
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.rules.broker_urls import parse_broker_url
from scaler.service.drain_loop import DrainSettings
from tests.cluster.conftest import METADATA, NS, deployment, running_pods, scaled_object, start_protected_scaler
from tests.conftest import AirflowDatabase, StartScaler, until
from tests.support.celery_workers import CeleryWorkers, until_consumers
from tests.support.control_plane import ControlPlane
from tests.support.fake_node import FakeNode
from tests.support.kustomize import load_documents
from tests.support.servers import Redis, ServerUnavailable

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = frozenset({"default"})


@pytest.fixture
def redis() -> Iterator[Redis]:
    try:
        server = Redis()
    except ServerUnavailable as error:
        pytest.skip(str(error))
    with server:
        yield server


async def test_the_pods_drain_stops_are_the_ones_the_replicaset_controller_removes(
    plane: ControlPlane, node: FakeNode, direct_db: AirflowDatabase, start_scaler: StartScaler, redis: Redis
) -> None:
    await plane.apply(load_documents(ROOT / "manifests" / "overlays" / "drain" / "lease-rbac.yaml"))
    await plane.apply([deployment(3)])
    first, second, third = (p["metadata"]["name"] for p in await running_pods(node, 3))
    await plane.apply([scaled_object()])
    # Two workers run a task each, the third none.
    await direct_db.add(TaskInstance("on_first", "running", hostname=first))
    await direct_db.add(TaskInstance("on_second", "running", hostname=second))
    metadata = {**METADATA, "drain": "true"}

    with CeleryWorkers(redis.url, [first, second, third]) as workers:
        nodes = [workers.nodename(name) for name in (first, second, third)]
        control = CeleryControl(parse_broker_url(redis.url), timeout=2.0)
        try:
            await until_consumers(control, dict.fromkeys(nodes, DEFAULT))
            drain = DrainSettings(
                brokers={"airflow": parse_broker_url(redis.url)}, interval=3600, timeout=2.0, lease_namespace="keda"
            )
            scaler = await start_protected_scaler(plane, direct_db, start_scaler, drain=drain)
            leadership, loop, reconciler = scaler.server.leadership, scaler.server.drain, scaler.server.reconciler
            assert leadership is not None
            assert loop is not None
            assert reconciler is not None
            # The Lease, as the API server and the overlay's Role allow it: this replica takes it.
            await until(leadership.leading, 60)
            lease = await plane.api(
                "GET", "/apis/coordination.k8s.io/v1/namespaces/keda/leases/airflow-keda-scaler-drain"
            )
            assert lease["spec"]["holderIdentity"] == leadership.identity

            # Both busy workers are the floor; one of them is enough to consume (a free slot): the pods tie on
            # tasks and age, so the first by name is kept, the second and the idle third are drained.
            assert (await scaler.keda.poll(metadata, name="airflow-worker")).value_int == 2
            await loop.drain_once()
            await reconciler.reconcile_once()
            await until_consumers(control, {nodes[0]: DEFAULT, nodes[1]: frozenset(), nodes[2]: frozenset()})

            # The HPA follows KEDA to 2: the ReplicaSet controller removes the idle third, drained.
            await plane.kubectl("scale", "deployment/airflow-worker", "-n", NS, "--replicas=2")
            assert [p["metadata"]["name"] for p in await running_pods(node, 2)] == [first, second]

            # The drained second worker's task ends; it took nothing new, so it is idle, and it goes next.
            await direct_db.connection.execute("UPDATE task_instance SET state = 'success' WHERE hostname = $1", second)
            assert (await scaler.keda.poll(metadata, name="airflow-worker")).value_int == 1
            await loop.drain_once()
            await reconciler.reconcile_once()
            await plane.kubectl("scale", "deployment/airflow-worker", "-n", NS, "--replicas=1")
            assert [p["metadata"]["name"] for p in await running_pods(node, 1)] == [first]
            # The kept worker consumed throughout.
            assert (await control.consumers([nodes[0]]))[nodes[0]] == DEFAULT
        finally:
            await control.close()
