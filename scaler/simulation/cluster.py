"""Pure: Airflow tasks on a KEDA-scaled Celery worker set, second by second.

One model, used by `replay`, the demo's shadow replay and `bench`:
- KEDA polls IsActive every pollingInterval, scales 0 -> max(minReplicaCount, 1)
  on activity and back to 0 after cooldownPeriod without it (minReplicaCount 0);
- the HPA syncs every 15 s (tolerance 0.1: scaler.simulation.keda.hpa_desired),
  scales up with no stabilisation and at most max(+100%, +4 pods) per sync, and
  down to the highest recommendation of its stabilisation window;
- Celery gives each queued task to a random ready worker with a free slot
  (workers take work as they have room, so tasks spread);
- Kubernetes starts a pod in `pod_start`; a removed pod gets SIGTERM, Celery
  stops taking tasks and finishes the running ones (warm shutdown), and SIGKILL
  comes after terminationGracePeriodSeconds, killing what is left; the
  ReplicaSet removes pods not ready first, then the lowest pod-deletion-cost,
  then the newest; a StatefulSet (Parallel) the highest ordinals;
- Airflow retries a killed task from scratch after its retry delay, as many
  times as it has retries, then fails it.

The scaler's part is its own code: `decide` on a snapshot of the simulated
task_instance rows (running ones with their worker's hostname), with
scaleDownProtection off (the chart's ceil((running + queued) / concurrency)) or
on, and the deletion costs of `deletion_costs.wanted_costs`, refreshed every
`reconcile` seconds as the reconciler does. With pre-warm on, the decision also
gets `prewarm.prewarm_for` on the schedule of the trace's scheduled runs: each
DAG's next run is due until the second the scheduler creates it, and its
history is the initial demand of its runs whose window has closed (the
schedule and history reads' own intervals are not modelled).

Seconds in which nothing can change are skipped (nothing arrives, finishes,
becomes ready, or is due to poll, sync or reconcile), with exactly the result
of stepping through them: `Replay(..., step_every_second=True)` is the
reference the tests compare against.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from scaler.decision import Decision, Prewarm, decide
from scaler.deletion_costs import WorkerPod, tasks_per_worker, wanted_costs
from scaler.prewarm import DueRun, PastRun, PrewarmSettings, Schedule, predicted_demand, prewarm_for
from scaler.simulation.keda import ScaledObjectSettings, hpa_desired
from scaler.snapshot import Snapshot, SnapshotRow
from scaler.trigger_metadata import TargetKind, TriggerSpec, parse_metadata


@dataclass(frozen=True)
class ClusterSettings:
    """A ScaledObject, its HPA, its worker pods and Airflow's retries. Seconds throughout."""

    concurrency: int = 16  # Celery worker_concurrency (the trigger's `concurrency`)
    polling_interval: int = 30  # KEDA's default
    cooldown: int = 300  # KEDA's default cooldownPeriod
    min_replicas: int = 0
    max_replicas: int = 100  # KEDA's default maxReplicaCount
    hpa_sync: int = 15  # the controller manager's --horizontal-pod-autoscaler-sync-period
    stabilization: int = 300  # the HPA's default scale-down stabilizationWindowSeconds
    pod_start: int = 60  # from creation to a Celery worker taking tasks
    grace: int = 600  # terminationGracePeriodSeconds (the Airflow chart's default for workers)
    retry_delay: int = 300  # Airflow's default retry_delay
    retries: int = 2  # for tasks whose history does not say
    reconcile: int = 5  # the scaler's --deletion-cost-interval
    kind: TargetKind = "Deployment"
    activation_threshold: float = 0.0  # the trigger's activationThreshold
    workload: str = "airflow-worker"  # the Deployment's or StatefulSet's name: its pods' names start with it
    # serve's pre-warm settings (the runs, window and grace; the model reads no database on intervals).
    prewarm: PrewarmSettings = field(default_factory=PrewarmSettings)


@dataclass(frozen=True)
class Policy:
    """How the worker set is scaled: the chart's formula or the scaler's, and the HPA's window."""

    name: str
    protection: bool  # the scaler's busy-worker floor and pod-deletion-cost; False is the chart's formula
    drain: bool = False  # not in the scaler: surplus workers stop taking tasks (Celery's cancel_consumer)
    stabilization: int | None = None  # the HPA's scale-down window; None: the settings'
    kind: TargetKind | None = None  # None: the settings'
    prewarm_lead: int | None = None  # the trigger's prewarmLeadSeconds with `prewarm: "true"`; None: off
    prewarm_max_workers: int = 10  # its prewarmMaxWorkers


