"""The HTTP side: /metrics for Prometheus, /healthz and /readyz for probes.

Kubernetes' gRPC probes cannot speak TLS, so platforms probe here instead.
/healthz answers while the process and its event loop run; /readyz only while
the gRPC server serves and is not shutting down. Neither looks at the Airflow
database: a scaler whose database is down must keep answering KEDA (with
UNAVAILABLE, so KEDA holds the current scale), not drop out of its Service.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from scaler.options import split_address


class HttpServer:
    def __init__(self, *, address: str, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self.host, self._requested_port = split_address(address)
        self.port = 0
        self._ready = ready
        app = web.Application()
        # The client library's own handler: content negotiation (text or OpenMetrics), gzip, name[] filters.
        app.router.add_get("/metrics", make_aiohttp_handler(registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # No access log: Prometheus and the kubelet call every few seconds.
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port, reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            # asyncio's strerror repeats the address ("error while attempting to bind on address ..."); the
            # errno alone says what happened.
            reason = os.strerror(error.errno).lower() if error.errno else str(error)
            raise OSError(
                f"cannot listen on {self.host}:{self._requested_port} for metrics (--metrics-address): {reason}"
            ) from None
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: starting or shutting down\n")
