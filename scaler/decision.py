"""Pure: (ScalerSpec, Snapshot) -> Decision. No I/O.

Demand is the task instances in state running or queued that this trigger
counts; the workers asked for are ceil(demand / concurrency), reported to KEDA
as an AverageValue metric with target 1 so the HPA's desired replicas equal it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaler.metadata import ScalerSpec, executor_spellings
from scaler.snapshot import Snapshot, SnapshotRow

DEMAND_STATES = ("running", "queued")


@dataclass(frozen=True)
class QueueDemand:
    queue: str | None
    running: int
    queued: int


@dataclass(frozen=True)
class Decision:
    running: int
    queued: int
    workers: int
    active: bool
    by_queue: tuple[QueueDemand, ...]

    @property
    def demand(self) -> int:
        return self.running + self.queued


def explain(spec: ScalerSpec, decision: Decision) -> str:
    """Why this decision, in the words of the metadata keys.

    >>> from scaler.metadata import parse_metadata
    >>> spec = parse_metadata({"database": "a", "concurrency": "16"})
    >>> explain(spec, Decision(running=20, queued=17, workers=3, active=True, by_queue=()))
    'demand 37 (running 20 + queued 17) / concurrency 16 -> 3 workers; active: 37 > activationThreshold 0'
    """
    demand = decision.demand
    comparison = ">" if decision.active else "<="
    return (
        f"demand {demand} (running {decision.running} + queued {decision.queued}) / concurrency {spec.concurrency} "
        f"-> {decision.workers} workers; {'active' if decision.active else 'inactive'}: "
        f"{demand} {comparison} activationThreshold {spec.activation_threshold:g}"
    )


def counts(spec: ScalerSpec, row: SnapshotRow) -> bool:
    """Whether this trigger counts the task instances of a snapshot row."""
    if row.state not in DEMAND_STATES:
        return False
    if spec.queues is not None and row.queue not in spec.queues:
        return False
    if row.queue is not None and row.queue in spec.exclude_queues:
        return False
    # NULL executor means "the default executor": always counted (the chart's `!=` bug dropped these).
    if row.executor is None or not spec.exclude_executors:
        return True
    # The stored value may be an alias, a class name or a module path: compare every spelling.
    return spec.exclude_executors.isdisjoint(executor_spellings(row.executor))


def decide(spec: ScalerSpec, snapshot: Snapshot) -> Decision:
    """
    >>> from scaler.metadata import parse_metadata
    >>> spec = parse_metadata({"database": "a", "concurrency": "16"})
    >>> rows = (SnapshotRow("running", "default", None, 17), SnapshotRow("queued", "default", None, 16))
    >>> decide(spec, Snapshot(rows, True, 0.0)).workers
    3
    """
    per_queue: dict[str | None, list[int]] = {}
    for row in snapshot.rows:
        if counts(spec, row):
            pair = per_queue.setdefault(row.queue, [0, 0])
            pair[0 if row.state == "running" else 1] += row.count
    running = sum(pair[0] for pair in per_queue.values())
    queued = sum(pair[1] for pair in per_queue.values())
    demand = running + queued
    return Decision(
        running=running,
        queued=queued,
        workers=math.ceil(demand / spec.concurrency),
        active=demand > spec.activation_threshold,
        by_queue=tuple(
            QueueDemand(queue, pair[0], pair[1])
            for queue, pair in sorted(per_queue.items(), key=lambda item: (item[0] is None, item[0] or ""))
        ),
    )
