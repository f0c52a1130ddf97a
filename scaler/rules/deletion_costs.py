"""Pure: the pod-deletion-cost each worker pod should carry, from the snapshot's running tasks.

The reconciler (scaler.service.deletion_cost_reconciler) patches these onto the pods; the
simulation (scaler.simulation) applies the same functions to its model pods, so
a replay removes the pods a real ReplicaSet would.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from scaler.rules.snapshot import Snapshot
from scaler.rules.worker_names import worker_key


@dataclass(frozen=True)
class WorkerPod:
    name: str
    keys: frozenset[str]  # worker_names.pod_keys: how Airflow may have recorded this pod
    deletion_cost: str | None  # the annotation as it is now
    hostname: str = ""  # the pod's hostname (spec.hostname, else its name cut to 63): Celery's `celery@<hostname>`
    created_at: float = 0.0  # metadata.creationTimestamp, seconds since the epoch (drain keeps older ones first)


def tasks_per_worker(snapshot: Snapshot) -> Counter[str]:
    """Running task instances per worker (worker_names.worker_key), whatever their queue: a busy pod is busy."""
    tasks: Counter[str] = Counter()
    for row in snapshot.rows:
        if row.state == "running" and (key := worker_key(row.hostname)) is not None:
            tasks[key] += row.count
    return tasks


def wanted_costs(pods: list[WorkerPod], tasks: Counter[str]) -> list[tuple[WorkerPod, int]]:
    """The pods whose annotation must change and the cost each must get; raises first.

    An absent annotation is cost 0 to the ReplicaSet, so an idle pod without one is left alone.

    >>> idle, busy = WorkerPod("w-1", frozenset({"w-1"}), "3"), WorkerPod("w-2", frozenset({"w-2"}), None)
    >>> [(pod.name, cost) for pod, cost in wanted_costs([idle, busy], Counter({"w-2": 5}))]
    [('w-2', 5), ('w-1', 0)]
    """
    changes = []
    for pod in pods:
        cost = sum(tasks.get(key, 0) for key in pod.keys)
        current = pod.deletion_cost
        if (current is None and cost == 0) or current == str(cost):
            continue
        changes.append((pod, cost))
    # Protect newly busy pods before exposing newly idle ones.
    changes.sort(key=lambda change: -(change[1] - _as_int(change[0].deletion_cost)))
    return changes


def _as_int(annotation: str | None) -> int:
    try:
        return int(annotation) if annotation is not None else 0
    except ValueError:
        return 0
