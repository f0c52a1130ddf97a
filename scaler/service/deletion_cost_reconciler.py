"""Keeps `controller.kubernetes.io/pod-deletion-cost` of each worker pod equal to the tasks it runs.

When the HPA lowers a Deployment's replicas, the ReplicaSet removes the pods
with the lowest deletion cost first. With the cost of every worker pod equal
to its running task instances, idle workers go first; the busy-worker floor in
the decision makes sure there are always enough idle ones to remove.

Every `interval` the reconciler walks the ScaledObjects that called recently
with scaleDownProtection on (as scaled_objects.py knows them from their calls;
the reconciler writes back the scale target's kind it learns). It reads each
one's scale target (cached for a minute), its own pods (one list), the shared
snapshot of its database (no extra query when KEDA's calls keep it fresh), and
patches only the pods whose cost changed, raises first, paced by one rate limit
for the whole process.

It never raises into the server: a Kubernetes failure is logged when a
ScaledObject's state changes (not per round), shown by a metric, and retried
later; the decision and KEDA's calls do not depend on any of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scaler.adapters.kubernetes.api import KubernetesApi, KubernetesError, ScaleTarget
from scaler.errors import DatabaseUnavailable
from scaler.rules.deletion_costs import tasks_per_worker, wanted_costs
from scaler.rules.snapshot import Clock
from scaler.service.metrics import ScalerMetrics
from scaler.service.scaled_objects import ScaledObjectKey, ScaledObjects
from scaler.service.snapshot_cache import SnapshotCache

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# A ScaledObject's target rarely changes: read it again after this long.
TARGET_TTL = 60.0
# After forbidden / not found / unsupported, wait this long before asking again (RBAC may be fixed meanwhile).
RETRY_AFTER = 60.0


@dataclass
class _Watched:
    """What the reconciler knows of one protected ScaledObject in the cluster."""

    target: ScaleTarget | None = None
    target_read_at: float = float("-inf")
    problem: KubernetesError | None = None
    retry_at: float = float("-inf")


class RateLimiter:
    """Spaces calls evenly at `rate` per second, shared by everything that awaits it."""

    def __init__(self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._gap = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def wait(self) -> None:
        now = self._clock()
        at = max(now, self._next)
        self._next = at + self._gap
        if at > now:
            await self._sleep(at - now)


class DeletionCostReconciler:
    def __init__(
        self,
        api: KubernetesApi | None,
        *,
        scaled_objects: ScaledObjects,
        metrics: ScalerMetrics,
        interval: float,
        patch_rate: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.api = api
        self.interval = interval
        self._scaled_objects = scaled_objects
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._limiter = RateLimiter(patch_rate, clock=clock, sleep=sleep)
        self._watched: dict[ScaledObjectKey, _Watched] = {}
        metrics.kubernetes_access.set(int(api is not None))

    async def run_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:
                # A bug here must not end protection for good, nor reach KEDA's calls: log it and go on.
                log.exception("pod-deletion-cost round failed")
            await self._sleep(self.interval)

    async def reconcile_once(self) -> None:
        protected = dict(self._scaled_objects.protected())
        # Expired or opted out since the last round: their series go with them.
        for key in [key for key in self._watched if key not in protected]:
            self._forget(key)
        if self.api is None:
            return
        now = self._clock()
        for key, cache in protected.items():
            watched = self._watched.setdefault(key, _Watched())
            if now < watched.retry_at:
                continue
            try:
                await self._reconcile(self.api, key, watched, cache)
            except KubernetesError as error:
                self._failed(key, watched, error)
            else:
                self._succeeded(key, watched)

    async def _reconcile(
        self, api: KubernetesApi, key: ScaledObjectKey, watched: _Watched, cache: SnapshotCache
    ) -> None:
        now = self._clock()
        if watched.target is None or now - watched.target_read_at >= TARGET_TTL:
            watched.target = await api.read_scale_target(key.namespace, key.name)
            watched.target_read_at = now
            self._scaled_objects.learned_target_kind(key, watched.target.workload_kind)
        target = watched.target
        if target.kind != "Deployment":
            return  # a StatefulSet removes the highest ordinal first, whatever the cost: the floor covers it
        try:
            snapshot = await cache.get()
        except DatabaseUnavailable:
            return  # no news of the tasks: leave every cost as it is
        pods = await api.list_target_pods(target)
        for pod, cost in wanted_costs(pods, tasks_per_worker(snapshot)):
            await self._limiter.wait()
            try:
                await api.patch_deletion_cost(target.namespace, pod.name, cost)
            except KubernetesError as error:
                if error.kind == "not_found":
                    continue  # deleted since the list: nothing to protect
                raise
            self._metrics.deletion_cost_patches.labels(key.namespace, key.name).inc()
            log.debug("pod %s/%s: pod-deletion-cost %s -> %d", target.namespace, pod.name, pod.deletion_cost, cost)

    def _failed(self, key: ScaledObjectKey, watched: _Watched, error: KubernetesError) -> None:
        before, watched.problem = watched.problem, error
        if error.kind != "api_error":
            # Retrying at once will not help until someone changes RBAC or the ScaledObject.
            watched.retry_at = self._clock() + RETRY_AFTER
            watched.target = None
            self._scaled_objects.learned_target_kind(key, None)
        if before is not None and before.kind == error.kind:
            return  # said once already
        if before is not None:
            self._metrics.deletion_cost_skipped.remove(key.namespace, key.name, before.kind)
        self._metrics.deletion_cost_skipped.labels(key.namespace, key.name, error.kind).set(1)
        log.warning(
            "scaled object %s: pod-deletion-cost not kept (%s): %s; the busy-worker floor still applies",
            key,
            error.kind,
            error,
            extra={"namespace": key.namespace, "scaled_object": key.name, "reason": error.kind},
        )

    def _succeeded(self, key: ScaledObjectKey, watched: _Watched) -> None:
        before, watched.problem = watched.problem, None
        if before is not None:
            self._metrics.deletion_cost_skipped.remove(key.namespace, key.name, before.kind)
            log.info(
                "scaled object %s: pod-deletion-cost kept again",
                key,
                extra={"namespace": key.namespace, "scaled_object": key.name},
            )

    def _forget(self, key: ScaledObjectKey) -> None:
        if self._watched.pop(key, None) is not None:
            labels = {"namespace": key.namespace, "scaled_object": key.name}
            self._metrics.deletion_cost_skipped.remove_by_labels(labels)
            self._metrics.deletion_cost_patches.remove_by_labels(labels)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
