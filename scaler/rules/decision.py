"""Pure: (TriggerSpec, Snapshot) -> Decision. No I/O.

Demand is the task instances in state running or queued that this trigger
counts; the workers asked for are ceil(demand / concurrency), reported to KEDA
as an AverageValue metric with target 1 so the HPA's desired replicas equal it.

Celery spreads tasks over workers, so ceil(demand / concurrency) can be fewer
workers than are running tasks. Unless `scaleDownProtection` is off, the
workers asked for never drop below the busy-worker floor: the workers that run
this trigger's tasks now (busy_floor.busy_worker_floor), so a scale-down only
ever has idle workers to remove.

With `prewarm` on, scheduled runs due soon (prewarm.py) raise the workers and
make the trigger active. Until a run is due its tasks are not in the database,
so its predicted tasks come on top of demand: ceil((demand + predicted) /
concurrency); from its due time on they may be counted already, so the
pre-warm only holds ceil(predicted / concurrency) up. Either way at most
prewarmMaxWorkers more than demand alone asks, and never fewer workers than
without it: workers = max(demand-based, floor, pre-warm).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaler.rules.busy_floor import busy_worker_floor
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import TargetKind, TriggerSpec, executor_spellings
from scaler.rules.worker_names import worker_key

DEMAND_STATES = ("running", "queued")


@dataclass(frozen=True)
class QueueDemand:
    queue: str | None
    running: int
    queued: int


@dataclass(frozen=True)
class PrewarmedRun:
    dag_id: str
    due_epoch: float
    due_in: int  # whole seconds until due when decided (negative: overdue)
    predicted: int  # in-scope task instances predicted


@dataclass(frozen=True)
class Prewarm:
    runs: tuple[PrewarmedRun, ...]
    predicted: int  # in-scope task instances predicted, over every run in pre-warm
    ahead: int  # of which the runs not due yet: their tasks cannot be in the demand
    max_workers: int  # the trigger's prewarmMaxWorkers

    def workers(self, demand: int, concurrency: int) -> int:
        """The workers this pre-warm asks for beside `demand` (see the module docstring).

        >>> warm = Prewarm((PrewarmedRun("etl_hourly", 0.0, 95, 40),), 40, 40, 10)
        >>> warm.workers(0, 16), warm.workers(37, 16), Prewarm(warm.runs, 40, 0, 10).workers(37, 16)
        (3, 5, 3)
        """
        holding = min(ceil_div(self.predicted, concurrency), self.max_workers)
        packed = ceil_div(demand, concurrency)
        on_top = min(ceil_div(demand + self.ahead, concurrency), packed + self.max_workers)
        return max(holding, on_top) if self.predicted else 0

    def explain(self, demand: int, workers: int) -> str:
        """For the decision's log line.

        >>> Prewarm((PrewarmedRun("etl_hourly", 0.0, 95, 40),), 40, 40, 10).explain(0, 3)
        'pre-warm for DAG etl_hourly due in 95 s: predicted 40 tasks -> 3 workers'
        """
        dags = ", ".join(f"{run.dag_id} {_due(run.due_in)}" for run in self.runs[:3])
        if len(self.runs) > 3:
            dags += f" and {len(self.runs) - 3} more"
        label = "DAG" if len(self.runs) == 1 else f"{len(self.runs)} DAGs:"
        on_top = f" on top of demand {demand}" if self.ahead and demand else ""
        return f"pre-warm for {label} {dags}: predicted {self.predicted} tasks{on_top} -> {workers} workers"


def _due(seconds: int) -> str:
    return f"due in {seconds} s" if seconds >= 0 else f"due {-seconds} s ago"


@dataclass(frozen=True)
class Decision:
    running: int
    queued: int
    workers: int
    active: bool
    by_queue: tuple[QueueDemand, ...]
    floor: int = 0  # the busy-worker floor (0 when scaleDownProtection is off)
    target_kind: TargetKind = "Deployment"
    prewarm: Prewarm | None = None  # the scheduled runs this decision starts workers for
    prewarm_workers: int = 0  # what the pre-warm asked for in it (0: none on)

    @property
    def demand(self) -> int:
        return self.running + self.queued


def explain(spec: TriggerSpec, decision: Decision) -> str:
    """Why this decision, in the words of the metadata keys.

    >>> from scaler.rules.trigger_metadata import parse_metadata
    >>> spec = parse_metadata({"database": "a", "concurrency": "16"})
    >>> explain(spec, Decision(running=20, queued=17, workers=3, active=True, by_queue=()))
    'demand 37 (running 20 + queued 17) / concurrency 16 -> 3 workers; active: 37 > activationThreshold 0'
    >>> explain(spec, Decision(running=5, queued=0, workers=5, active=True, by_queue=(), floor=5)).split(";")[0]
    'demand 5 (running 5 + queued 0) / concurrency 16 -> 1 workers, busy-worker floor 5 (Deployment) -> 5 workers'
    """
    demand = decision.demand
    comparison = ">" if demand > spec.activation_threshold else "<="
    packed = ceil_div(demand, spec.concurrency)
    floor = ""
    if decision.floor > packed:
        floor = f", busy-worker floor {decision.floor} ({decision.target_kind}) -> {decision.workers} workers"
    prewarm = ""
    if decision.prewarm is not None:
        prewarm = f"; {decision.prewarm.explain(demand, decision.prewarm_workers)}"
    activity = f"{demand} {comparison} activationThreshold {spec.activation_threshold:g}"
    if decision.prewarm_workers > 0 and not demand > spec.activation_threshold:
        activity += ", pre-warm on"
    return (
        f"demand {demand} (running {decision.running} + queued {decision.queued}) / concurrency {spec.concurrency} "
        f"-> {packed} workers{floor}{prewarm}; {'active' if decision.active else 'inactive'}: {activity}"
    )


def ceil_div(demand: int, concurrency: int) -> int:
    """ceil(demand / concurrency) in integers: a float quotient underflows to 0 for a huge concurrency.

    >>> ceil_div(1, 10**330), ceil_div(33, 16), ceil_div(0, 16)
    (1, 3, 0)
    """
    return -(-demand // concurrency)


def counts(spec: TriggerSpec, row: SnapshotRow) -> bool:
    """Whether this trigger counts the task instances of a snapshot row."""
    return row.state in DEMAND_STATES and in_scope(spec, row.queue, row.executor)


def in_scope(spec: TriggerSpec, queue: str | None, executor: str | None) -> bool:
    """Whether a task instance on `queue` for `executor` is this trigger's work (its queues and executors)."""
    if spec.queues is not None and queue not in spec.queues:
        return False
    if queue is not None and queue in spec.exclude_queues:
        return False
    # NULL executor means "the default executor": always counted (the chart's `!=` bug dropped these).
    if executor is None or not spec.exclude_executors:
        return True
    # The stored value may be an alias, a class name or a module path: compare every spelling.
    return spec.exclude_executors.isdisjoint(executor_spellings(executor))


