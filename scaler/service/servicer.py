"""KEDA's ExternalScaler RPCs: check the metadata, look up the shared snapshot, answer (scaled_objects.decide).

This is the one place where the scaler's errors become gRPC status codes:
  InvalidMetadata      -> INVALID_ARGUMENT (the ScaledObject is wrong; retrying won't help)
  NotPermitted         -> PERMISSION_DENIED (the operator's connectionFromEnv policy refuses it)
  TooMany              -> RESOURCE_EXHAUSTED (a bound of the shared scaler is reached)
  DatabaseUnavailable  -> UNAVAILABLE (KEDA keeps the last scale, or uses `fallback`)
  the caller's deadline passing first -> DEADLINE_EXCEEDED
Every message is cut to STATUS_MESSAGE_LIMIT characters.
Never a made-up 0: KEDA must not scale workers away because the scaler is blind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal, NoReturn

import grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.errors import DatabaseUnavailable, InvalidMetadata, NotPermitted, ScalerError, TooMany, shown
from scaler.rules.admission import STATUS_MESSAGE_LIMIT, ConnectionPolicy, Limits, check_request
from scaler.rules.decision import Decision
from scaler.rules.snapshot import Snapshot
from scaler.rules.trigger_metadata import TriggerSpec
from scaler.service.database_caches import AirflowDatabases
from scaler.service.scaled_objects import ScaledObjectKey, ScaledObjects
from scaler.service.snapshot_cache import SnapshotCache
from scaler.service.watcher import DatabaseWatcher

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

METRIC_NAME = "airflow-celery-workers"
# Answer a little before the caller gives up, so it gets our reason, not its own timeout.
DEADLINE_MARGIN = 0.05


class ExternalScalerServicer(pb_grpc.ExternalScalerServicer):
    def __init__(
        self,
        *,
        databases: AirflowDatabases,
        scaled_objects: ScaledObjects,
        shutdown: asyncio.Event,
        limits: Limits | None = None,
        policy: ConnectionPolicy | None = None,
    ) -> None:
        self._limits = limits or Limits()
        self._policy = policy or ConnectionPolicy()
        self._shutdown_waiter: asyncio.Task[Literal[True]] | None = None
        self._databases = databases
        self._scaled_objects = scaled_objects
        self._shutdown = shutdown

    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context: Context) -> pb.GetMetricSpecResponse:
        # Validates the metadata and the database name (so a broken ScaledObject is
        # reported at once) but reads no database.
        await self._cache(await self._spec(request, context), context)
        return pb.GetMetricSpecResponse(
            metricSpecs=[pb.MetricSpec(metricName=METRIC_NAME, targetSize=1, targetSizeFloat=1.0)]
        )

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Context) -> pb.GetMetricsResponse:
        decision = await self._decide(request.scaledObjectRef, context)
        # Both fields: KEDA >= 2.17 reads the float when it is > 0, older KEDA the int.
        value = pb.MetricValue(
            metricName=METRIC_NAME, metricValue=decision.workers, metricValueFloat=float(decision.workers)
        )
        return pb.GetMetricsResponse(metricValues=[value])

    async def IsActive(self, request: pb.ScaledObjectRef, context: Context) -> pb.IsActiveResponse:
        decision = await self._decide(request, context)
        return pb.IsActiveResponse(result=decision.active)

    async def StreamIsActive(self, request: pb.ScaledObjectRef, context: Context) -> AsyncIterator[pb.IsActiveResponse]:
        """Send the current activity at once, then on every change, until KEDA or shutdown ends it.

        The database's one watcher (watcher.py) reads for every stream and wakes
        them only on change. While the database fails the stream stays open and
        sends nothing: a `false` we do not know to be true is worse than silence.
        """
        spec = await self._spec(request, context)
        watcher = await self._watcher(spec, context)
        key = _key(request)
        last: bool | None = None
        version = 0
        try:
            # Charged by its request's size: gRPC keeps the request alive for as long as the stream is open.
            cost = self._scaled_objects.stream_opened(key, request.ByteSize())
        except TooMany as error:
            await _refuse(context, error)
        shutdown = self._shutdown_future()
        try:
            async with watcher.subscription(prewarm_lead=spec.prewarm_lead if spec.prewarm else None):
                while True:
                    # Both futures are shared with every other stream (no task per stream): wait, never cancel.
                    await asyncio.wait((watcher.changed_since(version), shutdown), return_when=asyncio.FIRST_COMPLETED)
                    if shutdown.done():
                        return  # shutting down: end the stream so the drain can finish
                    outcome = watcher.outcome
                    if outcome is None or watcher.version == version:
                        continue  # the watcher restarted (its last stream left meanwhile): wait for its first read
                    version = watcher.version
                    if isinstance(outcome, DatabaseUnavailable):
                        continue  # the watcher logged it once for all its streams
                    decision = self._scaled_objects.decide(key, spec, outcome, watcher.prewarm)
                    if decision.active != last:
                        last = decision.active
                        # Counted before the hand-off: the generator resumes only when gRPC wants the next one.
                        self._scaled_objects.pushed(key)
                        yield pb.IsActiveResponse(result=decision.active)
        finally:
            self._scaled_objects.stream_closed(key, cost)

    def _shutdown_future(self) -> asyncio.Task[Literal[True]]:
        """One waiter for all streams, done when shutdown begins (a waiter per stream cost a task per stream)."""
        if self._shutdown_waiter is None:
            self._shutdown_waiter = asyncio.ensure_future(self._shutdown.wait())
        return self._shutdown_waiter

    async def StreamMetricSpec(
        self, request: pb.ScaledObjectRef, context: Context
    ) -> AsyncIterator[pb.GetMetricSpecResponse]:
        # KEDA main only; UNIMPLEMENTED makes it fall back to GetMetricSpec silently.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamMetricSpec is not implemented; use GetMetricSpec")
        yield pb.GetMetricSpecResponse()  # pragma: no cover - unreachable, makes this a generator

    async def _spec(self, request: pb.ScaledObjectRef, context: Context) -> TriggerSpec:
        """The trigger's spec, once the request passed the edge's size, name and policy checks."""
        metadata = request.scalerMetadata
        try:
            check_request(request.namespace, request.name, metadata, self._limits)
            return self._policy.parse(metadata)
        except (InvalidMetadata, NotPermitted) as error:
            log.debug("scaled object %s: %s", shown(str(_key(request))), error)
            await _refuse(context, error)

    async def _watcher(self, spec: TriggerSpec, context: Context) -> DatabaseWatcher:
        try:
            return self._databases.watcher_for(spec.database)
        except (InvalidMetadata, TooMany) as error:
            await _refuse(context, error)

    async def _cache(self, spec: TriggerSpec, context: Context) -> SnapshotCache:
        try:
            return self._databases.cache_for(spec.database)
        except (InvalidMetadata, TooMany) as error:
            await _refuse(context, error)

    async def _decide(self, request: pb.ScaledObjectRef, context: Context) -> Decision:
        spec = await self._spec(request, context)
        cache = await self._cache(spec, context)
        key = _key(request)
        try:
            # Registered before the database is waited for, so a ScaledObject whose database fails keeps its series.
            self._scaled_objects.seen(key, spec, cache)
        except TooMany as error:
            await _refuse(context, error)
        snapshot = await self._snapshot(cache, context)
        return self._scaled_objects.decide(key, spec, snapshot, self._databases.prewarm_for(spec.database))

    async def _snapshot(self, cache: SnapshotCache, context: Context) -> Snapshot:
        remaining = context.time_remaining()
        try:
            # Most calls find a fresh snapshot: answer without the timer task wait_for would start.
            fresh = cache.fresh()
            if fresh is not None:
                return fresh
            if remaining is None:
                return await cache.get()
            return await asyncio.wait_for(cache.get(), max(0.0, remaining - DEADLINE_MARGIN))
        except DatabaseUnavailable as error:
            await _refuse(context, error)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the caller's deadline passed while waiting for Airflow database {shown(cache.label)}",
            )


_CODES: dict[type[ScalerError], grpc.StatusCode] = {
    InvalidMetadata: grpc.StatusCode.INVALID_ARGUMENT,
    NotPermitted: grpc.StatusCode.PERMISSION_DENIED,
    TooMany: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
}


async def _refuse(context: Context, error: ScalerError) -> NoReturn:
    """End the call with the error's status code (the table above) and its message, cut short."""
    message = str(error)
    if len(message) > STATUS_MESSAGE_LIMIT:
        message = message[: STATUS_MESSAGE_LIMIT - 3] + "..."
    await context.abort(_CODES[type(error)], message)


def _key(request: pb.ScaledObjectRef) -> ScaledObjectKey:
    return ScaledObjectKey(request.namespace, request.name)
