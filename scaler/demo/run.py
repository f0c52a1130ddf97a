"""`airflow-keda-scaler demo`: the real scaler on an embedded database, live.

It starts a throwaway PostgreSQL with Airflow's own task_instance table (3.x),
serves the production server on a real socket, and closes the loop the way a
cluster would: a synthetic workload puts bursts of tasks on two Celery queues;
a KEDA-shaped client polls the scaler over gRPC (GetMetricSpec, GetMetrics,
IsActive) for one ScaledObject per queue; a simulated KEDA and HPA
(scaler.simulation.keda) turn the answers into replicas; and the replicas' worker
slots (replicas x concurrency) decide how many queued tasks may start running.
KEDA's intervals are shrunk so that a minute shows scale-up, scale-down and
scale to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc

from scaler import plotting
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.airflow_databases import DatabaseSettings
from scaler.databases.urls import parse_url
from scaler.demo.airflow_schema import LATEST, TaskInstance, insert_task_instances, schema_sql
from scaler.demo.embedded_postgres import EmbeddedPostgres
from scaler.demo.plot import write_plot
from scaler.demo.settings import DemoSettings
from scaler.demo.workload import SCALED_OBJECTS, TICK, DemoTask, Sample, Workload
from scaler.errors import ConfigError
from scaler.kubernetes.access import KubernetesSettings
from scaler.server import ScalerServer, ServerSettings
from scaler.simulation.keda import ScaledObjectSettings, SimulatedScaledObject

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@dataclass
class Demo:
    workload: Workload
    simulations: dict[str, SimulatedScaledObject]
    history: list[Sample] = field(default_factory=list)
    latest: dict[str, Sample] = field(default_factory=dict)

    def record(self, samples: list[Sample]) -> None:
        self.history += samples
        self.latest.update((sample.name, sample) for sample in samples)

    def slots(self) -> dict[str, int]:
        return {so.queue: self.simulations[so.name].replicas * so.concurrency for so in SCALED_OBJECTS}


async def _write(connection: asyncpg.Connection, new: list[DemoTask], started: list[str], finished: list[str]) -> None:
    if new:
        await insert_task_instances(connection, [TaskInstance(t.key, "queued", queue=t.queue) for t in new])
    if started:
        await connection.execute(
            "UPDATE task_instance SET state = 'running', hostname = 'demo-worker' WHERE task_id = ANY($1)", started
        )
    if finished:
        await connection.execute("UPDATE task_instance SET state = 'success' WHERE task_id = ANY($1)", finished)


async def _poll(stub: pb_grpc.ExternalScalerAsyncStub, demo: Demo, at: float) -> list[Sample]:
    """One KEDA polling round for every ScaledObject, applied to the simulated KEDA and HPA."""
    samples = []
    for so in SCALED_OBJECTS:
        ref = pb.ScaledObjectRef(name=so.name, namespace="airflow", scalerMetadata=so.metadata)
        queued, running = demo.workload.counts(so.queue)
        simulation = demo.simulations[so.name]
        try:
            spec = await stub.GetMetricSpec(ref, timeout=3)
            request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricSpecs[0].metricName)
            metrics = await stub.GetMetrics(request, timeout=3)
            active = (await stub.IsActive(ref, timeout=3)).result
        except grpc.aio.AioRpcError as error:
            # As KEDA does: an error changes nothing (no made-up 0).
            samples.append(Sample(at, so.name, queued, running, 0, False, simulation.replicas, f"{error.code().name}"))
            continue
        workers = int(metrics.metricValues[0].metricValueFloat)
        replicas = simulation.step(at, workers=workers, active=active)
        samples.append(Sample(at, so.name, queued, running, workers, active, replicas))
    return samples


def plain_line(samples: list[Sample]) -> str:
    """The display when stdout is not a terminal: one line per polling round."""
    parts = [
        f"{s.name}: {s.error}"
        if s.error
        else f"{s.name}: queued {s.queued:3d} running {s.running:3d} -> workers {s.workers:2d} "
        f"replicas {s.replicas:2d} {'active' if s.active else 'idle  '}"
        for s in samples
    ]
    return f"{samples[0].at:6.0f}s  " + " | ".join(parts)


def live_table(demo: Demo, elapsed: float, duration: float, metrics_url: str) -> Table:
    from rich.table import Table

    table = Table(
        title="airflow-keda-scaler demo: demand -> workers asked for -> replicas",
        caption=_progress(elapsed, duration) + f"   metrics: {metrics_url}",
        expand=False,
    )
    for column in ("ScaledObject", "queued", "running", "demand", "workers asked", "replicas", "slots free", "state"):
        table.add_column(column, justify="left" if column in ("ScaledObject", "state") else "right")
    for sample in demo.latest.values():
        so = next(s for s in SCALED_OBJECTS if s.name == sample.name)
        free = sample.replicas * so.concurrency - sample.running
        state = f"[red]{sample.error}[/red]" if sample.error else ("[green]active" if sample.active else "[dim]idle")
        table.add_row(
            sample.name,
            str(sample.queued),
            str(sample.running),
            str(sample.queued + sample.running),
            str(sample.workers),
            f"{sample.replicas}/{so.max_replicas}",
            str(max(0, free)),
            state,
        )
    return table


def _progress(elapsed: float, duration: float) -> str:
    if duration <= 0:
        return f"{elapsed:4.0f}s, Ctrl-C to stop"
    done = int(min(1.0, elapsed / duration) * 30)
    return f"{'█' * done}{'░' * (30 - done)} {elapsed:4.0f}s / {duration:.0f}s"


async def _run_loop(
    connection: asyncpg.Connection,
    stub: pb_grpc.ExternalScalerAsyncStub,
    demo: Demo,
    settings: DemoSettings,
    stop: asyncio.Event,
    console: Console | None,
    metrics_url: str,
) -> None:
    started_at = time.monotonic()
    next_poll = 0.0

    async def tick() -> None:
        nonlocal next_poll
        now = time.monotonic() - started_at
        new = demo.workload.arrivals()
        started, finished = demo.workload.advance(now, demo.slots())
        await _write(connection, new, started, finished)
        if now >= next_poll:
            next_poll = now + settings.poll_interval
            samples = await _poll(stub, demo, now)
            demo.record(samples)
            if console is None:
                print(plain_line(samples), flush=True)

    async def wait() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK)

    if console is None:
        while not stop.is_set():
            await tick()
            await wait()
        return
    from rich.live import Live

    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not stop.is_set():
            await tick()
            live.update(live_table(demo, time.monotonic() - started_at, settings.duration, metrics_url))
            await wait()


async def run_demo(settings: DemoSettings) -> int:
    if settings.plot and not plotting.available():
        raise ConfigError(plotting.MISSING)
    console = _console() if sys.stdout.isatty() else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("starting an embedded PostgreSQL with Airflow's task_instance table ...", flush=True)
    postgres = await asyncio.to_thread(EmbeddedPostgres(stat_statements=False).start)
    demo = Demo(
        Workload(random.Random(settings.seed)),
        {
            so.name: SimulatedScaledObject(
                ScaledObjectSettings(
                    polling_interval=settings.poll_interval,
                    cooldown_period=settings.cooldown,
                    max_replicas=so.max_replicas,
                )
            )
            for so in SCALED_OBJECTS
        },
    )
    try:
        admin = await asyncpg.connect(postgres.dsn)
        await admin.execute("CREATE DATABASE airflow")
        await admin.close()
        connection = await asyncpg.connect(postgres.dsn_for("airflow"))
        await connection.execute(schema_sql(LATEST))
        server_settings = ServerSettings(
            grpc_address=settings.grpc_address,
            metrics_address=settings.metrics_address,
            database_settings=DatabaseSettings(refresh_interval=1.0),
            databases={"airflow": parse_url(postgres.dsn_for("airflow"))},
            # The demo's ScaledObjects exist only in this process: no cluster to look them up in.
            kubernetes=KubernetesSettings(mode="off"),
        )
        async with ScalerServer(server_settings) as server:
            metrics_url = f"http://{server.http.host}:{server.http.port}/metrics"
            print(
                f"scaler serving on 127.0.0.1:{server.port} (Airflow {LATEST} schema, database name 'airflow'); "
                f"metrics on {metrics_url}\n"
                f"KEDA simulated with pollingInterval {settings.poll_interval:g}s, "
                f"cooldownPeriod {settings.cooldown:g}s, minReplicaCount 0; ScaledObjects:\n"
                + "".join(f"  {so.name}: {so.metadata}, maxReplicaCount {so.max_replicas}\n" for so in SCALED_OBJECTS)
                + "Press Ctrl-C to stop.",
                flush=True,
            )
            if settings.duration > 0:
                loop.call_later(settings.duration, stop.set)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.ExternalScalerStub(channel)
                with _logs_through(console):
                    await _run_loop(connection, stub, demo, settings, stop, console, metrics_url)
        await connection.close()
    finally:
        await asyncio.to_thread(postgres.stop)
    if settings.plot:
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        write_plot(Path(settings.plot), demo.history)
        print(f"wrote {settings.plot}", flush=True)
    print("demo stopped; the embedded PostgreSQL and its folder are gone.", file=sys.stderr)
    return 0


def _console() -> Console | None:
    """A rich console for the live table; without rich (no [demo] extra) the plain lines do."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console()


@contextlib.contextmanager
def _logs_through(console: Console | None) -> Iterator[None]:
    """While the live table is up, log lines print above it instead of tearing it."""
    if console is None:
        yield
        return
    from rich.logging import RichHandler

    root = logging.getLogger()
    before = root.handlers[:]
    root.handlers[:] = [RichHandler(console=console, show_path=False)]
    try:
        yield
    finally:
        root.handlers[:] = before
