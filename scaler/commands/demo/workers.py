"""The demo's worker sets: the package's model run live, with the real scaler's answers (pure).

Each ScaledObject's pods, Celery's handing out of tasks, the ReplicaSet's choice
of victims (pod-deletion-cost from the scaler's own function), warm shutdown
and SIGKILL are scaler.simulation's, stepped once a tick. Only KEDA's
input differs from a replay: the answers come from the real scaler over gRPC,
which reads the task_instance rows the demo writes, hostnames included, so the
busy-worker floor acts exactly as in a cluster. Beside it, a shadow replay of
the same tasks under the chart's formula counts what that would have killed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scaler.commands.demo.workload import TICK, DemoScaledObject, DemoTask, Sample
from scaler.rules.decision import Decision
from scaler.simulation.control import Replay
from scaler.simulation.settings import CHART, OURS, ClusterSettings
from scaler.simulation.workers import Task

# Shrunk like KEDA's intervals, so a minute shows pods starting, warm shutdowns and, for the chart's
# formula, SIGKILLs: long tasks (20-40 s) outlast the grace period.
POD_START = 2.0
GRACE = 8.0
RETRY_DELAY = 5.0
RETRIES = 1
# The row each model event leaves in task_instance.
STATES = {"started": "running", "finished": "success", "killed": "up_for_retry", "failed": "failed", "queued": "queued"}


def ticks(seconds: float) -> int:
    """Seconds as the model's time unit, which the demo runs in ticks."""
    return max(1, round(seconds / TICK))


class LiveWorkers(Replay):
    """The model, with KEDA's and the HPA's input from the real scaler instead of `decide`.

    Until a poll answers, KEDA knows nothing and keeps what it has, as it does when a call fails.
    """

    answer = Decision(running=0, queued=0, workers=0, active=False, by_queue=())

    def decide(self, t: int) -> Decision:
        self.last_decision = self.answer
        return self.answer


@dataclass
class WorkerSet:
    so: DemoScaledObject
    live: LiveWorkers
    chart: Replay  # the shadow: the same tasks, the chart's formula
    keys: dict[int, str] = field(default_factory=dict)  # model task id -> task_instance.task_id

    @classmethod
    def start(cls, so: DemoScaledObject, *, poll_interval: float, cooldown: float) -> WorkerSet:
        settings = ClusterSettings(
            concurrency=so.concurrency,
            polling_interval=ticks(poll_interval),
            cooldown=ticks(cooldown),
            max_replicas=so.max_replicas,
            hpa_sync=ticks(poll_interval),
            # Shorter than the HPA's 300 s so that a minute shows scale-down, but longer than a pod's start
            # plus three polls: an answer read before a new pod took its first tasks must not remove that pod
            # (a recommendation from before the pod existed still holds it up), and after an activation the
            # HPA adds its pods a sync after KEDA's first one.
            stabilization=ticks(POD_START) + 3 * ticks(poll_interval),
            pod_start=ticks(POD_START),
            grace=ticks(GRACE),
            retry_delay=ticks(RETRY_DELAY),
            retries=RETRIES,
            # The reconciler's 5 s against the HPA's 15 s sync, shrunk alike: costs are fresh when pods go.
            reconcile=1,
            workload=f"{so.name}-worker",
        )
        live = LiveWorkers(OURS, settings, (), seed=1)
        live.events = []
        return cls(so, live, Replay(CHART, settings, (), seed=1))

    def arrive(self, tick: int, task: DemoTask) -> None:
        duration = ticks(task.run_for)
        self.keys[self.live.arrive(tick, duration, RETRIES).id] = task.key
        self.chart.arrive(tick, duration, RETRIES)

    def answered(self, workers: int, active: bool) -> None:
        self.live.answer = Decision(running=0, queued=0, workers=workers, active=active, by_queue=())

    def step(self, tick: int) -> list[tuple[str, str, str | None]]:
        """One tick of both runs; the rows that changed: (task_id, state, hostname of a started task)."""
        events = self.live.events
        assert events is not None
        events.clear()
        self.live.second(tick)
        self.chart.second(tick)
        return [(self.keys[task.id], STATES[what], _host(task) if what == "started" else None) for what, task in events]

    def counts(self) -> tuple[int, int]:
        """(queued, running) now."""
        return len(self.live.queue), self.live.running

    def sample(self, at: float, *, workers: int, active: bool, error: str = "", due_in: float | None = None) -> Sample:
        """`due_in`: seconds to the scheduled DAG's next run (negative: due, not created yet)."""
        queued, running = self.counts()
        packed = -(-(queued + running) // self.so.concurrency)
        lead = self.so.prewarm_lead
        prewarming = lead is not None and due_in is not None and due_in <= lead
        return Sample(
            at,
            self.so.name,
            queued,
            running,
            workers,
            active,
            self.live.replicas,
            error,
            pods=len(self.live.workers),
            floor_held=not error and workers > packed and not prewarming,
            prewarm_held=not error and workers > packed and prewarming,
            due_in=due_in if lead is not None else None,
            killed=self.live.result.killed,
            chart_killed=self.chart.result.killed,
            chart_replicas=self.chart.replicas,
            queued_p95=self.live.result.queued_p95 * TICK,
            chart_queued_p95=self.chart.result.queued_p95 * TICK,
        )


def _host(task: Task) -> str | None:
    return task.worker.name if task.worker is not None else None
