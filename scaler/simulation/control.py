"""Pure: the control side of the model: KEDA, the HPA and the scaler's own rules, around a WorkerModel.

One model, used by `replay`, the demo's shadow replay and `bench`:
- KEDA owns 0 <-> 1: it polls IsActive every pollingInterval, scales 0 ->
  max(minReplicaCount, 1) on activity and back to minReplicaCount once
  cooldownPeriod has passed since the trigger was last active;
- the HPA owns 1 <-> N: it syncs every 15 s; with an AverageValue target of 1
  its desired replicas are ceil(metric), left unchanged within its 10%
  tolerance (hpa_desired); it scales up with no stabilisation and at most
  max(+100%, +4 pods) per sync, and down to the highest recommendation of its
  stabilisation window, between minReplicaCount (at least 1) and maxReplicaCount;
- the pods, Celery and Airflow's retries are workers.py's WorkerModel.

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

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from scaler.rules.decision import Decision, Prewarm, decide
from scaler.rules.deletion_costs import WorkerPod, tasks_per_worker, wanted_costs
from scaler.rules.drain import DrainWorker, plan_drain
from scaler.rules.prewarm import DueRun, PastRun, Schedule, predicted_demand, prewarm_for
from scaler.rules.snapshot import Snapshot
from scaler.rules.trigger_metadata import TriggerSpec, parse_metadata
from scaler.simulation.results import Result, Sample
from scaler.simulation.settings import ClusterSettings, Policy
from scaler.simulation.workers import Arrival, WorkerModel, running_rows


class ScheduledRun(NamedTuple):
    """A scheduled DAG run of the trace: when the scheduler creates it (its DAG's next_dagrun_create_after),
    and its initial demand (its tasks first queued within the pre-warm window), which its history says."""

    dag_id: str
    due: int
    initial: int


@dataclass(frozen=True)
class ScaledObjectSettings:
    """The ScaledObject's replica bounds, which the HPA keeps."""

    min_replicas: int = 0
    max_replicas: int = 10


HPA_TOLERANCE = 0.1


def hpa_desired(current: int, metric: float, settings: ScaledObjectSettings) -> int:
    """The HPA's desired replicas for an AverageValue metric with target 1.

    >>> s = ScaledObjectSettings(max_replicas=10)
    >>> hpa_desired(4, 4.3, s), hpa_desired(4, 5, s), hpa_desired(4, 0, s), hpa_desired(4, 50, s)
    (4, 5, 1, 10)
    """
    if current > 0 and abs(1 - metric / current) <= HPA_TOLERANCE:
        return current
    desired = math.ceil(metric)
    return min(max(desired, settings.min_replicas, 1), settings.max_replicas)


class Replay(WorkerModel):
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
        settings = replace(settings, grace=policy.grace_in(settings))  # the worker pods' own grace period
        super().__init__(settings, policy.kind or settings.kind, arrivals, Result(policy), seed=seed)
        self.policy = policy
        self.stabilization = settings.stabilization if policy.stabilization is None else policy.stabilization
        self.sample_every = sample_every
        self.step_every_second = step_every_second
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
        self.last_decision: Decision | None = None
        self._decided_at = -1
        self._reconciled_at = -1  # _changes at the last reconcile: unchanged, the next one would do nothing
        # The StatefulSet's held idle pods as last counted: (at _changes, valid before second, count).
        self._held: tuple[int, float, int] = (-1, 0.0, 0)

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
        self.advance(t)
        self.end_terminations(t)
        self.assign(t)
        if self.policy.protection and t % settings.reconcile == 0:
            self.reconcile(t)
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
        if self.kind == "StatefulSet" and running:
            result.held_idle_seconds += self._held_idle(t) * seconds
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

    def _held_idle(self, t: int) -> int:
        """Ready pods with no task below the highest busy ordinal: counted again only when something changed or a
        pod became ready, not every second (a replay's hot path)."""
        changes, valid_before, held = self._held
        if changes == self._changes and t < valid_before:
            return held
        top = max(w.ordinal for w in self.workers if w.running)
        held = sum(1 for w in self.workers if w.ordinal < top and not w.running and w.ready_at <= t)
        starting = min((w.ready_at for w in self.workers if w.ready_at > t), default=math.inf)
        self._held = (self._changes, starting, held)
        return held

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
        due += self.due_events(t)
        return max(t + 1, min(due))

    def reconcile(self, t: int) -> None:
        """What the deletion-cost reconciler does, with its own functions; and, for `drain`, the drain loop's
        rule (drain.plan_drain) on the ready pods: cancel_consumer to the workers it drains, add_consumer back.

        Only the pods whose tasks changed since the last round are looked at: every other pod's cost
        already equals its tasks, so the reconciler would leave it alone.
        """
        changed = [w for w in self._busy_changed.values() if w.terminating_since is None]
        self._busy_changed.clear()
        rows = tuple(running_rows(changed))
        pods = [WorkerPod(w.name, frozenset({w.name}), str(w.cost) if w.cost else None) for w in changed]
        by_name = {w.name: w for w in changed}
        for pod, cost in wanted_costs(pods, tasks_per_worker(Snapshot(rows, True, 0.0))):
            by_name[pod.name].cost = cost
        if self.policy.drain and self._changes != self._reconciled_at:
            alive = [w for w in self.workers if w.terminating_since is None and w.ready_at <= t]
            decision = self.last_decision
            plan = plan_drain(
                (DrainWorker(w.name, len(w.running), float(t - w.created_at)) for w in alive),
                queued=len(self.queue),
                concurrency=self.settings.concurrency,
                kind=self.kind,
                prewarm_workers=decision.prewarm_workers if decision else 0,
                min_replicas=self.settings.min_replicas,
            )
            drained = set(plan.drain)
            for worker in alive:
                draining = worker.name in drained
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


def _next_multiple(t: int, every: int) -> int:
    return (t // every + 1) * every
