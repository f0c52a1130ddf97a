"""A bare grpc.aio ExternalScaler answering constants: the ceiling a Python gRPC server reaches here."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc


class Constant(pb_grpc.ExternalScalerServicer):  # only the two calls the benchmark makes
    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Any) -> pb.GetMetricsResponse:
        value = pb.MetricValue(metricName="airflow-celery-workers", metricValue=1, metricValueFloat=1.0)
        return pb.GetMetricsResponse(metricValues=[value])

    async def IsActive(self, request: pb.ScaledObjectRef, context: Any) -> pb.IsActiveResponse:
        return pb.IsActiveResponse(result=True)


async def main(address: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalScalerServicer_to_server(Constant(), server)  # type: ignore[abstract]
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
