"""A gRPC client that calls the scaler exactly as KEDA does, built from the .proto."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc

# KEDA's HPA path carries a 3 s deadline on each call.
KEDA_DEADLINE = 3.0


@dataclass(frozen=True)
class Poll:
    metric_name: str
    target: float
    target_int: int
    value: float
    value_int: int
    active: bool


class Keda:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = pb_grpc.ExternalScalerStub(channel)

    @staticmethod
    def ref(metadata: Mapping[str, str], name: str = "celery-worker", namespace: str = "airflow") -> pb.ScaledObjectRef:
        # KEDA forwards its own keys too; the scaler must ignore them.
        return pb.ScaledObjectRef(
            name=name, namespace=namespace, scalerMetadata={"scalerAddress": "scaler.keda:6000", **metadata}
        )

    async def poll(self, metadata: Mapping[str, str], name: str = "celery-worker") -> Poll:
        """One polling round in KEDA's order: GetMetricSpec, GetMetrics, IsActive."""
        ref = self.ref(metadata, name)
        spec = await self.stub.GetMetricSpec(ref, timeout=KEDA_DEADLINE)
        assert len(spec.metricSpecs) == 1
        metric = spec.metricSpecs[0]
        metrics = await self.stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric.metricName), timeout=KEDA_DEADLINE
        )
        assert len(metrics.metricValues) == 1, "the HPA sums every value: exactly one must come back"
        value = metrics.metricValues[0]
        active = await self.stub.IsActive(ref, timeout=KEDA_DEADLINE)
        return Poll(
            metric_name=metric.metricName,
            target=metric.targetSizeFloat,
            target_int=metric.targetSize,
            value=value.metricValueFloat,
            value_int=value.metricValue,
            active=active.result,
        )

    def stream(self, metadata: Mapping[str, str], name: str = "celery-worker") -> ActivityStream:
        """Open StreamIsActive as KEDA's external-push trigger does."""
        return ActivityStream(self.stub.StreamIsActive(self.ref(metadata, name)))

    async def workers(self, metadata: Mapping[str, str]) -> int:
        poll = await self.poll(metadata)
        assert poll.value == poll.value_int, "float and int metric values must agree"
        return poll.value_int


class ActivityStream:
    """A typed view of a StreamIsActive call (grpc-stubs types its messages as object)."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def next(self) -> bool:
        message = await self.call.read()
        assert isinstance(message, pb.IsActiveResponse), message
        return message.result

    def cancel(self) -> None:
        self.call.cancel()
