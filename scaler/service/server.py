"""The grpc.aio server: ExternalScaler, health, reflection, TLS, metrics, and an orderly drain.

Shutdown order matters to Kubernetes and KEDA: gRPC health turns NOT_SERVING
and /readyz 503 first (probes and load balancers stop sending), open streams
are told to end, the server drains in-flight calls within the grace period,
and only then are the database pools and the metrics endpoint closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # grpc-stubs predates it
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.adapters.celery_broker.control import CeleryControl
from scaler.adapters.kubernetes.access import KubernetesSettings, NoKubernetes, connect, own_namespace
from scaler.adapters.kubernetes.api import KubernetesApi
from scaler.options import checked, positive, setting, split_address
from scaler.rules.admission import ConnectionPolicy, Limits
from scaler.rules.database_urls import ConnectionTarget
from scaler.rules.memory_budget import MemoryBudget, memory_limit_setting, mib
from scaler.rules.snapshot import Clock
from scaler.service.database_caches import AirflowDatabases, DatabaseSettings
from scaler.service.deletion_cost_reconciler import DeletionCostReconciler
from scaler.service.drain_loop import DrainLoop, DrainSettings
from scaler.service.grpc_metrics import MetricsInterceptor
from scaler.service.http_server import HttpServer
from scaler.service.leadership import LeaseLeadership
from scaler.service.metrics import ScalerMetrics
from scaler.service.process_memory import cgroup_memory_limit, resident_bytes
from scaler.service.scaled_objects import ScaledObjects
from scaler.service.servicer import ExternalScalerServicer
from scaler.service.tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name


@dataclass(frozen=True)
class ServerSettings:
    grpc_address: str = setting(
        "0.0.0.0:6000",
        flag="--grpc-address",
        parse=checked(split_address),
        metavar="HOST:PORT",
        help="Where to listen for KEDA's gRPC calls.",
    )
    shutdown_grace: float = setting(
        10.0,
        flag="--shutdown-grace",
        parse=positive(float),
        metavar="SECONDS",
        help="On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cancelled.",
    )
    database_settings: DatabaseSettings = field(default_factory=DatabaseSettings)
    databases: Mapping[str, ConnectionTarget] = field(default_factory=dict)
    metrics_address: str = setting(
        "0.0.0.0:8080",
        flag="--metrics-address",
        parse=checked(split_address),
        metavar="HOST:PORT",
        help="Where to serve Prometheus metrics (/metrics) and HTTP probes (/healthz, /readyz); port 0 for any.",
    )
    # Series of a ScaledObject that has not called for this long are removed.
    series_ttl: float = setting(
        600.0,
        flag="--metrics-series-ttl",
        parse=positive(float),
        metavar="SECONDS",
        help="Remove a ScaledObject's metric series after this long without a call from KEDA (bounded cardinality "
        "when ScaledObjects are deleted).",
    )
    memory_limit: int | None = setting(
        None,
        flag="--memory-limit",
        parse=memory_limit_setting,
        metavar="BYTES",
        shown="auto",
        help="The memory the scaler may use, in bytes or as Kubernetes writes it (512Mi, 1Gi): streams, "
        "ScaledObjects and databases past what it leaves (less a fifth for headroom and the memory held at start) are "
        "RESOURCE_EXHAUSTED. auto: the container's cgroup limit, if it has one; off: no budget.",
    )
    tls: TlsFiles | None = None
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    limits: Limits = field(default_factory=Limits)
    policy: ConnectionPolicy = field(default_factory=ConnectionPolicy)


def grpc_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC core's own bounds, sized to ours.

    After a restart KEDA reopens every StreamIsActive at once. gRPC core holds calls
    the server has not yet taken up as "pending", and past 1,000 of them (3,000 hard)
    cancels those that waited over a second: streams that never reach the handler.
    The pending limits follow --max-streams, and our own limit answers past it.
    A request over max_receive_message_length is refused by gRPC (RESOURCE_EXHAUSTED, naming both sizes)
    before it is parsed; below it, check_request names the key that is too long. The limit stays low on
    purpose: every large request leaves memory behind in the allocator's caches (about 50 MiB after
    repeated 1 MB requests, 100 MiB after 4 MB ones), and no trigger needs more than --max-metadata-bytes.
    """
    # Not shrunk to what the memory budget admits: gRPC cancels the calls past its pending limits (CANCELLED,
    # which KEDA retries blindly), while the handler refuses the surplus by name (RESOURCE_EXHAUSTED) at once.
    pending = limits.max_streams + limits.max_streams // 2
    return [
        # so_reuseport off: a second scaler on the same port must fail, not share it silently.
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
        # ... and those not taken up within this many seconds (default 30) are cancelled; a busy replica
        # with tens of thousands of reopened streams may need longer than that to take them all.
        ("grpc.server_max_unrequested_time_in_server", 300),
        ("grpc.max_receive_message_length", max(256 << 10, 4 * limits.max_metadata_bytes)),
    ]


def memory_budget(setting: int | None) -> MemoryBudget:
    """The budget for --memory-limit (None: the cgroup's limit, if any; 0: none), from what is held now."""
    limit = cgroup_memory_limit() if setting is None else setting
    return MemoryBudget(limit=limit, baseline=resident_bytes() or 0, resident=resident_bytes)


