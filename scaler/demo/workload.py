"""The demo's synthetic Airflow workload and its worker sets (pure: no I/O).

Two ScaledObjects, one per Celery queue; bursts of tasks that start when their
queue's replicas have a free slot; and the Sample each poll records, which the
live table and the plot (plot.py) both read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# How often the workload moves (seconds): tasks arrive, start and finish.
TICK = 0.5


@dataclass(frozen=True)
class DemoScaledObject:
    """One worker set: its queue, its trigger metadata and its ScaledObject's settings."""

    name: str
    queue: str
    concurrency: int
    max_replicas: int

    @property
    def metadata(self) -> dict[str, str]:
        return {"database": "airflow", "queues": self.queue, "concurrency": str(self.concurrency)}


SCALED_OBJECTS = (
    DemoScaledObject("celery-default", "default", concurrency=16, max_replicas=10),
    DemoScaledObject("celery-ml", "ml", concurrency=4, max_replicas=4),
)


@dataclass
class DemoTask:
    key: str
    queue: str
    run_for: float
    state: str = "queued"
    done_at: float = 0.0


@dataclass
class Workload:
    """Bursts of tasks; a queued task starts when its queue's workers have a free slot."""

    rng: random.Random
    tasks: list[DemoTask] = field(default_factory=list)
    serial: int = 0

    def arrivals(self) -> list[DemoTask]:
        """Called once a tick: a burst on both queues at the start, then sometimes on `default`, less often `ml`."""
        new: list[DemoTask] = []
        if self.serial == 0:
            new += [self._task("default") for _ in range(40)] + [self._task("ml") for _ in range(6)]
        if self.rng.random() < 0.05:
            new += [self._task("default") for _ in range(self.rng.randint(10, 50))]
        if self.rng.random() < 0.04:
            new += [self._task("ml") for _ in range(self.rng.randint(1, 8))]
        self.tasks += new
        return new

    def _task(self, queue: str) -> DemoTask:
        self.serial += 1
        long = self.rng.random() < 0.1  # some tasks run long
        return DemoTask(f"task_{self.serial}", queue, self.rng.uniform(20, 40) if long else self.rng.uniform(3, 10))

    def advance(self, now: float, slots: dict[str, int]) -> tuple[list[str], list[str]]:
        """Finish what is done, then start queued tasks (oldest first) into free worker slots."""
        finished = [t for t in self.tasks if t.state == "running" and now >= t.done_at]
        for task in finished:
            task.state = "success"
        self.tasks = [t for t in self.tasks if t.state != "success"]
        started: list[DemoTask] = []
        for queue, capacity in slots.items():
            free = capacity - sum(1 for t in self.tasks if t.queue == queue and t.state == "running")
            waiting = [t for t in self.tasks if t.queue == queue and t.state == "queued"]
            started += waiting[: max(0, free)]
        for task in started:
            task.state, task.done_at = "running", now + task.run_for
        return [t.key for t in started], [t.key for t in finished]

    def counts(self, queue: str) -> tuple[int, int]:
        queued = sum(1 for t in self.tasks if t.queue == queue and t.state == "queued")
        running = sum(1 for t in self.tasks if t.queue == queue and t.state == "running")
        return queued, running


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
