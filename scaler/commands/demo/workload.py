"""The demo's synthetic Airflow workload and its worker sets (pure: no I/O).

Three ScaledObjects, one per Celery queue; bursts of tasks, some of them long;
a DAG scheduled every SCHEDULE_EVERY seconds on the third queue, whose trigger
pre-warms (workers come up before each run);
each worker set's pods, Celery and KEDA's scaling are the package's model
(scaler.simulation) run live, in ticks, with the real scaler's answers;
and the Sample each poll records, which the live table and the plot (plot.py)
both read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# How often the workload moves (seconds): tasks arrive, start and finish.
TICK = 0.5


@dataclass(frozen=True)
class DemoScaledObject:
    """One worker set: its queue, its trigger metadata and its ScaledObject's settings."""

    name: str
    queue: str
    concurrency: int
    max_replicas: int
    prewarm_lead: int | None = None  # prewarmLeadSeconds with `prewarm: "true"`

    @property
    def metadata(self) -> dict[str, str]:
        metadata = {"database": "airflow", "queues": self.queue, "concurrency": str(self.concurrency)}
        if self.prewarm_lead is not None:
            metadata |= {"prewarm": "true", "prewarmLeadSeconds": str(self.prewarm_lead)}
        return metadata


# The scheduled DAG: a run every SCHEDULE_EVERY seconds of SCHEDULED_TASKS short tasks on queue etl.
SCHEDULED_DAG = "etl_every_30s"
SCHEDULE_EVERY = 30.0
FIRST_RUN_AFTER = 20.0  # seconds after the demo starts: a 30 s demo shows one pre-warm
SCHEDULED_TASKS = 24

SCALED_OBJECTS = (
    DemoScaledObject("celery-default", "default", concurrency=16, max_replicas=10),
    DemoScaledObject("celery-ml", "ml", concurrency=4, max_replicas=4),
    # Lead: the demo's KEDA poll and HPA sync (2 s each) and a pod's start (2 s).
    DemoScaledObject("celery-etl", "etl", concurrency=8, max_replicas=4, prewarm_lead=6),
)


@dataclass(frozen=True)
class DemoTask:
    key: str
    queue: str
    run_for: float  # seconds
    dag_id: str = "demo_dag"
    run_id: str = "manual__demo"


@dataclass
class Workload:
    """Bursts of tasks on both queues; some run long, so a scale-down finds them on its workers."""

    rng: random.Random
    serial: int = 0

    def arrivals(self) -> list[DemoTask]:
        """Called once a tick: a burst on both queues at the start, then sometimes on `default`, less often `ml`."""
        new: list[DemoTask] = []
        if self.serial == 0:
            new += [self._task("default") for _ in range(40)] + [self._task("ml") for _ in range(6)]
        # A burst every 20 s or so on default: enough quiet between them for workers to empty and go.
        if self.rng.random() < 0.025:
            new += [self._task("default") for _ in range(self.rng.randint(10, 50))]
        if self.rng.random() < 0.03:
            new += [self._task("ml") for _ in range(self.rng.randint(1, 8))]
        return new

    def scheduled_run(self, run_id: str) -> list[DemoTask]:
        """The scheduled DAG's run: its tasks all queued at once, short ones."""
        tasks = []
        for _ in range(SCHEDULED_TASKS):
            self.serial += 1
            tasks.append(DemoTask(f"task_{self.serial}", "etl", self.rng.uniform(3, 6), SCHEDULED_DAG, run_id))
        return tasks

    def _task(self, queue: str) -> DemoTask:
        self.serial += 1
        long = self.rng.random() < 0.1  # some tasks run long
        return DemoTask(f"task_{self.serial}", queue, self.rng.uniform(20, 40) if long else self.rng.uniform(3, 10))


@dataclass(frozen=True)
class Sample:
    """One poll of one ScaledObject: what the database held and what the scaler and KEDA made of it."""

    at: float
    name: str
    queued: int
    running: int
    workers: int
    active: bool
    replicas: int
    error: str = ""
    pods: int = 0  # every worker pod, starting, ready or terminating
    floor_held: bool = False  # the busy-worker floor asked for more than ceil(demand / concurrency)
    prewarm_held: bool = False  # ... or a pre-warm did, before a scheduled run
    due_in: float | None = None  # seconds to the scheduled DAG's next run, for the ScaledObject that pre-warms
    killed: int = 0  # tasks killed so far (SIGKILL after the grace period): 0 is the point
    chart_killed: int = 0  # ... by the chart's formula on the same tasks (the shadow replay)
    chart_replicas: int = 0
    # How long tasks waited in the queue so far (p95 over every start, seconds), here and under the chart's
    # formula: pre-warm's effect is that its scheduled runs wait less.
    queued_p95: float = 0.0
    chart_queued_p95: float = 0.0
