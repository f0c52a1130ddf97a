"""What the scaler knows of each ScaledObject that calls it, and the one place its answers are made.

A call registers its ScaledObject (seen: the trigger's spec and its database's
shared snapshot cache) and gets its answer from decide(), which decides from
the snapshot, the pre-warm schedule and the scale target's kind, and records
the decision; the servicer only looks things up and answers. The
Kubernetes reconciler reads the ScaledObjects that asked for scale-down
protection and writes the kind it learned from the cluster. Neither calls the
other, so KEDA's call path never reaches the Kubernetes layer.

Decisions are logged when they change (never per poll); the Prometheus
series are read from this state at scrape time (samples()). A ScaledObject
that stops calling for `ttl` seconds, and has no stream open, is forgotten and
its series go with it, so deleted ScaledObjects do not pile up as stale series.

ScaledObjects are known by namespace and name, as KEDA sends them; a
ScaledObject is expected to have one trigger on this scaler (a trigger can
count several queues).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from scaler.errors import TooMany
from scaler.rules.decision import Decision, PrewarmedRun, decide, explain
from scaler.rules.memory_budget import MemoryBudget
from scaler.rules.prewarm import OUTCOMES, Outcome, Schedule, actual_demand, ended, prewarm_for
from scaler.rules.snapshot import Clock, Snapshot
from scaler.rules.trigger_metadata import TargetKind, TriggerSpec
from scaler.service.metrics import NO_QUEUE, PrewarmSample, ScaledObjectSample, ScalerMetrics
from scaler.service.prewarm_cache import PrewarmCache
from scaler.service.snapshot_cache import SnapshotCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScaledObjectKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# Slots: one of these per known ScaledObject, tens of thousands of them (memory_budget.Costs.scaled_object).
@dataclass(slots=True)
class ScaledObjectState:
    last_seen: float
    spec: TriggerSpec | None = None  # from its last unary call
    cache: SnapshotCache | None = None  # its database's shared snapshot
    decision: Decision | None = None
    # Its scale target's kind as read from the cluster (Kubernetes reconciler); None until known.
    target_kind: TargetKind | None = None
    decided_at: float = 0.0  # Unix time of the last decision
    changes: int = 0  # times the workers asked for or the activity changed
    pushed: int = 0  # StreamIsActive messages sent
    queues: set[str] = field(default_factory=set)  # every queue seen since the first call
    streams: int = 0
    prewarm: PrewarmFollowing | None = None  # while its trigger pre-warms


# Pre-warmed runs that arrived and wait for their actual initial demand (a history read after their window).
AWAITING_LIMIT = 32


@dataclass
class PrewarmFollowing:
    """A pre-warming ScaledObject's runs in pre-warm, how its pre-warms ended, and predicted against actual."""

    runs: dict[tuple[str, float], PrewarmedRun] = field(default_factory=dict)
    awaiting: list[PrewarmedRun] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    predicted_tasks: int = 0
    actual_tasks: int = 0
    workers: int = 0

    def follow(self, key: ScaledObjectKey, spec: TriggerSpec, decision: Decision, schedule: Schedule) -> None:
        prewarm = decision.prewarm
        self.workers = decision.prewarm_workers
        now = {(run.dag_id, run.due_epoch): run for run in (prewarm.runs if prewarm is not None else ())}
        for run_key, run in self.runs.items():
            if run_key not in now:
                outcome = ended(run, schedule)
                self.outcomes[outcome] += 1
                if outcome == "arrived":
                    self.awaiting = [*self.awaiting[-(AWAITING_LIMIT - 1) :], run]
                else:
                    log.info(
                        "scaled object %s: pre-warm for DAG %s %s unused (predicted %d tasks)",
                        key,
                        run.dag_id,
                        outcome,
                        run.predicted,
                        extra={"namespace": key.namespace, "scaled_object": key.name, "dag_id": run.dag_id},
                    )
        self.runs = now
        waiting = []
        for run in self.awaiting:
            actual = actual_demand(spec, run, schedule)
            if actual is None:
                waiting.append(run)
            else:
                self.predicted_tasks += run.predicted
                self.actual_tasks += actual
        self.awaiting = waiting

    def sample(self) -> PrewarmSample:
        return PrewarmSample(
            self.workers, self.predicted_tasks, self.actual_tasks, tuple(sorted(self.outcomes.items()))
        )


