"""Benchmark 6: a deterministic replay of scale-down, the chart's formula against ours.

A seeded bursty trace of Airflow tasks (durations from minutes to two hours)
runs second by second through:
- KEDA: polls IsActive every pollingInterval, scales 0 -> 1 on activity and back
  to 0 after cooldownPeriod without it;
- the HPA: syncs every 15 s, tolerance 0.1 (scaler.simulation.keda.hpa_desired),
  scale-up with no stabilisation and at most max(+100%, +4 pods) per 15 s,
  scale-down stabilised over 300 s (the highest recommendation of the window);
- Celery: each queued task goes to a random ready worker with a free slot
  (workers take work as they have room, so tasks spread);
- Kubernetes: a pod starts in 60 s; a removed pod gets SIGTERM, Celery stops
  taking tasks and finishes the running ones, and SIGKILL comes after
  terminationGracePeriodSeconds (600 s, the chart's default), killing what is left;
  the ReplicaSet removes pods not ready first, then the lowest
  pod-deletion-cost, then the newest; a StatefulSet (Parallel) the highest ordinals;
- Airflow: a killed task is retried from scratch after its retry delay (300 s),
  twice, then fails.

The formulas are the scaler's own code: scaler.decision.decide on a snapshot of
the simulated task_instance rows (hostname included) with scaleDownProtection
off (the chart's ceil((running + queued) / concurrency)) or on, and the
deletion costs from scaler.kubernetes.reconciler, refreshed every 5 s as the
reconciler does. "drain" adds what the scaler does not do today: surplus
workers (beyond the packed figure, least busy first) stop taking new tasks (Celery's
cancel_consumer), so they empty and go first.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from scaler.decision import decide
from scaler.kubernetes.api import WorkerPod
from scaler.kubernetes.reconciler import tasks_per_worker, wanted_costs
from scaler.simulation.keda import ScaledObjectSettings, hpa_desired
from scaler.snapshot import Snapshot, SnapshotRow
from scaler.trigger_metadata import parse_metadata

CONCURRENCY = 16
POLLING_INTERVAL = 30  # KEDA's default
COOLDOWN = 300  # KEDA's default cooldownPeriod
HPA_SYNC = 15
STABILISATION = 300
MAX_REPLICAS = 30
POD_START = 60
GRACE = 600  # terminationGracePeriodSeconds, the Airflow chart's default for workers
RETRY_DELAY = 300
RETRIES = 2
RECONCILE = 5  # --deletion-cost-interval


@dataclass
class Task:
    id: int
    duration: int
    retries_left: int = RETRIES
    eligible_at: int = 0
    started_at: int = -1
    worker: Worker | None = None
    attempt: int = 0


@dataclass
class Worker:
    name: str
    created_at: int
    ordinal: int = -1
    ready_at: int = 0
    terminating_since: int | None = None
    running: set[int] = field(default_factory=set)
    cost: int = 0  # the pod-deletion-cost annotation as last reconciled
    draining: bool = False


@dataclass(frozen=True)
class Policy:
    name: str
    protection: bool
    kind: str = "Deployment"
    drain: bool = False


POLICIES = (
    Policy("chart formula, Deployment", protection=False),
    Policy("ours, Deployment", protection=True),
    Policy("ours + drain, Deployment", protection=True, drain=True),
    Policy("chart formula, StatefulSet", protection=False, kind="StatefulSet"),
    Policy("ours, StatefulSet", protection=True, kind="StatefulSet"),
    Policy("ours + drain, StatefulSet", protection=True, kind="StatefulSet", drain=True),
)
# Durations: "heavy" has a fat tail (10% of tasks 45-120 min); "lognormal" a median of 7 min, p99 about 55 min.
SHAPES = ("heavy", "lognormal")


def trace(seed: int, hours: float, shape: str = "heavy") -> list[tuple[int, int]]:
    """(arrival second, duration seconds): bursts of DAG runs and a trickle, with a long tail of durations."""
    rng = random.Random(seed)
    end = int(hours * 3600)
    arrivals: list[tuple[int, int]] = []

    def duration() -> int:
        if shape == "lognormal":
            return int(min(7200, max(120, rng.lognormvariate(math.log(420), 0.9))))
        pick = rng.random()
        if pick < 0.6:
            return rng.randint(120, 600)
        if pick < 0.9:
            return rng.randint(600, 2700)
        return rng.randint(2700, 7200)

    t = 0
    while True:
        t += int(rng.expovariate(1 / 1500))  # a burst every 25 minutes on average
        if t >= end:
            break
        for _ in range(rng.randint(10, 160)):
            arrivals.append((t + rng.randint(0, 60), duration()))
    arrivals += [(minute * 60, duration()) for minute in range(end // 60) if rng.random() < 0.3]
    return sorted(arrivals)


@dataclass
class Result:
    policy: Policy
    killed: int = 0
    lost_seconds: int = 0
    failed: int = 0
    worker_seconds: int = 0
    packed_seconds: int = 0
    waits: list[int] = field(default_factory=list)  # every attempt, retries included
    first_waits: list[int] = field(default_factory=list)  # first attempts only
    finished_at: int = 0

    @property
    def queued_p95(self) -> float:
        return percentile(self.waits, 0.95)

    @property
    def queued_p50(self) -> float:
        return percentile(self.waits, 0.5)

    @property
    def first_queued_p95(self) -> float:
        return percentile(self.first_waits, 0.95)


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]) if ordered else 0.0


class Replay:
    def __init__(self, policy: Policy, arrivals: list[tuple[int, int]], seed: int) -> None:
        self.policy = policy
        self.rng = random.Random(seed)  # Celery's choices: the same for every policy's run
        self.arrivals = deque(Task(i, d, eligible_at=t) for i, (t, d) in enumerate(arrivals))
        self.total = len(arrivals)
        self.queue: deque[Task] = deque()
        self.retries: list[tuple[int, int, Task]] = []
        self.completions: list[tuple[int, int, int, Task]] = []
        self.workers: list[Worker] = []
        self.replicas = 0
        self.last_active: int | None = None
        self.recommendations: deque[tuple[int, int]] = deque()
        self.spec = parse_metadata(
            {
                "database": "airflow",
                "concurrency": str(CONCURRENCY),
                "scaleDownProtection": str(policy.protection).lower(),
                "scaleTargetKind": policy.kind,
            }
        )
        self.result = Result(policy)
        self.done = 0
        self.names = 0
        self.task_by_id: dict[int, Task] = {}

    # What the scaler sees: task_instance rows, running ones with their worker's hostname.
    def snapshot(self) -> Snapshot:
        per_host: dict[str, int] = {}
        for worker in self.workers:
            if worker.running:
                per_host[worker.name] = len(worker.running)
        rows = [SnapshotRow("running", "default", None, count, host) for host, count in per_host.items()]
        if self.queue:
            rows.append(SnapshotRow("queued", "default", None, len(self.queue)))
        return Snapshot(tuple(rows), has_executor_column=True, taken_at=0.0)

    def run(self) -> Result:
        t = 0
        while self.done < self.total:
            self.second(t)
            t += 1
        self.result.finished_at = t
        return self.result

    def second(self, t: int) -> None:
        result = self.result
        while self.arrivals and self.arrivals[0].eligible_at <= t:
            self.queue.append(self.arrivals.popleft())
        while self.retries and self.retries[0][0] <= t:
            self.queue.append(heapq.heappop(self.retries)[2])
        while self.completions and self.completions[0][0] <= t:
            _, _, attempt, task = heapq.heappop(self.completions)
            if task.attempt == attempt and task.worker is not None:
                task.worker.running.discard(task.id)
                task.worker = None
                self.done += 1
        self.end_terminations(t)
        self.assign(t)
        if self.policy.protection and t % RECONCILE == 0:
            self.reconcile()
        if t % POLLING_INTERVAL == 0:
            self.keda(t)
        if t % HPA_SYNC == 0 and self.replicas > 0:
            self.hpa(t)
        self.converge(t)
        result.worker_seconds += len(self.workers)  # starting, ready and terminating pods all cost
        demand = sum(len(w.running) for w in self.workers) + len(self.queue)
        result.packed_seconds += math.ceil(demand / CONCURRENCY)

    def end_terminations(self, t: int) -> None:
        kept = []
        for worker in self.workers:
            if worker.terminating_since is not None:
                if not worker.running:
                    continue  # warm shutdown done: the pod is gone
                if t - worker.terminating_since >= GRACE:
                    for task_id in sorted(worker.running):
                        self.kill(self.task_by_id[task_id], t)
                    continue
            kept.append(worker)
        self.workers = kept

    def kill(self, task: Task, t: int) -> None:
        self.result.killed += 1
        self.result.lost_seconds += t - task.started_at
        task.worker = None
        task.attempt += 1
        if task.retries_left == 0:
            self.result.failed += 1
            self.done += 1
            return
        task.retries_left -= 1
        task.eligible_at = t + RETRY_DELAY
        heapq.heappush(self.retries, (task.eligible_at, task.id, task))

    def assign(self, t: int) -> None:
        if not self.queue:
            return
        open_workers = [
            w
            for w in self.workers
            if w.terminating_since is None and not w.draining and w.ready_at <= t and len(w.running) < CONCURRENCY
        ]
        while self.queue and open_workers:
            worker = self.rng.choice(open_workers)
            task = self.queue.popleft()
            task.started_at, task.worker = t, worker
            worker.running.add(task.id)
            self.task_by_id[task.id] = task
            self.result.waits.append(t - task.eligible_at)
            if task.attempt == 0:
                self.result.first_waits.append(t - task.eligible_at)
            heapq.heappush(self.completions, (t + task.duration, task.id, task.attempt, task))
            if len(worker.running) >= CONCURRENCY:
                open_workers.remove(worker)

    def reconcile(self) -> None:
        """What the deletion-cost reconciler does, with its own functions; and, for `drain`, cancel_consumer."""
        snapshot = self.snapshot()
        alive = [w for w in self.workers if w.terminating_since is None]
        pods = [WorkerPod(w.name, frozenset({w.name}), str(w.cost) if w.cost else None) for w in alive]
        by_name = {w.name: w for w in alive}
        for pod, cost in wanted_costs(pods, tasks_per_worker(snapshot)):
            by_name[pod.name].cost = cost
        if self.policy.drain:
            demand = sum(len(w.running) for w in alive) + len(self.queue)
            surplus = len(alive) - math.ceil(demand / CONCURRENCY)
            # A Deployment's least busy workers empty soonest; a StatefulSet can only lose its top ordinals.
            if self.policy.kind == "StatefulSet":
                order = sorted(alive, key=lambda w: -w.ordinal)
            else:
                order = sorted(alive, key=lambda w: (len(w.running), -w.created_at))
            for n, worker in enumerate(order):
                worker.draining = n < surplus

    def keda(self, t: int) -> None:
        active = decide(self.spec, self.snapshot()).active
        if active:
            self.last_active = t
        if self.replicas == 0 and active:
            self.replicas = 1
            self.recommendations.clear()
        elif self.replicas > 0 and not active and self.last_active is not None and t - self.last_active >= COOLDOWN:
            self.replicas = 0

    def hpa(self, t: int) -> None:
        metric = decide(self.spec, self.snapshot()).workers
        current = self.replicas
        settings = ScaledObjectSettings(min_replicas=1, max_replicas=MAX_REPLICAS)
        desired = hpa_desired(current, metric, settings)
        self.recommendations.append((t, desired))
        while len(self.recommendations) > 1 and self.recommendations[0][0] <= t - STABILISATION:
            self.recommendations.popleft()
        # Scale-up: no window; scale-down: the highest recommendation of the last 300 s.
        down = max(r for _, r in self.recommendations)
        if desired > current:
            target = min(desired, max(2 * current, current + 4))
        elif down < current:
            target = down
        else:
            target = current
        self.replicas = min(max(target, 1), MAX_REPLICAS)

    def converge(self, t: int) -> None:
        alive = [w for w in self.workers if w.terminating_since is None]
        if len(alive) > self.replicas:
            for worker in self.victims(alive, len(alive) - self.replicas, t):
                worker.terminating_since = t
                worker.draining = False
        elif len(alive) < self.replicas:
            for _ in range(self.replicas - len(alive)):
                self.create(t)

    def victims(self, alive: list[Worker], count: int, t: int) -> list[Worker]:
        if self.policy.kind == "StatefulSet":
            return sorted(alive, key=lambda w: -w.ordinal)[:count]
        # The ReplicaSet's ranking: not ready first, then lower pod-deletion-cost, then newer.
        return sorted(alive, key=lambda w: (w.ready_at <= t, w.cost, -w.created_at))[:count]

    def create(self, t: int) -> None:
        if self.policy.kind == "StatefulSet":
            taken = {w.ordinal for w in self.workers}  # a terminating ordinal is not reused until it is gone
            ordinal = next(n for n in range(len(self.workers) + 1) if n not in taken)
            if ordinal >= self.replicas:
                return  # waits for a lower ordinal to finish terminating
            name = f"airflow-worker-{ordinal}"
        else:
            self.names += 1
            ordinal, name = -1, f"airflow-worker-7d9c-{self.names:05d}"
        self.workers.append(Worker(name, created_at=t, ordinal=ordinal, ready_at=t + POD_START))


def run_policies(seed: int, hours: float, shape: str) -> list[Result]:
    arrivals = trace(seed, hours, shape)
    results = []
    for policy in POLICIES:
        results.append(Replay(policy, arrivals, seed).run())
    return results


def totals_for(seeds: list[int], hours: float, shape: str) -> tuple[int, dict[str, Result]]:
    totals: dict[str, Result] = {p.name: Result(p) for p in POLICIES}
    tasks = 0
    for seed in seeds:
        tasks += len(trace(seed, hours, shape))
        for result in run_policies(seed, hours, shape):
            total = totals[result.policy.name]
            total.killed += result.killed
            total.lost_seconds += result.lost_seconds
            total.failed += result.failed
            total.worker_seconds += result.worker_seconds
            total.packed_seconds += result.packed_seconds
            total.waits += result.waits
            total.first_waits += result.first_waits
    return tasks, totals


def run(seeds: list[int], hours: float) -> tuple[str, dict[str, dict[str, Result]]]:
    lines = [
        "## 6. Safe scale-down: a replay of scale-down decisions",
        "",
        f"{len(seeds)} seeded traces of {hours:g} h per duration shape (bursts of 10-160 tasks every 25 minutes on "
        "average, and a trickle), replayed second by second by `bench/scale_down.py` (pure and deterministic): "
        f"KEDA pollingInterval {POLLING_INTERVAL} s, cooldownPeriod {COOLDOWN} s; HPA sync {HPA_SYNC} s, tolerance "
        f"0.1, scale-down stabilisation {STABILISATION} s, max {MAX_REPLICAS} replicas; worker_concurrency "
        f"{CONCURRENCY}, Celery giving each task to a random worker with a free slot; pods ready {POD_START} s after "
        f"creation; warm shutdown within {GRACE} s, then SIGKILL; a killed task retried from scratch after "
        f"{RETRY_DELAY} s, {RETRIES} retries, then failed. The formulas (`decide`) and deletion costs "
        "(`wanted_costs`, every 5 s) are the scaler's own functions. Worker-hours count every pod from creation "
        "to the end of its termination.",
    ]
    every: dict[str, dict[str, Result]] = {}
    for shape in SHAPES:
        tasks, totals = totals_for(seeds, hours, shape)
        every[shape] = totals
        chart, ours = totals[POLICIES[0].name], totals[POLICIES[1].name]
        print(f"  {shape} tails, {tasks} tasks:", flush=True)
        for total in totals.values():
            print(
                f"    {total.policy.name}: killed {total.killed}, lost {total.lost_seconds / 3600:.1f} task-h, "
                f"worker-h {total.worker_seconds / 3600:.1f}, packed {total.packed_seconds / 3600:.1f}, "
                f"queued p95 {total.queued_p95:.0f} s",
                flush=True,
            )
        described = {
            "heavy": "60% of tasks run 2-10 min, 30% 10-45 min, 10% 45-120 min",
            "lognormal": "lognormal durations, median 7 min, clipped to 2-120 min",
        }[shape]
        lines += [
            "",
            f"### {shape.capitalize()} tails ({described}; {tasks} tasks)",
            "",
            "| policy | tasks killed | task-hours lost | tasks failed | worker-hours | packed bound (h) | "
            "worker-hours / chart's | queued p50 | queued p95 | queued p95, first attempts |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for total in totals.values():
            lines.append(
                f"| {total.policy.name} | {total.killed} | {total.lost_seconds / 3600:.1f} | {total.failed} | "
                f"{total.worker_seconds / 3600:.1f} | {total.packed_seconds / 3600:.1f} | "
                f"{total.worker_seconds / chart.worker_seconds:.2f} | {total.queued_p50:.0f} s | "
                f"{total.queued_p95:.0f} s | "
                f"{total.first_queued_p95:.0f} s |"
            )
        ratio = ours.worker_seconds / chart.worker_seconds
        checks = [
            ("zero tasks killed by ours", ours.killed == 0, f"{ours.killed} killed"),
            ("worker-hours at most 20% above the chart formula's", ratio <= 1.2, f"{ratio:.2f}x"),
            (
                "queued-time p95 no worse",
                ours.queued_p95 <= chart.queued_p95,
                f"{ours.queued_p95:.0f} s against {chart.queued_p95:.0f} s",
            ),
        ]
        lines += ["", "Targets (ours against the chart formula, both on a Deployment):", ""]
        lines += [f"- {what}: {'met' if ok else '**missed**'} ({figure})." for what, ok, figure in checks]
    lines += [
        "",
        "Queued time runs from when a task could start (arrival, or the end of its retry delay) to when a worker "
        'takes it; "every attempt" counts the chart\'s retries too, most of which start at once on a worker '
        "left idle, which lowers its percentile. The p95 is set by the 60 s a new pod takes to start plus the "
        "HPA's 15 s sync, so differences of a few seconds there come from where bursts fall between syncs; "
        "the median shows what kept workers give: a task that finds a free slot starts at once.",
        "",
        'The packed bound is each run\'s own integral of ceil((running + queued) / concurrency). "drain" is '
        "measured here only, the scaler does not do it: surplus workers (beyond the packed figure; the least busy "
        "of a Deployment, the top ordinals of a StatefulSet) stop taking new tasks (Celery's `cancel_consumer`), "
        "so they empty and go first.",
        "",
        "What limits worker-hours: Celery spreads each burst over every worker with a free slot, so a burst's few "
        "long tasks land on most of the workers, and each of those workers holds a slot of 16 for up to two hours. "
        "Without killing, such a worker can only go when its last task ends; the chart's formula removes it "
        "anyway and pays in killed tasks, lost task-hours and retries that run again. Draining lowers the "
        "figure somewhat; packing long tasks on few workers needs knowledge of durations at assignment time "
        "(a queue of their own for long tasks is the user's lever).",
    ]
    return "\n".join(lines), every