class ScalerServer:
    def __init__(self, settings: ServerSettings, *, clock: Clock = time.monotonic) -> None:
        """`clock` times the per-ScaledObject series expiry and the databases' caches (pre-warm's due times among
        them); tests pass a fake one and call expire() or refresh() themselves."""
        self.settings = settings
        self.shutdown = asyncio.Event()
        self.metrics_registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.metrics_registry)
        self.metrics = ScalerMetrics(self.metrics_registry)
        self.budget = memory_budget(settings.memory_limit)
        self.metrics.watch_memory_budget(self.budget)
        self.databases = AirflowDatabases(
            configured=settings.databases,
            settings=settings.database_settings,
            metrics=self.metrics,
            clock=clock,
            budget=self.budget,
        )
        self.metrics.watch_databases(self.databases.states)
        self.scaled_objects = ScaledObjects(
            metrics=self.metrics,
            ttl=settings.series_ttl,
            clock=clock,
            max_scaled_objects=settings.limits.max_scaled_objects,
            max_streams=settings.limits.max_streams,
            max_per_namespace=settings.limits.max_scaled_objects_per_namespace,
            budget=self.budget,
        )
        self.health = health_aio.HealthServicer()
        self.http = HttpServer(address=settings.metrics_address, registry=self.metrics_registry, ready=self.ready)
        self._server = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics)], options=grpc_options(settings.limits)
        )
        self._serving = False
        self._background: list[asyncio.Task[None]] = []
        self.reconciler: DeletionCostReconciler | None = None
        self.drain: DrainLoop | None = None
        self.leadership: LeaseLeadership | None = None
        self.port = 0

    def ready(self) -> bool:
        """For /readyz: true from a completed start until stop begins."""
        return self._serving

    async def start(self) -> None:
        self.reconciler = await self._reconciler()
        servicer = ExternalScalerServicer(
            databases=self.databases,
            scaled_objects=self.scaled_objects,
            shutdown=self.shutdown,
            limits=self.settings.limits,
            policy=self.settings.policy,
        )
        pb_grpc.add_ExternalScalerServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port = self._listen()
        await self.http.start()
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._background = [
            asyncio.create_task(self.scaled_objects.expire_forever(), name="expire scaled object series"),
            asyncio.create_task(self.reconciler.run_forever(), name="pod-deletion-cost"),
        ]
        drain = self.settings.drain
        if drain.brokers:
            api = self.reconciler.api
            leading: Callable[[], bool] = lambda: True  # noqa: E731 - one replica, no election
            self.metrics.drain_leader.set(1)
            if api is not None and drain.lease != "off":
                self.leadership = LeaseLeadership(
                    api,
                    namespace=drain.lease_namespace or own_namespace(self.settings.kubernetes),
                    name=drain.lease,
                    identity=f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
                    on_change=self.metrics.drain_leader.set,
                )
                leading = self.leadership.leading
                self.metrics.drain_leader.set(0)
                self._background.append(asyncio.create_task(self.leadership.run_forever(), name="drain lease"))
            self.drain = DrainLoop(
                api,
                {name: CeleryControl(target, timeout=drain.timeout) for name, target in drain.brokers.items()},
                scaled_objects=self.scaled_objects,
                metrics=self.metrics,
                interval=drain.interval,
                leading=leading,
            )
            self._background.append(asyncio.create_task(self.drain.run_forever(), name="drain"))
        self._serving = True

    async def _reconciler(self) -> DeletionCostReconciler:
        """The deletion-cost reconciler, with an API client, or without one (and a log line saying why)."""
        settings = self.settings.kubernetes
        api: KubernetesApi | None = None
        try:
            api = KubernetesApi(await connect(settings), request_timeout=settings.request_timeout)
        except NoKubernetes as error:
            if settings.mode in ("in-cluster", "kubeconfig"):
                raise  # asked for explicitly: a configuration error, not a degradation
            # Switched off on purpose is worth a line, not a warning.
            log.log(
                logging.INFO if settings.mode == "off" else logging.WARNING,
                "no Kubernetes API: %s; pod-deletion-cost is not kept (the busy-worker floor still applies)",
                error,
                extra={"reason": str(error)},
            )
        return DeletionCostReconciler(
            api,
            scaled_objects=self.scaled_objects,
            metrics=self.metrics,
            interval=settings.interval,
            patch_rate=settings.patch_rate,
        )

    def _listen(self) -> int:
        address, tls = self.settings.grpc_address, self.settings.tls
        try:
            if tls is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(
                    address, server_credentials(tls, on_reload=self.metrics.tls_reloads.inc)
                )
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address} for gRPC (--grpc-address): {error}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address} for gRPC (--grpc-address): the address is in use or not local")
        return port

    async def stop(self) -> None:
        self._serving = False
        await self.health.enter_graceful_shutdown()
        self.shutdown.set()
        await self._server.stop(self.settings.shutdown_grace)
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.leadership is not None:
            await self.leadership.release()
        if self.drain is not None:
            await self.drain.close()
        if self.reconciler is not None:
            await self.reconciler.close()
        await self.databases.close()
        await self.http.stop()

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
    budget = server.budget
    if budget.limit is None:
        log.info("no memory limit (none set, none in the cgroup): the --max-* limits alone bound what is admitted")
    else:
        log.info(
            "memory limit %s: %s for streams, ScaledObjects and databases (room for about %d ScaledObjects with a "
            "stream each, or %d databases)",
            mib(budget.limit),
            mib(budget.budget),
            budget.most_streams() or 0,
            budget.budget // budget.costs.database,
        )
    log.info(
        "serving %s on %s (port %d, %s); metrics on http://%s:%d/metrics; configured databases: %s",
        SERVICE_NAME,
        settings.grpc_address,
        server.port,
        _tls_mode(settings.tls),
        server.http.host,
        server.http.port,
        names,
    )
    await stop.wait()
    log.info("shutting down: draining calls for up to %gs", settings.shutdown_grace)
    await server.stop()
    log.info("stopped")
    return 0


def _tls_mode(tls: TlsFiles | None) -> str:
    if tls is None:
        return "plaintext"
    return "TLS" if tls.client_ca is None else "mutual TLS"