CHART = Policy("chart formula", protection=False)
OURS = Policy("airflow-keda-scaler", protection=True)
OURS_60S = Policy("airflow-keda-scaler, 60 s window", protection=True, stabilization=60)
# What `replay` compares: the floor already protects running tasks, so a short window only saves worker-hours.
# (And ours with pre-warm, whose lead and cap are the trigger's: replay.command adds it.)
REPLAY_POLICIES = (CHART, OURS, OURS_60S)


def prewarm_policy(lead: int, max_workers: int) -> Policy:
    return Policy(
        f"airflow-keda-scaler + pre-warm ({lead} s)",
        protection=True,
        prewarm_lead=lead,
        prewarm_max_workers=max_workers,
    )


class Arrival(NamedTuple):
    """A task instance as the model needs it: when it could start, how long it runs, its retries."""

    at: int
    duration: int
    retries: int | None = None  # None: the settings'
    scheduled: bool = False  # one of a scheduled run's tasks (its waits are also counted apart)


class ScheduledRun(NamedTuple):
    """A scheduled DAG run of the trace: when the scheduler creates it (its DAG's next_dagrun_create_after),
    and its initial demand (its tasks first queued within the pre-warm window), which its history says."""

    dag_id: str
    due: int
    initial: int


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


class Replay:
    """One policy's run over a trace of arrivals (sorted by `at`); `run()` returns its Result.

    `seed` drives Celery's choice of worker: the same for every policy, so policies differ only in scaling.
    """

    def __init__(
        self,
        policy: Policy,
        settings: ClusterSettings,
        arrivals: Iterable[Arrival | tuple[int, int]],
        *,
        seed: int,
        sample_every: int = 0,
        step_every_second: bool = False,
        scheduled: Iterable[ScheduledRun] = (),
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.kind: TargetKind = policy.kind or settings.kind
        self.stabilization = settings.stabilization if policy.stabilization is None else policy.stabilization
        self.rng = random.Random(seed)
        self.sample_every = sample_every
        self.step_every_second = step_every_second
        self._arrivals: Iterator[Arrival | tuple[int, int]] = iter(arrivals)
        self._next: Task | None = None
        self._serial = 0
        self._pull()
        self.queue: deque[Task] = deque()
        self.retries: list[tuple[int, int, Task]] = []
        self.completions: list[tuple[int, int, int, Task]] = []
        self.workers: list[Worker] = []
        self.replicas = settings.min_replicas
        self.last_active: int | None = None
        self.recommendations: deque[tuple[int, int]] = deque()
        prewarm = {}
        if policy.prewarm_lead is not None:
            prewarm = {
                "prewarm": "true",
                "prewarmLeadSeconds": str(policy.prewarm_lead),
                "prewarmMaxWorkers": str(policy.prewarm_max_workers),
            }
        self.spec = parse_metadata(
            {
                "database": "airflow",
                "concurrency": str(settings.concurrency),
                "activationThreshold": repr(settings.activation_threshold),
                "scaleDownProtection": str(policy.protection).lower(),
                "scaleTargetKind": self.kind,
                **prewarm,
            }
        )
        # The trace's scheduled runs by due time, each with what its DAG's history predicts (_prewarm).
        self._scheduled = _with_predictions(scheduled, self.spec, settings)
        self._due_from = 0  # the first run not yet created by the scheduler
        self._decided_prewarm: Prewarm | None = None
        self.result = Result(policy)
        self.in_flight = 0  # tasks arrived and neither done nor failed
        # Kept as they change, not counted each second: a week of a busy trace is 600,000 seconds.
        self.running = 0  # tasks running on any pod
        self.alive = 0  # pods not terminating
        self.terminating = 0
        self._busy_changed: dict[str, Worker] = {}  # pods whose running tasks changed since the last reconcile
        self.names = 0
        self.last_decision: Decision | None = None
        self._decided_at = -1
        # Counts every change of what the next seconds depend on; the reconciler's costs are not one:
        # they are read only when replicas change, which happens at a poll or a sync.
        self._changes = 0
        # What happened to which task, in order, for a caller that mirrors the model (the demo writes
        # them to its task_instance table): ("queued" | "started" | "finished" | "killed" | "failed", task).
        self.events: list[tuple[str, Task]] | None = None
        self._reconciled_at = -1  # _changes at the last reconcile: unchanged, the next one would do nothing

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
        rows = list(_running_rows(self.workers))
        if self.queue:
            rows.append(SnapshotRow("queued", "default", None, len(self.queue)))
        return Snapshot(tuple(rows), has_executor_column=True, taken_at=0.0)

    def run(self, *, until: int = 0) -> Result:
        """Run until every task is done or failed, and at least up to second `until`."""
        t = 0
        while self._next is not None or self.in_flight or t <= until:
            before = self._changes
            self.second(t)
            if self.step_every_second or self._changes != before:
                t += 1
                continue
            # Nothing changed: every second until the next due event is this one again.
            upcoming = self._next_event(t)
            self._repeat(t, upcoming - t - 1)
            t = upcoming
        self.result.finished_at = t
        return self.result

    def second(self, t: int) -> None:
        settings = self.settings
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
        self.end_terminations(t)
        self.assign(t)
        if self.policy.protection and t % settings.reconcile == 0:
            self.reconcile()
        # At 0 replicas the HPA is disabled; it finds a workload KEDA has just activated at its next sync, not in
        # the same instant (as a real control plane shows: 0 -> 1 by KEDA, then the HPA's step a sync later).
        hpa_enabled = self.replicas > 0
        if t % settings.polling_interval == 0:
            self.keda(t)
        if t % settings.hpa_sync == 0 and hpa_enabled and self.replicas > 0:
            self.hpa(t)
        self.converge(t)
        self._repeat(t - 1, 1)

    def _repeat(self, t: int, seconds: int) -> None:
        """Count `seconds` more seconds after `t` in the state as it is now (pods, demand and samples)."""
        if seconds <= 0:
            return
        result = self.result
        result.worker_seconds += len(self.workers) * seconds  # starting, ready and terminating pods all cost
        running = self.running
        result.packed_seconds += -(-(running + len(self.queue)) // self.settings.concurrency) * seconds
        every = self.sample_every
        if every:
            first = -(-(t + 1) // every) * every
            decision = self.last_decision
            for at in range(first, t + seconds + 1, every):
                result.samples.append(
                    Sample(
                        at,
                        running,
                        len(self.queue),
                        decision.workers if decision else 0,
                        decision.floor if decision else 0,
                        len(self.workers),
                        self.replicas,
                    )
                )

    def _next_event(self, t: int) -> int:
        """The first second after `t` at which something may happen."""
        settings = self.settings
        due = [_next_multiple(t, settings.polling_interval)]
        if self.replicas > 0:
            due.append(_next_multiple(t, settings.hpa_sync))
        if self.policy.protection and (
            self._busy_changed or (self.policy.drain and self._changes != self._reconciled_at)
        ):
            due.append(_next_multiple(t, settings.reconcile))
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
                due.append(worker.terminating_since + settings.grace)
        return max(t + 1, min(due))

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

    def reconcile(self) -> None:
        """What the deletion-cost reconciler does, with its own functions; and, for `drain`, cancel_consumer.

        Only the pods whose tasks changed since the last round are looked at: every other pod's cost
        already equals its tasks, so the reconciler would leave it alone.
        """
        changed = [w for w in self._busy_changed.values() if w.terminating_since is None]
        self._busy_changed.clear()
        rows = tuple(_running_rows(changed))
        pods = [WorkerPod(w.name, frozenset({w.name}), str(w.cost) if w.cost else None) for w in changed]
        by_name = {w.name: w for w in changed}
        for pod, cost in wanted_costs(pods, tasks_per_worker(Snapshot(rows, True, 0.0))):
            by_name[pod.name].cost = cost
        if self.policy.drain and self._changes != self._reconciled_at:
            alive = [w for w in self.workers if w.terminating_since is None]
            demand = sum(len(w.running) for w in alive) + len(self.queue)
            surplus = len(alive) - math.ceil(demand / self.settings.concurrency)
            # A Deployment's least busy workers empty soonest; a StatefulSet can only lose its top ordinals.
            if self.kind == "StatefulSet":
                order = sorted(alive, key=lambda w: -w.ordinal)
            else:
                order = sorted(alive, key=lambda w: (len(w.running), -w.created_at))
            for n, worker in enumerate(order):
                draining = n < surplus
                if worker.draining != draining:
                    worker.draining = draining
                    self._changes += 1
        self._reconciled_at = self._changes

    def decide(self, t: int) -> Decision:
        """The scaler's answer now; a poll and a sync in the same second with nothing changed share one."""
        prewarm = self._prewarm(t)
        if self.last_decision is None or self._decided_at != self._changes or prewarm != self._decided_prewarm:
            self.last_decision = decide(self.spec, self.snapshot(), prewarm=prewarm)
            self._decided_at, self._decided_prewarm = self._changes, prewarm
        return self.last_decision

    def _prewarm(self, t: int) -> Prewarm | None:
        """The trigger's pre-warm at second `t`: each DAG's next run due within the lead time, with its prediction.

        The scheduler creates a run at its due second, so the model's runs always come (no grace case).
        """
        if not self.spec.prewarm:
            return None
        runs = self._scheduled
        while self._due_from < len(runs) and runs[self._due_from][0].due <= t:
            self._due_from += 1
        due: list[DueRun] = []
        history: dict[str, tuple[PastRun, ...]] = {}
        for run, predicted in runs[self._due_from :]:
            if run.due - self.spec.prewarm_lead > t:
                break
            if run.dag_id not in history:  # the schedule shows a DAG's next run only
                due.append(DueRun(run.dag_id, float(run.due), float(run.due)))
                history[run.dag_id] = (PastRun(0.0, (("default", None, predicted),)),) if predicted else ()
        if not due:
            return None
        return prewarm_for(self.spec, Schedule(tuple(due), history, self.settings.prewarm.grace, t), float(t))

    def keda(self, t: int) -> None:
        settings = self.settings
        active = self.decide(t).active
        if active:
            self.last_active = t
        if self.replicas == 0 and active:
            self.replicas = max(settings.min_replicas, 1)
            self.recommendations.clear()
            self._changes += 1
        elif (
            self.replicas > 0
            and settings.min_replicas == 0
            and not active
            and self.last_active is not None
            and t - self.last_active >= settings.cooldown
        ):
            self.replicas = 0
            self._changes += 1

    def hpa(self, t: int) -> None:
        settings = self.settings
        metric = self.decide(t).workers
        current = self.replicas
        limits = ScaledObjectSettings(min_replicas=max(settings.min_replicas, 1), max_replicas=settings.max_replicas)
        desired = hpa_desired(current, metric, limits)
        self.recommendations.append((t, desired))
        while len(self.recommendations) > 1 and self.recommendations[0][0] <= t - self.stabilization:
            self.recommendations.popleft()
        # Scale-up: no window; scale-down: the highest recommendation of the window.
        down = max(r for _, r in self.recommendations)
        if desired > current:
            target = min(desired, max(2 * current, current + 4))
        elif down < current:
            target = down
        else:
            target = current
        replicas = min(max(target, settings.min_replicas, 1), settings.max_replicas)
        if replicas != self.replicas:
            self.replicas = replicas
            self._changes += 1

    def converge(self, t: int) -> None:
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


def _with_predictions(
    scheduled: Iterable[ScheduledRun], spec: TriggerSpec, settings: ClusterSettings
) -> list[tuple[ScheduledRun, int]]:
    """Each scheduled run, by due time, with the demand its DAG's history predicts when its pre-warm starts:
    the lower median (prewarm.predicted_demand) of its DAG's last runs whose window had closed by then."""
    by_dag: dict[str, list[ScheduledRun]] = {}
    ordered = sorted(scheduled, key=lambda run: run.due)
    for run in ordered:
        by_dag.setdefault(run.dag_id, []).append(run)
    predicted: dict[tuple[str, int], int] = {}
    for runs in by_dag.values():
        closed: deque[ScheduledRun] = deque(maxlen=settings.prewarm.runs)
        start = 0
        for run in runs:
            starts_at = run.due - spec.prewarm_lead
            while start < len(runs) and runs[start].due + settings.prewarm.window <= starts_at:
                closed.append(runs[start])
                start += 1
            history = [PastRun(float(past.due), (("default", None, past.initial),)) for past in reversed(closed)]
            predicted[run.dag_id, run.due] = predicted_demand(spec, history)
    return [(run, predicted[run.dag_id, run.due]) for run in ordered]


def _running_rows(workers: Iterable[Worker]) -> Iterator[SnapshotRow]:
    """task_instance as the scaler reads it: each busy pod's running tasks, with its hostname."""
    for worker in workers:
        if worker.running:
            yield SnapshotRow("running", "default", None, len(worker.running), worker.name)


def _next_multiple(t: int, every: int) -> int:
    return (t // every + 1) * every
