"""The grpc.aio server: ExternalScaler, health, reflection, and an orderly drain.

Shutdown order matters to Kubernetes and KEDA: health turns NOT_SERVING first
(probes and load balancers stop sending), open streams are told to end, the
server drains in-flight calls within the grace period, and only then are the
database pools closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # grpc-stubs predates it
from grpc_reflection.v1alpha import reflection

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.databases.registry import DatabaseRegistry, RegistrySettings
from scaler.databases.urls import ConnectionTarget
from scaler.servicer import ExternalScalerServicer

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name


@dataclass(frozen=True)
class ServerSettings:
    grpc_address: str = "0.0.0.0:6000"
    shutdown_grace: float = 10.0
    watch_interval: float = 0.5
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    databases: Mapping[str, ConnectionTarget] = field(default_factory=dict)


class ScalerServer:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.shutdown = asyncio.Event()
        self.registry = DatabaseRegistry(configured=settings.databases, settings=settings.registry)
        self.health = health_aio.HealthServicer()
        # so_reuseport off: a second scaler on the same port must fail, not share it silently.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.port = 0

    async def start(self) -> None:
        servicer = ExternalScalerServicer(
            registry=self.registry, shutdown=self.shutdown, watch_interval=self.settings.watch_interval
        )
        pb_grpc.add_ExternalScalerServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        try:
            self.port = self._server.add_insecure_port(self.settings.grpc_address)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {self.settings.grpc_address}: {error}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.grpc_address}")
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        self.shutdown.set()
        await self._server.stop(self.settings.shutdown_grace)
        await self.registry.close()

    async def __aenter__(self) -> ScalerServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM or SIGINT, then drain and return the exit code (0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = ScalerServer(settings)
    await server.start()
    names = ", ".join(sorted(settings.databases)) or "none (connectionFromEnv only)"
    log.info(
        "serving %s on %s (port %d); configured databases: %s", SERVICE_NAME, settings.grpc_address, server.port, names
    )
    await stop.wait()
    log.info("shutting down: draining calls for up to %gs", settings.shutdown_grace)
    await server.stop()
    log.info("stopped")
    return 0