class ScaledObjects:
    def __init__(
        self,
        *,
        metrics: ScalerMetrics,
        ttl: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        max_scaled_objects: int = 20_000,
        max_streams: int = 20_000,
        max_per_namespace: int = 1000,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._metrics = metrics
        self._max_scaled_objects = max_scaled_objects
        self._max_streams = max_streams
        self._max_per_namespace = max_per_namespace
        self._budget = budget or MemoryBudget(limit=None)
        self._per_namespace: Counter[str] = Counter()
        self._streams = 0
        self._ttl = ttl
        self._clock = clock
        self._wall_clock = wall_clock
        self._known: dict[ScaledObjectKey, ScaledObjectState] = {}
        metrics.watch_scaled_objects(self.samples)

    def seen(self, key: ScaledObjectKey, spec: TriggerSpec, cache: SnapshotCache) -> None:
        """The ScaledObject called (even if no decision can be made): keep its series and what it asked for."""
        known = self._entry(key)
        known.spec, known.cache = spec, cache
        if not spec.scale_down_protection:
            known.target_kind = None  # learned only for protected ones; an opt-out forgets it

    def target_kind(self, key: ScaledObjectKey) -> TargetKind | None:
        known = self._known.get(key)
        return None if known is None else known.target_kind

    def learned_target_kind(self, key: ScaledObjectKey, kind: TargetKind | None) -> None:
        """The reconciler read the scale target (None: it could not, or it is no Deployment/StatefulSet)."""
        known = self._known.get(key)
        if known is not None and known.spec is not None and known.spec.scale_down_protection:
            known.target_kind = kind

    def protected(self) -> list[tuple[ScaledObjectKey, SnapshotCache]]:
        """The ScaledObjects whose last call asked for scale-down protection, with their snapshot cache."""
        return [
            (key, known.cache)
            for key, known in self._known.items()
            if known.spec is not None and known.spec.scale_down_protection and known.cache is not None
        ]

    def draining(self) -> list[tuple[ScaledObjectKey, TriggerSpec, SnapshotCache, Decision | None]]:
        """The ScaledObjects whose last call asked for drain, with their spec, snapshot cache and last decision."""
        return [
            (key, known.spec, known.cache, known.decision)
            for key, known in self._known.items()
            if known.spec is not None and known.spec.drain and known.cache is not None
        ]

    def decide(
        self, key: ScaledObjectKey, spec: TriggerSpec, snapshot: Snapshot, prewarm: PrewarmCache | None
    ) -> Decision:
        """The answer to a call or a push: decided from the snapshot and, with `prewarm` on, the schedule in
        memory (never waited for); recorded (series, decision log, pre-warm outcomes) before it is returned."""
        schedule = prewarm.current() if spec.prewarm and prewarm is not None else None
        warm = None if schedule is None or prewarm is None else prewarm_for(spec, schedule, prewarm.clock())
        decision = decide(spec, snapshot, target_kind=self.target_kind(key), prewarm=warm)
        self._record(key, spec, decision, schedule)
        return decision

    def _record(
        self, key: ScaledObjectKey, spec: TriggerSpec, decision: Decision, schedule: Schedule | None = None
    ) -> None:
        """`schedule`: the pre-warm schedule the decision saw, when its trigger pre-warms."""
        known = self._entry(key)
        if schedule is None:
            known.prewarm = None
        else:
            if known.prewarm is None:
                known.prewarm = PrewarmFollowing()
            known.prewarm.follow(key, spec, decision, schedule)
        before, known.decision = known.decision, decision
        known.decided_at = self._wall_clock()
        if decision == before:
            return  # the usual case on a poll: nothing else to update
        known.queues.update(q.queue or NO_QUEUE for q in decision.by_queue)
        if before is not None and (before.workers, before.active) == (decision.workers, decision.active):
            return
        if before is not None:
            known.changes += 1
        reason = explain(spec, decision)
        previous = "none" if before is None else f"{before.workers} workers, active {before.active}"
        log.info(
            "scaled object %s: %d workers, active %s (was %s): %s",
            key,
            decision.workers,
            decision.active,
            previous,
            reason,
            extra={
                "namespace": key.namespace,
                "scaled_object": key.name,
                "demand": decision.demand,
                "running": decision.running,
                "queued": decision.queued,
                "workers": decision.workers,
                "busy_worker_floor": decision.floor,
                "active": decision.active,
                "previous_workers": None if before is None else before.workers,
                "reason": reason,
            },
        )

    @property
    def open_streams(self) -> int:
        return self._streams

    def stream_opened(self, key: ScaledObjectKey, request_bytes: int) -> int:
        """TooMany past --max-streams or the memory budget: every open stream holds memory until it ends.

        Returns what the budget charged for it (by its request's size); stream_closed gives it back.
        """
        if self._streams >= self._max_streams:
            raise TooMany(f"the scaler holds {self._streams} streams, its limit (--max-streams)")
        known = self._entry(key)
        cost = self._budget.take("stream", self._budget.stream_cost(request_bytes))
        known.streams += 1
        self._streams += 1
        self._metrics.open_streams.inc()
        return cost

    def stream_closed(self, key: ScaledObjectKey, cost: int) -> None:
        self._budget.give_back("stream", cost)
        self._streams -= 1
        self._metrics.open_streams.dec()
        known = self._known.get(key)
        if known is not None:
            known.streams -= 1
            known.last_seen = self._clock()

    def pushed(self, key: ScaledObjectKey) -> None:
        known = self._known.get(key)
        if known is not None:
            known.pushed += 1

    def samples(self) -> Iterator[ScaledObjectSample]:
        """Each decided ScaledObject's series, for the Prometheus collector (metrics.watch_scaled_objects)."""
        for key, known in self._known.items():
            decision = known.decision
            if decision is None:
                continue  # called, never decided (its database failed): no series yet, as before its first answer
            now = {q.queue or NO_QUEUE: q for q in decision.by_queue}
            queues = tuple(
                (queue, demand.running, demand.queued) if (demand := now.get(queue)) else (queue, 0, 0)
                for queue in sorted(known.queues)
            )
            yield ScaledObjectSample(
                namespace=key.namespace,
                name=key.name,
                running=decision.running,
                queued=decision.queued,
                queues=queues,
                workers=decision.workers,
                floor=decision.floor,
                active=decision.active,
                decided_at=known.decided_at,
                changes=known.changes,
                pushed=known.pushed,
                prewarm=None if known.prewarm is None else known.prewarm.sample(),
            )

    def expire(self) -> list[ScaledObjectKey]:
        """Forget ScaledObjects silent for longer than the ttl; return them."""
        cutoff = self._clock() - self._ttl
        gone = [key for key, known in self._known.items() if known.streams == 0 and known.last_seen < cutoff]
        for key in gone:
            self._forget(key)
            log.info("scaled object %s: no call for %gs, its series are removed", key, self._ttl)
        return gone

    async def expire_forever(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._ttl / 10))
            self.expire()

    def _entry(self, key: ScaledObjectKey) -> ScaledObjectState:
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self._max_scaled_objects:
                # Each one has its own series until the ttl passes: names made up by the thousand
                # must not grow the scaler (or Prometheus) without bound.
                raise TooMany(
                    f"the scaler already knows {len(self._known)} ScaledObjects, its limit (--max-scaled-objects); "
                    "silent ones are forgotten after --metrics-series-ttl"
                )
            if self._per_namespace[key.namespace] >= self._max_per_namespace:
                raise TooMany(
                    f"the scaler already knows {self._per_namespace[key.namespace]} ScaledObjects in namespace "
                    f"{key.namespace}, its limit per namespace (--max-scaled-objects-per-namespace); silent ones are "
                    "forgotten after --metrics-series-ttl"
                )
            self._budget.take("scaled_object")
            self._per_namespace[key.namespace] += 1
            known = self._known[key] = ScaledObjectState(last_seen=self._clock())
        else:
            known.last_seen = self._clock()
        return known

    def _forget(self, key: ScaledObjectKey) -> None:
        del self._known[key]
        self._budget.give_back("scaled_object")
        self._per_namespace[key.namespace] -= 1
        if not self._per_namespace[key.namespace]:
            del self._per_namespace[key.namespace]
