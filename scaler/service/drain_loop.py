"""Drains surplus workers through the Celery broker, and gives every other worker its queues back.

Every `interval`, for each ScaledObject whose last call asked for `drain: "true"`,
the loop reads its scale target's pods (Kubernetes), the shared snapshot of its
database (which worker runs how many tasks) and, from the broker configured for
that database, which queues each pod's Celery worker (`celery@<hostname>`)
consumes. The rule (rules/drain.py) says which workers to keep consuming; the
loop sends `add_consumer` for the trigger's queues to every kept worker that
lacks one (first, so capacity never dips) and `cancel_consumer` to every
drained one that still has one.

Nothing is remembered that a restart would need: what is drained is read back
from the workers each round, so a scaler that was killed mid-drain is followed
by one that restores every worker it does not mean to drain, at its first round.
With several replicas only the leader acts (`leading`, a Lease).

It never raises into the server: a broker or Kubernetes failure is logged when a
ScaledObject's state changes (not per round), shown by a metric, and retried at
the next round; KEDA's calls never wait on any of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from scaler.adapters.celery_broker.control import BrokerUnavailable, CeleryControl
from scaler.adapters.kubernetes.api import KubernetesApi, KubernetesError, ScaleTarget
from scaler.errors import DatabaseUnavailable
from scaler.options import positive, setting
from scaler.rules.broker_urls import BrokerTarget
from scaler.rules.decision import decide
from scaler.rules.deletion_costs import WorkerPod, tasks_per_worker
from scaler.rules.drain import DrainPlan, DrainWorker, plan_drain
from scaler.rules.snapshot import Clock
from scaler.rules.trigger_metadata import NamedDatabase, TriggerSpec
from scaler.rules.worker_names import celery_nodename
from scaler.service.metrics import ScalerMetrics
from scaler.service.scaled_objects import ScaledObjectKey, ScaledObjects

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# A ScaledObject's target rarely changes: read it again after this long.
TARGET_TTL = 60.0
# Most commands one ScaledObject may send in a round (restorations first): its metadata can list many queues
# and its target have many pods, and one ScaledObject must not hold up the others' rounds; the rest follow.
MAX_COMMANDS_PER_ROUND = 32


@dataclass(frozen=True)
class DrainSettings:
    """The brokers drain may use (by database name) and how often and how patiently it talks to them."""

    brokers: Mapping[str, BrokerTarget] = field(default_factory=dict)
    interval: float = setting(
        10.0,
        flag="--drain-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How often drain compares each draining ScaledObject's workers with its rule and sends "
        "cancel_consumer / add_consumer (and restores every worker it does not mean to drain).",
    )
    timeout: float = setting(
        2.0,
        flag="--broker-timeout",
        parse=positive(float),
        metavar="SECONDS",
        help="How long a command to the Celery broker waits for the workers' replies (the broker's socket "
        "timeouts too).",
    )
    lease: str = setting(
        "airflow-keda-scaler-drain",
        flag="--drain-lease",
        metavar="NAME",
        help="The coordination.k8s.io Lease the replicas elect drain's leader with (only the leader drains); "
        "off: no election, for a single replica.",
    )
    lease_namespace: str | None = setting(
        None,
        flag="--drain-lease-namespace",
        metavar="NAMESPACE",
        shown="the scaler's own",
        help="Where the Lease is: default the scaler pod's namespace (its service account's), else POD_NAMESPACE, "
        "else default.",
    )


@dataclass
class _Budget:
    """The commands one ScaledObject may still send this round (MAX_COMMANDS_PER_ROUND)."""

    left: int = MAX_COMMANDS_PER_ROUND

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class _Draining:
    """What the loop knows of one draining ScaledObject."""

    target: ScaleTarget | None = None
    target_read_at: float = float("-inf")
    problem: str | None = None  # the reason drain cannot act now, said once
    drained: tuple[str, ...] = ()  # the pods drained as of the last round, for the decision log
    drained_since: dict[str, float] = field(default_factory=dict)  # pod -> when this scaler saw it drained first
    spec: TriggerSpec | None = None  # as of the last round: what to give back when drain is turned off


class DrainLoop:
    def __init__(
        self,
        api: KubernetesApi | None,
        brokers: Mapping[str, CeleryControl],
        *,
        scaled_objects: ScaledObjects,
        metrics: ScalerMetrics,
        interval: float,
        leading: Callable[[], bool] = lambda: True,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.api = api
        self.brokers = brokers
        self.interval = interval
        self._scaled_objects = scaled_objects
        self._metrics = metrics
        self._leading = leading
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._known: dict[ScaledObjectKey, _Draining] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self.drain_once()
            except Exception:
                # A bug here must not end drain's restorations for good, nor reach KEDA's calls: log it and go on.
                log.exception("drain round failed")
            await self._sleep(self.interval)

    async def drain_once(self) -> None:
        draining = {key: (spec, cache, decision) for key, spec, cache, decision in self._scaled_objects.draining()}
        leading = self._leading()
        for key in [key for key in self._known if key not in draining]:
            # Drain turned off, or the ScaledObject gone: give its workers their queues back before forgetting it.
            if leading and not await self._release(key, self._known[key]):
                continue  # tried again next round: nothing is left drained by mistake
            self._forget(key)
        if not leading:
            return
        down: dict[str, BrokerUnavailable] = {}  # brokers that failed this round: not waited on again in it
        for key, (spec, cache, decision) in draining.items():
            state = self._known.setdefault(key, _Draining())
            state.spec = spec
            found = self._broker_for(spec)
            if found is None:
                self._cannot(key, state, "no_broker", "no broker is configured for its database (--broker NAME=URL)")
                continue
            name, broker = found
            if name in down:
                self._cannot(key, state, "broker_unavailable", str(down[name]))
                continue
            if self.api is None:
                self._cannot(key, state, "no_kubernetes", "the scaler has no Kubernetes API to find the workers with")
                continue
            try:
                snapshot = await cache.get()
            except DatabaseUnavailable:
                continue  # no news of the tasks: leave every worker as it is
            try:
                target = await self._target(self.api, key, state)
                pods = await self.api.list_target_pods(target)
            except KubernetesError as error:
                if error.kind != "api_error":
                    state.target = None
                self._cannot(key, state, error.kind, str(error))
                continue
            # Demand as of this snapshot (KEDA's last call may be a polling interval old); pre-warm as last decided
            # (its schedule is read for KEDA's calls).
            now = decide(spec, snapshot, target_kind=target.workload_kind)
            prewarm_workers = decision.prewarm_workers if decision is not None else 0
            try:
                await self._drain(
                    key,
                    state,
                    spec,
                    broker,
                    target,
                    pods,
                    tasks_per_worker(snapshot),
                    now.queued,
                    prewarm_workers,
                )
            except BrokerUnavailable as error:
                down[name] = error
                self._cannot(key, state, "broker_unavailable", str(error))
                continue
            self._can(key, state)

    def _broker_for(self, spec: TriggerSpec) -> tuple[str, CeleryControl] | None:
        """The broker configured for the trigger's database (by its name), if any."""
        if not isinstance(spec.database, NamedDatabase):
            return None
        broker = self.brokers.get(spec.database.name)
        return None if broker is None else (spec.database.name, broker)

    @staticmethod
    async def _workers(broker: CeleryControl, pods: list[WorkerPod]) -> dict[str, tuple[str, frozenset[str]]]:
        """Pod name -> (its Celery node, the queues it consumes), for the pods whose worker answered: one that
        is starting or gone cannot take tasks or be told anything."""
        by_node = {celery_nodename(pod.hostname): pod for pod in pods if pod.hostname}
        consumers = await broker.consumers(list(by_node)) if by_node else {}
        return {by_node[node].name: (node, queues) for node, queues in consumers.items() if node in by_node}

    async def _release(self, key: ScaledObjectKey, state: _Draining) -> bool:
        """Give every worker of the target the queues drain took; False when that could not be done."""
        found = None if state.spec is None else self._broker_for(state.spec)
        if state.spec is None or found is None or self.api is None:
            return True
        wanted, (_, broker) = frozenset(state.spec.drain_queues), found
        try:
            pods = await self.api.list_target_pods(await self._target(self.api, key, state))
            budget = _Budget()
            for node, queues in sorted((await self._workers(broker, pods)).values()):
                for queue in sorted(wanted - queues):
                    if not await self._send(key, broker, "add_consumer", node, queue, budget):
                        return False  # more next round
        except (KubernetesError, BrokerUnavailable) as error:
            log.warning(
                "scaled object %s: drain is off, but its workers could not all be given their queues back: %s",
                key,
                error,
                extra={"namespace": key.namespace, "scaled_object": key.name},
            )
            return False
        log.info(
            "scaled object %s: drain is off; every worker consumes its queues",
            key,
            extra={"namespace": key.namespace, "scaled_object": key.name},
        )
        return True

    async def _target(self, api: KubernetesApi, key: ScaledObjectKey, state: _Draining) -> ScaleTarget:
        now = self._clock()
        if state.target is None or now - state.target_read_at >= TARGET_TTL:
            state.target = await api.read_scale_target(key.namespace, key.name)
            state.target_read_at = now
            # As the deletion-cost reconciler does: the floor needs the kind (either loop may read it first).
            self._scaled_objects.learned_target_kind(key, state.target.workload_kind)
        return state.target

    async def _drain(
        self,
        key: ScaledObjectKey,
        state: _Draining,
        spec: TriggerSpec,
        broker: CeleryControl,
        target: ScaleTarget,
        pods: list[WorkerPod],
        tasks: Mapping[str, int],
        queued: int,
        prewarm_workers: int,
    ) -> None:
        workers = await self._workers(broker, pods)
        now = self._wall_clock()
        plan = plan_drain(
            (
                DrainWorker(pod.name, sum(tasks.get(k, 0) for k in pod.keys), max(0.0, now - pod.created_at))
                for pod in pods
                if pod.name in workers
            ),
            queued=queued,
            concurrency=spec.concurrency,
            kind=target.workload_kind or "Deployment",
            prewarm_workers=prewarm_workers,
            min_replicas=target.min_replicas,
        )
        wanted = frozenset(spec.drain_queues)
        budget = _Budget()
        # Restore first, so that the capacity kept never dips below what the plan keeps.
        for name in plan.keep:
            node, queues = workers[name]
            for queue in sorted(wanted - queues):
                if not await self._send(key, broker, "add_consumer", node, queue, budget):
                    break
                if name not in state.drained_since:
                    self._metrics.drain_restorations.labels(key.namespace, key.name).inc()
                    log.info(
                        "scaled object %s: worker %s had no consumer for queue %s; restored",
                        key,
                        node,
                        queue,
                        extra={"namespace": key.namespace, "scaled_object": key.name},
                    )
            state.drained_since.pop(name, None)
        for name in plan.drain:
            node, queues = workers[name]
            for queue in sorted(wanted & queues):
                if not await self._send(key, broker, "cancel_consumer", node, queue, budget):
                    break
            state.drained_since.setdefault(name, self._clock())
        for name in [name for name in state.drained_since if name not in workers]:
            del state.drained_since[name]  # removed, as drain meant
        self._observe(key, state, plan, queued, spec.concurrency)

    async def _send(
        self, key: ScaledObjectKey, broker: CeleryControl, command: str, node: str, queue: str, budget: _Budget
    ) -> bool:
        """Send one command if the round's `budget` allows; False when it does not (the rest wait a round)."""
        if not budget.take():
            return False
        send = broker.add_consumer if command == "add_consumer" else broker.cancel_consumer
        try:
            await send(node, queue)
        except BrokerUnavailable:
            self._metrics.drain_command_failures.labels(key.namespace, key.name, command).inc()
            raise
        self._metrics.drain_commands.labels(key.namespace, key.name, command).inc()
        return True

    def _observe(self, key: ScaledObjectKey, state: _Draining, plan: DrainPlan, queued: int, concurrency: int) -> None:
        now = self._clock()
        self._metrics.drained_workers.labels(key.namespace, key.name).set(len(plan.drain))
        longest = max((now - since for since in state.drained_since.values()), default=0.0)
        self._metrics.drained_longest.labels(key.namespace, key.name).set(longest)
        if set(plan.drain) != set(state.drained):
            log.info(
                "scaled object %s: %s",
                key,
                plan.explain(queued, concurrency),
                extra={"namespace": key.namespace, "scaled_object": key.name, "drained": list(plan.drain)},
            )
        state.drained = plan.drain

    def _cannot(self, key: ScaledObjectKey, state: _Draining, reason: str, message: str) -> None:
        before, state.problem = state.problem, reason
        if before == reason:
            return  # said once already
        if before is not None:
            self._metrics.drain_skipped.remove(key.namespace, key.name, before)
        self._metrics.drain_skipped.labels(key.namespace, key.name, reason).set(1)
        log.warning(
            "scaled object %s: drain cannot act (%s): %s; workers are left as they are until it can",
            key,
            reason,
            message,
            extra={"namespace": key.namespace, "scaled_object": key.name, "reason": reason},
        )

    def _can(self, key: ScaledObjectKey, state: _Draining) -> None:
        before, state.problem = state.problem, None
        if before is not None:
            self._metrics.drain_skipped.remove(key.namespace, key.name, before)
            log.info(
                "scaled object %s: drain acts again", key, extra={"namespace": key.namespace, "scaled_object": key.name}
            )

    def _forget(self, key: ScaledObjectKey) -> None:
        if self._known.pop(key, None) is not None:
            labels = {"namespace": key.namespace, "scaled_object": key.name}
            for metric in (
                self._metrics.drained_workers,
                self._metrics.drained_longest,
                self._metrics.drain_commands,
                self._metrics.drain_command_failures,
                self._metrics.drain_restorations,
                self._metrics.drain_skipped,
            ):
                metric.remove_by_labels(labels)

    async def close(self) -> None:
        for broker in self.brokers.values():
            await broker.close()
