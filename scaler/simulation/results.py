"""Pure: what a run of the model measured: tasks, kills, worker-seconds, queued waits, and samples for plots."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from scaler.simulation.settings import Policy


@dataclass(frozen=True)
class Sample:
    """The model's state at one second, for plots: demand, workers asked for, pods and replicas."""

    at: int
    running: int
    queued: int
    asked: int  # the workers the policy's formula asked for at the last sync
    floor: int  # the busy-worker floor in that answer (0 for the chart's formula)
    pods: int  # every pod, starting, ready or terminating
    replicas: int


@dataclass
class Result:
    policy: Policy
    tasks: int = 0
    killed: int = 0
    lost_seconds: int = 0
    failed: int = 0
    worker_seconds: int = 0
    packed_seconds: int = 0
    # On a StatefulSet: ready pods with no task below a busy ordinal, which the set cannot remove before it.
    held_idle_seconds: int = 0
    waits: array[int] = field(default_factory=lambda: array("q"))  # every attempt, retries included
    first_waits: array[int] = field(default_factory=lambda: array("q"))  # first attempts only
    # First attempts of scheduled runs' tasks, and of the others (Arrival.scheduled).
    scheduled_waits: array[int] = field(default_factory=lambda: array("q"))
    unscheduled_waits: array[int] = field(default_factory=lambda: array("q"))
    finished_at: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def queued_p95(self) -> float:
        return percentile(self.waits, 0.95)

    @property
    def queued_p50(self) -> float:
        return percentile(self.waits, 0.5)

    @property
    def first_queued_p95(self) -> float:
        return percentile(self.first_waits, 0.95)

    def summary(self) -> Summary:
        """The figures without the per-attempt waits (a million of them for a busy week)."""
        return Summary(
            self.policy,
            self.tasks,
            self.killed,
            self.lost_seconds,
            self.failed,
            self.worker_seconds,
            self.queued_p50,
            self.queued_p95,
            self.samples,
            percentile(self.scheduled_waits, 0.95),
            percentile(self.unscheduled_waits, 0.95),
            len(self.scheduled_waits),
        )

    def add(self, other: Result) -> None:
        """Sum another run of the same policy into this one (bench's totals over seeds)."""
        self.tasks += other.tasks
        self.killed += other.killed
        self.lost_seconds += other.lost_seconds
        self.failed += other.failed
        self.worker_seconds += other.worker_seconds
        self.packed_seconds += other.packed_seconds
        self.held_idle_seconds += other.held_idle_seconds
        self.waits += other.waits
        self.first_waits += other.first_waits
        self.scheduled_waits += other.scheduled_waits
        self.unscheduled_waits += other.unscheduled_waits


@dataclass(frozen=True)
class Summary:
    """A Result's figures, small enough to send between processes."""

    policy: Policy
    tasks: int
    killed: int
    lost_seconds: int
    failed: int
    worker_seconds: int
    queued_p50: float
    queued_p95: float
    samples: list[Sample]
    # First attempts of scheduled runs' tasks and of the others (Arrival.scheduled), and how many were scheduled.
    scheduled_p95: float = 0.0
    unscheduled_p95: float = 0.0
    scheduled_tasks: int = 0


def percentile(values: Iterable[int], fraction: float) -> float:
    """The nearest-rank percentile; 0 for no values. Counts values rather than sorting them: a million
    waits take little memory, as they are whole seconds with few distinct values.

    >>> percentile([5, 1, 3, 2, 4], 0.5), percentile([5, 1, 3, 2, 4], 0.95), percentile([], 0.5)
    (3.0, 5.0, 0.0)
    """
    counts = Counter(values)
    total = sum(counts.values())
    if not total:
        return 0.0
    rank = min(total, max(1, math.ceil(fraction * total)))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return float(value)
    raise AssertionError("unreachable: the ranks add up to the total")
