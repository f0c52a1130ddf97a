"""The model against the real thing: scaler/simulation's KEDA, HPA and ReplicaSet model and the real KEDA, HPA
controller and ReplicaSet controller, on the same arrivals, second by second.

The test plays Celery on the real pods (each queued task goes to the least loaded ready worker with a free slot,
and ends `duration` seconds after it started) and runs the scaler's deletion-cost round after each move, as the
model reconciles every second. The model runs the same arrivals with the same settings: KEDA polling every
second with a 5 s cooldown, the HPA syncing every 2 s with no scale-down window, pods ready within a second.
They cannot agree every second: the real HPA's and KEDA's loops start at arbitrary phases of their periods and
the metric reaches the HPA through the adapter a call later, so a change can come a sync earlier or later than
in the model. What must hold is that they agree within one replica nearly always, and that neither kills a task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scaler.fixtures.airflow_schema import TaskInstance
from scaler.simulation.control import Replay
from scaler.simulation.settings import ClusterSettings, Policy
from scaler.simulation.workers import Arrival
from tests.cluster.conftest import NS, deployment, report, scaled_object, start_protected_scaler, until_ready
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.control_plane import ControlPlane, start_keda
from tests.support.fake_node import FakeNode

pytestmark = pytest.mark.cluster

CONCURRENCY = 4
TICK = 0.25  # the test's Celery and node act this often
SETTINGS = ClusterSettings(
    concurrency=CONCURRENCY,
    polling_interval=1,
    cooldown=5,
    hpa_sync=2,  # the control plane's --horizontal-pod-autoscaler-sync-period
    stabilization=0,
    pod_start=1,
    reconcile=1,
    max_replicas=10,
)
# Three waves: 12 tasks (3 workers), 8 more while they run (5), then a small one after a lull; about 100 s.
TRACE = [
    *[Arrival(0, 30)] * 12,
    *[Arrival(15, 40)] * 8,
    *[Arrival(45, 10)] * 2,
    *[Arrival(60, 20)] * 6,
    *[Arrival(62, 25)] * 3,
]
AGREEMENT = 0.8  # the share of seconds within one replica below which the model is wrong, not just out of phase


LAST = 180  # seconds: the real run stops here at the latest (the model's is back at 0 after about 90)


def model_replicas() -> list[int]:
    """The model's replicas each second, up to its last second above 0 and five more."""
    replay = Replay(Policy("airflow-keda-scaler", protection=True), SETTINGS, TRACE, seed=1, sample_every=1)
    result = replay.run(until=LAST)
    assert result.killed == 0
    replicas = [sample.replicas for sample in result.samples]
    end = max(s for s, count in enumerate(replicas) if count) + 5
    return replicas[:end]


async def real_replicas(
    plane: ControlPlane, node: FakeNode, database: AirflowDatabase, scaler: Any, seconds: int
) -> list[int]:
    """Play the trace on the real cluster; spec.replicas at each whole second, for at least `seconds` and until
    the Deployment is back at 0."""
    loop = asyncio.get_running_loop()
    arrivals = sorted(enumerate(TRACE), key=lambda item: item[1].at)
    queued: list[tuple[str, int]] = []  # (task_id, duration), in arrival order
    running: dict[str, tuple[str, float]] = {}  # task_id -> (pod, ends at)
    samples: list[int] = []
    start = loop.time()
    while (len(samples) < seconds or samples[-1]) and len(samples) <= LAST:
        now = loop.time() - start
        while arrivals and arrivals[0][1].at <= now:
            number, arrival = arrivals.pop(0)
            queued.append((f"task_{number}", arrival.duration))
            await database.add(TaskInstance(f"task_{number}", "queued"))
        ended = [task for task, (_, end) in running.items() if end <= now]
        for task in ended:
            del running[task]
        if ended:
            await database.connection.execute(
                "UPDATE task_instance SET state = 'success' WHERE task_id = ANY($1::text[])", ended
            )
        await node.settle()
        ready = [
            p["metadata"]["name"]
            for p in await node.pods()
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        load = {pod: 0 for pod in ready}
        for pod, _ in running.values():
            assert pod in load, f"{pod} was deleted while it ran a task"
            load[pod] += 1
        while queued and load and min(load.values()) < CONCURRENCY:
            pod = min(sorted(load), key=lambda name: load[name])
            task, duration = queued.pop(0)
            running[task] = (pod, now + duration)
            load[pod] += 1
            await database.connection.execute(
                "UPDATE task_instance SET state = 'running', hostname = $1 WHERE task_id = $2", pod, task
            )
        await scaler.server.reconciler.reconcile_once()
        workload = await plane.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/airflow-worker")
        while len(samples) <= int(loop.time() - start):
            samples.append(workload["spec"]["replicas"])
        await asyncio.sleep(TICK)
    return samples


async def test_the_model_and_the_real_keda_and_hpa_agree_within_one_replica(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    model = model_replicas()
    node = FakeNode(plane, NS)
    await node.register()
    await start_keda(plane)
    await plane.apply([deployment(0)])
    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    so = scaled_object()
    so["spec"] |= {
        "pollingInterval": SETTINGS.polling_interval,
        "cooldownPeriod": SETTINGS.cooldown,
        "maxReplicaCount": SETTINGS.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}},
    }
    so["spec"]["triggers"][0]["metadata"] |= {
        "scalerAddress": f"127.0.0.1:{scaler.server.port}",
        "concurrency": str(CONCURRENCY),
    }
    await plane.apply([so])
    # KEDA's first poll has happened (nothing to do): the run starts from a settled ScaledObject.
    await until_ready(plane, "airflow-worker")

    real = await real_replicas(plane, node, direct_db, scaler, len(model))
    assert len(real) <= LAST, f"the Deployment never went back to 0: {real}"
    # Compared while either has workers: the seconds at 0 after the run would only flatter the agreement.
    model += [0] * (len(real) - len(model))
    seconds = len(real)
    within = sum(abs(real[s] - model[s]) <= 1 for s in range(seconds)) / seconds
    exact = sum(real[s] == model[s] for s in range(seconds)) / seconds
    report(f"model vs real replicas over {seconds} s: within one replica {within:.0%}, equal {exact:.0%}")
    report(f"  real:  {real}")
    report(f"  model: {model}")
    assert max(real) == max(model)
    assert within >= AGREEMENT, (real, model)
