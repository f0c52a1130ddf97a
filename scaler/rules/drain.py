"""Pure: which of a trigger's workers to drain (stop consuming its queues) so that they empty and go first.

A worker that is drained takes no new tasks and finishes the ones it runs; once
empty, the busy-worker floor no longer holds it and the workload removes it. The
rule keeps consuming the fewest workers that leave a free slot for what is queued,
taken in the order the workload keeps them:

- a Deployment's ReplicaSet removes the lowest pod-deletion-cost first, so the
  busiest workers are kept and the least busy drained (then the newest, as the
  ReplicaSet breaks ties);
- a StatefulSet removes its highest ordinals, so the lowest are kept and new work
  is packed onto them, letting the top ordinals empty and the set shrink.

The workers kept must leave at least one free slot when queued tasks and the
tasks they already run are counted (a task that arrives finds a worker at once,
without waiting for the next round), and are at least what pre-warm asks for and
the ScaledObject's minReplicaCount: the workload keeps that many pods whatever
happens, so draining them would save nothing and leave them drained for good.
Tasks running on drained workers need no consumer, so they are not counted: that
is what lets the rule drain more than ceil(demand / concurrency) would.

`scaler.simulation` applies this same function to its model pods, so bench and
`replay` measure the product's rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scaler.rules.busy_floor import ordinal
from scaler.rules.trigger_metadata import TargetKind


@dataclass(frozen=True)
class DrainWorker:
    """A worker the rule may drain: its name (the Celery worker's host), its tasks and its place in the set."""

    name: str
    running: int  # task instances it runs now, whatever their queue: a busy pod is busy
    age: float = 0.0  # seconds since the pod was created: the ReplicaSet removes the newest first


@dataclass(frozen=True)
class DrainPlan:
    """The workers to keep consuming and to drain, each in the order the workload keeps them."""

    keep: tuple[str, ...]
    drain: tuple[str, ...]

    def explain(self, queued: int, concurrency: int) -> str:
        """For the decision log.

        >>> DrainPlan(("w-0",), ("w-2", "w-1")).explain(3, 16)
        'drain 2 of 3 workers (w-2, w-1): 1 kept consuming for queued 3 and their running tasks (concurrency 16)'
        """
        total = len(self.keep) + len(self.drain)
        if not self.drain:
            return f"drain none of {total} workers"
        names = ", ".join(self.drain[:5]) + (f" and {len(self.drain) - 5} more" if len(self.drain) > 5 else "")
        return (
            f"drain {len(self.drain)} of {total} workers ({names}): {len(self.keep)} kept consuming for queued "
            f"{queued} and their running tasks (concurrency {concurrency})"
        )


def keep_order(workers: Iterable[DrainWorker], kind: TargetKind) -> list[DrainWorker]:
    """The workers in the order the workload keeps them, the one it would remove last first.

    >>> ws = [DrainWorker("w-1", 3), DrainWorker("w-0", 0), DrainWorker("w-2", 9)]
    >>> [w.name for w in keep_order(ws, "StatefulSet")], [w.name for w in keep_order(ws, "Deployment")]
    (['w-0', 'w-1', 'w-2'], ['w-2', 'w-1', 'w-0'])
    """
    if kind == "StatefulSet":
        # A name without an ordinal is not the set's: it sorts last, so it is drained first.
        return sorted(workers, key=lambda w: (_ordinal_or_last(w.name), w.name))
    return sorted(workers, key=lambda w: (-w.running, -w.age, w.name))


def plan_drain(
    workers: Iterable[DrainWorker],
    *,
    queued: int,
    concurrency: int,
    kind: TargetKind,
    prewarm_workers: int = 0,
    min_replicas: int = 0,
) -> DrainPlan:
    """Keep the fewest workers, in keep_order, that leave a free slot and cover pre-warm and minReplicaCount;
    drain the rest.

    >>> ws = [DrainWorker(f"w-{n}", running) for n, running in enumerate([16, 2, 1, 0])]
    >>> plan_drain(ws, queued=0, concurrency=16, kind="StatefulSet")
    DrainPlan(keep=('w-0', 'w-1'), drain=('w-3', 'w-2'))
    >>> plan_drain(ws, queued=0, concurrency=16, kind="Deployment").drain
    ('w-3', 'w-2')
    >>> plan_drain(ws, queued=40, concurrency=16, kind="StatefulSet").drain
    ()
    >>> plan_drain(ws, queued=0, concurrency=16, kind="StatefulSet", min_replicas=3).drain
    ('w-3',)
    """
    ordered = keep_order(workers, kind)
    keep: list[str] = []
    load = queued
    at_least = max(prewarm_workers, min_replicas)
    for worker in ordered:
        if load < len(keep) * concurrency and len(keep) >= at_least:
            break
        keep.append(worker.name)
        load += worker.running
    # The drained ones in the order they will go (the workload's removal order): the reverse.
    drain = tuple(w.name for w in reversed(ordered[len(keep) :]))
    return DrainPlan(tuple(keep), drain)


def kept_from_history(busy: Mapping[str, int], *, queued: int, concurrency: int, kind: TargetKind) -> int:
    """How many workers plan_drain keeps consuming, from what a task_instance history shows of a moment: the
    tasks each busy worker (by hostname) runs and how many are queued. Idle workers are not in a history, so
    as many as the rule could keep are taken to exist: on a StatefulSet at the ordinals its busy pods leave
    free (every ordinal below the highest exists), on a Deployment behind the busy ones (idle sorts last).
    A history shows no schedule, so pre-warm's part is not known. `make e2e` compares this with a live drain
    loop's rounds.

    >>> kept_from_history({"w-3": 2}, queued=0, concurrency=4, kind="StatefulSet")  # w-0 has a free slot
    1
    >>> kept_from_history({"w-3": 4, "w-0": 4}, queued=1, concurrency=4, kind="StatefulSet")  # w-0, w-1
    2
    >>> kept_from_history({"a": 4, "b": 1}, queued=5, concurrency=4, kind="Deployment")  # a, b, one idle
    3
    """
    workers = [DrainWorker(name, running) for name, running in busy.items()]
    # Enough idle ones for any plan: the queue and a free slot, beyond the busy workers.
    spare = -(-(queued + 1) // max(1, concurrency))
    if kind == "StatefulSet":
        taken = {number for number in map(ordinal, busy) if number is not None}
        free = (n for n in range(max(taken, default=-1) + 1 + spare) if n not in taken)
        workers += [DrainWorker(f"idle-{n}", 0) for n in free]
    else:
        workers += [DrainWorker(f"~idle-{n}", 0) for n in range(spare)]
    return len(plan_drain(workers, queued=queued, concurrency=concurrency, kind=kind).keep)


def _ordinal_or_last(name: str) -> float:
    number = ordinal(name)
    return float("inf") if number is None else number
