"""Pure: the worker side of the model: pods, Celery on them, and Airflow's retries, second by second.

- Celery gives each queued task to a random ready worker with a free slot
  (workers take work as they have room, so tasks spread); a draining worker
  takes none;
- Kubernetes starts a pod in `pod_start`; a removed pod gets SIGTERM, Celery
  stops taking tasks and finishes the running ones (warm shutdown), and SIGKILL
  comes after terminationGracePeriodSeconds, killing what is left; the
  ReplicaSet removes pods not ready first, then the lowest pod-deletion-cost,
  then the newest; a StatefulSet (Parallel) the highest ordinals;
- Airflow retries a killed task from scratch after its retry delay, as many
  times as it has retries, then fails it.

WorkerModel holds that state and moves it; what sets its replicas (KEDA, the
HPA, the scaler) is control.py's Replay, which extends it.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import TargetKind
from scaler.simulation.results import Result
from scaler.simulation.settings import ClusterSettings


class Arrival(NamedTuple):
    """A task instance as the model needs it: when it could start, how long it runs, its retries."""

    at: int
    duration: int
    retries: int | None = None  # None: the settings'
    scheduled: bool = False  # one of a scheduled run's tasks (its waits are also counted apart)


@dataclass(slots=True)
class Task:
    id: int
    duration: int
    retries_left: int
    eligible_at: int
    started_at: int = -1
    worker: Worker | None = None
    attempt: int = 0
    scheduled: bool = False


@dataclass(slots=True)
class Worker:
    name: str
    created_at: int
    ordinal: int = -1
    ready_at: int = 0
    terminating_since: int | None = None
    running: dict[int, Task] = field(default_factory=dict)
    cost: int = 0  # the pod-deletion-cost annotation as last reconciled
    draining: bool = False


class WorkerModel:
    """The pods of one worker set, the tasks on them and in the queue; `replicas` is what the pods converge to."""

    def __init__(
        self,
        settings: ClusterSettings,
        kind: TargetKind,
        arrivals: Iterable[Arrival | tuple[int, int]],
        result: Result,
        *,
        seed: int,
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.rng = random.Random(seed)
        self._arrivals: Iterator[Arrival | tuple[int, int]] = iter(arrivals)
        self._next: Task | None = None
        self._serial = 0
        self._pull()
        self.queue: deque[Task] = deque()
        self.retries: list[tuple[int, int, Task]] = []
        self.completions: list[tuple[int, int, int, Task]] = []
        self.workers: list[Worker] = []
        self.replicas = settings.min_replicas
        self.result = result
        self.in_flight = 0  # tasks arrived and neither done nor failed
        # Kept as they change, not counted each second: a week of a busy trace is 600,000 seconds.
        self.running = 0  # tasks running on any pod
        self.alive = 0  # pods not terminating
        self.terminating = 0
        self._busy_changed: dict[str, Worker] = {}  # pods whose running tasks changed since the last reconcile
        self.names = 0
        # Counts every change of what the next seconds depend on; the reconciler's costs are not one:
        # they are read only when replicas change, which happens at a poll or a sync.
        self._changes = 0
        # What happened to which task, in order, for a caller that mirrors the model (the demo writes
        # them to its task_instance table): ("queued" | "started" | "finished" | "killed" | "failed", task).
        self.events: list[tuple[str, Task]] | None = None

    def _pull(self) -> None:
        """Make the next arrival a Task: tasks exist from their arrival on, so a long trace costs little memory."""
        item = next(self._arrivals, None)
        if item is None:
            self._next = None
            return
        at, duration, *rest = item
        retries = rest[0] if rest else None
        retries_left = self.settings.retries if retries is None else retries
        self._next = Task(
            self._serial, duration, retries_left, eligible_at=at, scheduled=len(rest) > 1 and bool(rest[1])
        )
        self._serial += 1

    def arrive(self, at: int, duration: int, retries: int | None = None) -> Task:
        """A live run's task (the demo): it arrives now, at second `at`, instead of from the trace."""
        task = Task(self._serial, duration, self.settings.retries if retries is None else retries, eligible_at=at)
        self._serial += 1
        self.queue.append(task)
        self.in_flight += 1
        self.result.tasks += 1
        self._changes += 1
        return task

    def _event(self, what: str, task: Task) -> None:
        if self.events is not None:
            self.events.append((what, task))

    # What the scaler sees: task_instance rows, running ones with their worker's hostname.
    def snapshot(self) -> Snapshot:
        rows = list(running_rows(self.workers))
        if self.queue:
            rows.append(SnapshotRow("queued", "default", None, len(self.queue)))
        return Snapshot(tuple(rows), has_executor_column=True, taken_at=0.0)

    def advance(self, t: int) -> None:
        """Second `t` for the tasks: arrivals and retries join the queue, running tasks that are done finish."""
        while self._next is not None and self._next.eligible_at <= t:
            self.queue.append(self._next)
            self.in_flight += 1
            self.result.tasks += 1
            self._pull()
            self._changes += 1
        while self.retries and self.retries[0][0] <= t:
            retried = heapq.heappop(self.retries)[2]
            self.queue.append(retried)
            self._event("queued", retried)
            self._changes += 1
        while self.completions and self.completions[0][0] <= t:
            _, _, attempt, task = heapq.heappop(self.completions)
            if task.attempt == attempt and task.worker is not None:
                worker = task.worker
                del worker.running[task.id]
                self._busy_changed[worker.name] = worker
                self._event("finished", task)
                task.worker = None
                self.in_flight -= 1
                self.running -= 1
                self._changes += 1

    def due_events(self, t: int) -> list[int]:
        """The seconds after `t` at which a task or a pod changes on its own (arrives, retries, ends, starts)."""
        due = []
        if self._next is not None:
            due.append(self._next.eligible_at)
        if self.retries:
            due.append(self.retries[0][0])
        if self.completions:
            due.append(self.completions[0][0])
        for worker in self.workers:
            if worker.ready_at > t:
                due.append(worker.ready_at)
            if worker.terminating_since is not None:
                due.append(worker.terminating_since + self.settings.grace)
        return due

    def end_terminations(self, t: int) -> None:
        if not self.terminating:
            return
        kept = []
        for worker in self.workers:
            if worker.terminating_since is not None:
                if not worker.running:
                    self._changes += 1
                    self.terminating -= 1
                    continue  # warm shutdown done: the pod is gone
                if t - worker.terminating_since >= self.settings.grace:
                    for task_id in sorted(worker.running):
                        self.kill(worker.running[task_id], t)
                    self.running -= len(worker.running)
                    self._changes += 1
                    self.terminating -= 1
                    continue
            kept.append(worker)
        self.workers = kept

    def kill(self, task: Task, t: int) -> None:
        result = self.result
        result.killed += 1
        result.lost_seconds += t - task.started_at
        task.attempt += 1
        if task.retries_left <= 0:
            result.failed += 1
            self.in_flight -= 1
            self._event("failed", task)
            task.worker = None
            return
        self._event("killed", task)
        task.worker = None
        task.retries_left -= 1
        task.eligible_at = t + self.settings.retry_delay
        heapq.heappush(self.retries, (task.eligible_at, task.id, task))

    def assign(self, t: int) -> None:
        if not self.queue:
            return
        concurrency = self.settings.concurrency
        open_workers = [
            w
            for w in self.workers
            if w.terminating_since is None and not w.draining and w.ready_at <= t and len(w.running) < concurrency
        ]
        while self.queue and open_workers:
            worker = self.rng.choice(open_workers)
            task = self.queue.popleft()
            task.started_at, task.worker = t, worker
            worker.running[task.id] = task
            self._event("started", task)
            self._busy_changed[worker.name] = worker
            self.running += 1
            wait = t - task.eligible_at
            self.result.waits.append(wait)
            if task.attempt == 0:
                self.result.first_waits.append(wait)
                (self.result.scheduled_waits if task.scheduled else self.result.unscheduled_waits).append(wait)
            heapq.heappush(self.completions, (t + task.duration, task.id, task.attempt, task))
            if len(worker.running) >= concurrency:
                open_workers.remove(worker)
            self._changes += 1

    def converge(self, t: int) -> None:
        """The workload's controller: pods up or down to `replicas`."""
        if self.alive == self.replicas:
            return
        if self.alive > self.replicas:
            alive = [w for w in self.workers if w.terminating_since is None]
            for worker in self.victims(alive, self.alive - self.replicas, t):
                worker.terminating_since = t
                worker.draining = False
                self.alive -= 1
                self.terminating += 1
            self._changes += 1
        else:
            for _ in range(self.replicas - self.alive):
                self.create(t)

    def victims(self, alive: list[Worker], count: int, t: int) -> list[Worker]:
        if self.kind == "StatefulSet":
            return sorted(alive, key=lambda w: -w.ordinal)[:count]
        # The ReplicaSet's ranking: not ready first, then lower pod-deletion-cost, then newer.
        return sorted(alive, key=lambda w: (w.ready_at <= t, w.cost, -w.created_at))[:count]

    def create(self, t: int) -> None:
        if self.kind == "StatefulSet":
            taken = {w.ordinal for w in self.workers}  # a terminating ordinal is not reused until it is gone
            ordinal = next(n for n in range(len(self.workers) + 1) if n not in taken)
            if ordinal >= self.replicas:
                return  # waits for a lower ordinal to finish terminating
            name = f"{self.settings.workload}-{ordinal}"
        else:
            self.names += 1
            ordinal, name = -1, f"{self.settings.workload}-7d9c-{self.names:05d}"
        self.workers.append(Worker(name, created_at=t, ordinal=ordinal, ready_at=t + self.settings.pod_start))
        self.alive += 1
        self._changes += 1


def running_rows(workers: Iterable[Worker]) -> Iterator[SnapshotRow]:
    """task_instance as the scaler reads it: each busy pod's running tasks, with its hostname."""
    for worker in workers:
        if worker.running:
            yield SnapshotRow("running", "default", None, len(worker.running), worker.name)