def decide(
    spec: TriggerSpec, snapshot: Snapshot, *, target_kind: TargetKind | None = None, prewarm: Prewarm | None = None
) -> Decision:
    """`target_kind` is the scale target's kind when the scaler read it from Kubernetes; the metadata's wins.
    `prewarm` is the trigger's pre-warm now (prewarm.prewarm_for), if any.

    >>> from scaler.rules.trigger_metadata import parse_metadata
    >>> spec = parse_metadata({"database": "a", "concurrency": "16"})
    >>> rows = (SnapshotRow("running", "default", None, 17), SnapshotRow("queued", "default", None, 16))
    >>> decide(spec, Snapshot(rows, True, 0.0)).workers
    3
    """
    per_queue: dict[str | None, list[int]] = {}
    busy: set[str] = set()  # workers (worker_names.worker_key) running tasks this trigger counts
    for row in snapshot.rows:
        if counts(spec, row):
            pair = per_queue.setdefault(row.queue, [0, 0])
            pair[0 if row.state == "running" else 1] += row.count
            # One pass over the rows: this runs on every KEDA call.
            if row.state == "running" and (key := worker_key(row.hostname)) is not None:
                busy.add(key)
    running = sum(pair[0] for pair in per_queue.values())
    queued = sum(pair[1] for pair in per_queue.values())
    demand = running + queued
    kind = spec.target_kind or target_kind or "Deployment"
    floor = 0
    if spec.scale_down_protection:
        floor = busy_worker_floor(busy, stateful=kind == "StatefulSet")
    warm = 0 if prewarm is None else prewarm.workers(demand, spec.concurrency)
    return Decision(
        running=running,
        queued=queued,
        workers=max(ceil_div(demand, spec.concurrency), floor, warm),
        floor=floor,
        target_kind=kind,
        prewarm=prewarm,
        prewarm_workers=warm,
        active=demand > spec.activation_threshold or warm > 0,
        by_queue=tuple(
            QueueDemand(queue, pair[0], pair[1])
            for queue, pair in sorted(per_queue.items(), key=lambda item: (item[0] is None, item[0] or ""))
        ),
    )
