"""`airflow-keda-scaler demo`: the real scaler on an embedded database, live.

It starts a throwaway PostgreSQL with Airflow's own task_instance table (3.x),
runs a synthetic workload (bursts of tasks on two Celery queues moving
queued -> running -> success), serves the production server on a real socket,
and polls it over gRPC the way KEDA does (GetMetricSpec, GetMetrics, IsActive)
for two ScaledObjects, one per queue, printing what it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import asyncpg
import grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.airflow_schema import LATEST, TaskInstance, insert_task_instances, schema_sql
from scaler.databases.registry import RegistrySettings
from scaler.databases.urls import parse_url
from scaler.embedded_postgres import EmbeddedPostgres
from scaler.server import ScalerServer, ServerSettings

# The two worker sets the demo's ScaledObjects describe: name -> trigger metadata.
SCALED_OBJECTS: dict[str, dict[str, str]] = {
    "celery-default": {"database": "airflow", "queues": "default", "concurrency": "16"},
    "celery-ml": {"database": "airflow", "queues": "ml", "concurrency": "4"},
}


@dataclass
class _Task:
    key: str
    queue: str
    queued_until: float
    done_at: float
    state: str = "queued"


@dataclass
class Workload:
    """Bursts of tasks; each waits in the queue a little, then runs for a while."""

    rng: random.Random
    tasks: list[_Task] = field(default_factory=list)
    serial: int = 0

    def arrivals(self, now: float) -> list[_Task]:
        new: list[_Task] = []
        if self.rng.random() < 0.25:
            new += [self._task("default", now) for _ in range(self.rng.randint(5, 40))]
        if self.rng.random() < 0.12:
            new += [self._task("ml", now) for _ in range(self.rng.randint(1, 6))]
        self.tasks += new
        return new

    def _task(self, queue: str, now: float) -> _Task:
        self.serial += 1
        long = self.rng.random() < 0.1
        run = self.rng.uniform(40, 90) if long else self.rng.uniform(4, 20)
        wait = self.rng.uniform(1, 5)
        return _Task(f"task_{self.serial}", queue, now + wait, now + wait + run)

    def advance(self, now: float) -> tuple[list[str], list[str]]:
        started = [t for t in self.tasks if t.state == "queued" and now >= t.queued_until]
        finished = [t for t in self.tasks if t.state == "running" and now >= t.done_at]
        for task in started:
            task.state = "running"
        for task in finished:
            task.state = "success"
        self.tasks = [t for t in self.tasks if t.state != "success"]
        return [t.key for t in started], [t.key for t in finished]

    def counts(self, queue: str) -> tuple[int, int]:
        queued = sum(1 for t in self.tasks if t.queue == queue and t.state == "queued")
        running = sum(1 for t in self.tasks if t.queue == queue and t.state == "running")
        return queued, running


async def _drive_workload(connection: asyncpg.Connection, workload: Workload, stop: asyncio.Event) -> None:
    started_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic() - started_at
        new = workload.arrivals(now)
        if new:
            await insert_task_instances(connection, [TaskInstance(t.key, "queued", queue=t.queue) for t in new])
        started, finished = workload.advance(now)
        if started:
            await connection.execute(
                "UPDATE task_instance SET state = 'running', hostname = 'demo-worker' WHERE task_id = ANY($1)",
                started,
            )
        if finished:
            await connection.execute("UPDATE task_instance SET state = 'success' WHERE task_id = ANY($1)", finished)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _poll_like_keda(port: int, workload: Workload, interval: float, stop: asyncio.Event) -> None:
    started_at = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        while not stop.is_set():
            parts = []
            for name, metadata in SCALED_OBJECTS.items():
                ref = pb.ScaledObjectRef(name=name, namespace="airflow", scalerMetadata=metadata)
                try:
                    spec = await stub.GetMetricSpec(ref, timeout=3)
                    metric = spec.metricSpecs[0].metricName
                    metrics = await stub.GetMetrics(
                        pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric), timeout=3
                    )
                    active = (await stub.IsActive(ref, timeout=3)).result
                except grpc.aio.AioRpcError as error:
                    parts.append(f"{name}: {error.code().name} {error.details()}")
                    continue
                queued, running = workload.counts(metadata["queues"])
                workers = int(metrics.metricValues[0].metricValueFloat)
                parts.append(
                    f"{name}: queued {queued:3d} running {running:3d} -> workers {workers:2d} "
                    f"{'active' if active else 'idle  '}"
                )
            print(f"{time.monotonic() - started_at:6.0f}s  " + " | ".join(parts), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def run_demo(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("starting an embedded PostgreSQL with Airflow's task_instance table ...", flush=True)
    postgres = await asyncio.to_thread(EmbeddedPostgres(stat_statements=False).start)
    try:
        admin = await asyncpg.connect(postgres.dsn)
        await admin.execute("CREATE DATABASE airflow")
        await admin.close()
        connection = await asyncpg.connect(postgres.dsn_for("airflow"))
        await connection.execute(schema_sql(LATEST))
        settings = ServerSettings(
            grpc_address=args.grpc_address,
            metrics_address=args.metrics_address,
            registry=RegistrySettings(refresh_interval=1.0),
            databases={"airflow": parse_url(postgres.dsn_for("airflow"))},
        )
        async with ScalerServer(settings) as server:
            print(
                f"scaler serving on 127.0.0.1:{server.port} (Airflow {LATEST} schema, database name 'airflow'); "
                f"metrics on http://{server.http.host}:{server.http.port}/metrics\n"
                "ScaledObjects polled here, as KEDA would:\n"
                + "".join(f"  {name}: {metadata}\n" for name, metadata in SCALED_OBJECTS.items())
                + "Press Ctrl-C to stop.",
                flush=True,
            )
            workload = Workload(random.Random(args.seed))
            if args.duration > 0:
                loop.call_later(args.duration, stop.set)
            await asyncio.gather(
                _drive_workload(connection, workload, stop),
                _poll_like_keda(server.port, workload, args.poll_interval, stop),
            )
        await connection.close()
    finally:
        await asyncio.to_thread(postgres.stop)
    print("demo stopped; the embedded PostgreSQL and its folder are gone.", file=sys.stderr)
    return 0
