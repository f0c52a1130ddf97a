"""`airflow-keda-scaler demo`: the real scaler on an embedded database, live.

It starts a throwaway PostgreSQL with Airflow's own task_instance table (3.x),
serves the production server on a real socket, and closes the loop the way a
cluster would: a synthetic workload puts bursts of tasks on two Celery queues;
a KEDA-shaped client polls the scaler over gRPC (GetMetricSpec, GetMetrics,
IsActive) for one ScaledObject per queue; the package's model (workers.py:
KEDA, the HPA, named worker pods, Celery, warm shutdown and SIGKILL) turns the
answers into pods that run the tasks, and the demo writes each task's state
and worker hostname to the table, so the scaler's busy-worker floor sees what
it sees in a cluster. A shadow replay of the same tasks under the chart's
formula shows what that would have killed. A DAG scheduled every 30 s (dag and
dag_run rows as Airflow's scheduler writes them, with a history of runs) puts
its tasks on a third queue, whose trigger pre-warms: its workers come up
before each run. KEDA's intervals are shrunk so that
a minute shows scale-up, scale-down and scale to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
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

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.commands import plot_files
from scaler.commands.demo.plot import write_plot
from scaler.commands.demo.settings import DemoSettings
from scaler.commands.demo.workers import WorkerSet, ticks
from scaler.commands.demo.workload import (
    FIRST_RUN_AFTER,
    SCALED_OBJECTS,
    SCHEDULE_EVERY,
    SCHEDULED_DAG,
    SCHEDULED_TASKS,
    TICK,
    DemoTask,
    Sample,
    Workload,
)
from scaler.errors import ConfigError
from scaler.fixtures.airflow_schema import LATEST, TaskInstance, insert_rows, insert_task_instances, schema_sql
from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from scaler.rules.database_urls import parse_url
from scaler.rules.prewarm import PrewarmSettings
from scaler.service.database_caches import DatabaseSettings
from scaler.service.server import ScalerServer, ServerSettings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@dataclass
class Demo:
    workload: Workload
    sets: dict[str, WorkerSet]  # by queue
    history: list[Sample] = field(default_factory=list)
    latest: dict[str, Sample] = field(default_factory=dict)

    def record(self, samples: list[Sample]) -> None:
        self.history += samples
        self.latest.update((sample.name, sample) for sample in samples)


async def _insert(connection: asyncpg.Connection, new: list[DemoTask]) -> None:
    """The tick's new task instances, queued, as the scheduler writes them."""
    if new:
        now = datetime.datetime.now(datetime.UTC)
        await insert_task_instances(
            connection,
            [
                TaskInstance(t.key, "queued", queue=t.queue, queued_at=now, dag_id=t.dag_id, run_id=t.run_id)
                for t in new
            ],
        )


@dataclass
class Scheduler:
    """Airflow's scheduler for the demo's scheduled DAG: the dag row's next run, and each run when it is due."""

    due: float  # Unix time of the next run (dag.next_dagrun_create_after)

    async def start(self, connection: asyncpg.Connection) -> None:
        """The DAG, and five earlier runs of it: the history pre-warm predicts from."""
        now = datetime.datetime.now(datetime.UTC)
        await insert_rows(
            connection,
            "dag",
            [
                {
                    "dag_id": SCHEDULED_DAG,
                    "is_paused": False,
                    "is_stale": False,
                    "next_dagrun_create_after": _at(self.due),
                }
            ],
        )
        for back in range(5, 0, -1):
            started = now - datetime.timedelta(seconds=back * SCHEDULE_EVERY)
            run_id = await self._create(connection, started)
            queued = started + datetime.timedelta(seconds=1)
            ended = queued + datetime.timedelta(seconds=4)
            done = [
                TaskInstance(f"{run_id}_{i}", "success", queue="etl", dag_id=SCHEDULED_DAG, run_id=run_id,
                             queued_at=queued, started_at=queued, ended_at=ended, hostname="celery-etl-worker-0")
                for i in range(SCHEDULED_TASKS)
            ]  # fmt: skip
            await insert_task_instances(connection, done)

    async def tick(self, connection: asyncpg.Connection, workload: Workload) -> list[DemoTask]:
        """When the run is due: create it, move the DAG's next run on, and queue the run's tasks."""
        if time.time() < self.due:
            return []
        run_id = await self._create(connection, datetime.datetime.now(datetime.UTC))
        self.due += SCHEDULE_EVERY
        await connection.execute(
            "UPDATE dag SET next_dagrun_create_after = $1 WHERE dag_id = $2", _at(self.due), SCHEDULED_DAG
        )
        return workload.scheduled_run(run_id)

    async def _create(self, connection: asyncpg.Connection, started: datetime.datetime) -> str:
        run_id = f"scheduled__{started.isoformat()}"
        row = {
            "dag_id": SCHEDULED_DAG,
            "run_id": run_id,
            "run_type": "scheduled",
            "state": "running",
            "queued_at": started,
            "start_date": started,
            "logical_date": started,
            "run_after": started,
        }
        await insert_rows(connection, "dag_run", [row])
        return run_id


def _at(unix: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


async def _update(connection: asyncpg.Connection, changed: list[tuple[str, str, str | None]]) -> None:
    """Each changed task instance's state (and worker, once it runs), as the workers write them."""
    if changed:
        keys, states, hosts = (list(column) for column in zip(*changed, strict=True))
        await connection.execute(CHANGE, keys, states, hosts)


# Dates as Airflow sets them, so that `replay` can read the demo's table too.
CHANGE = """UPDATE task_instance AS t
SET state = v.state, hostname = coalesce(v.host, t.hostname),
    start_date = CASE WHEN v.state = 'running' THEN now() ELSE t.start_date END,
    end_date = CASE WHEN v.state IN ('success', 'up_for_retry', 'failed') THEN now() ELSE t.end_date END,
    queued_dttm = CASE WHEN v.state = 'queued' THEN now() ELSE t.queued_dttm END
FROM unnest($1::text[], $2::text[], $3::text[]) AS v(task_id, state, host)
WHERE t.task_id = v.task_id"""


@dataclass(frozen=True)
class Answer:
    workers_set: WorkerSet
    workers: int = 0
    active: bool = False
    error: str = ""


async def _poll(stub: pb_grpc.ExternalScalerAsyncStub, demo: Demo) -> list[Answer]:
    """One KEDA polling round for every ScaledObject; the answers go to each worker set's KEDA and HPA."""
    answers = []
    for so in SCALED_OBJECTS:
        ref = pb.ScaledObjectRef(name=so.name, namespace="airflow", scalerMetadata=so.metadata)
        workers_set = demo.sets[so.queue]
        try:
            spec = await stub.GetMetricSpec(ref, timeout=3)
            request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricSpecs[0].metricName)
            metrics = await stub.GetMetrics(request, timeout=3)
            active = (await stub.IsActive(ref, timeout=3)).result
        except grpc.aio.AioRpcError as error:
            # As KEDA does: an error changes nothing (no made-up 0).
            answers.append(Answer(workers_set, error=error.code().name))
            continue
        workers = int(metrics.metricValues[0].metricValueFloat)
        workers_set.answered(workers, active)
        answers.append(Answer(workers_set, workers, active))
    return answers


def plain_line(samples: list[Sample]) -> str:
    """The display when stdout is not a terminal: one line per polling round."""
    parts = [
        f"{s.name}: {s.error}"
        if s.error
        else f"{s.name}: queued {s.queued:3d} running {s.running:3d} -> workers {s.workers:2d} "
        f"replicas {s.replicas:2d} {'active' if s.active else 'idle  '}{_held(s):9s} "
        f"killed {s.killed} (chart formula: {s.chart_killed}){_next_run(s)}"
        for s in samples
    ]
    return f"{samples[0].at:6.0f}s  " + " | ".join(parts)


def _held(sample: Sample) -> str:
    return " floor" if sample.floor_held else " pre-warm" if sample.prewarm_held else ""


def _next_run(sample: Sample) -> str:
    if sample.due_in is None:
        return ""
    return f" next {SCHEDULED_DAG} run in {max(0.0, sample.due_in):.0f}s"


def live_table(demo: Demo, elapsed: float, duration: float, metrics_url: str) -> Table:
    from rich.table import Table

    table = Table(
        title="airflow-keda-scaler demo: demand -> workers asked for -> replicas",
        caption=_progress(elapsed, duration) + f"   metrics: {metrics_url}",
        expand=False,
    )
    columns = (
        "ScaledObject",
        "queued",
        "running",
        "workers asked",
        "replicas",
        "pods",
        "held up by",
        "killed",
        "state",
        "scheduled",
    )
    for column in columns:
        left = column in ("ScaledObject", "held up by", "state", "scheduled")
        table.add_column(column, justify="left" if left else "right")
    table.add_column("chart formula (same tasks)", justify="right")
    for sample in demo.latest.values():
        so = next(s for s in SCALED_OBJECTS if s.name == sample.name)
        state = f"[red]{sample.error}[/red]" if sample.error else ("[green]active" if sample.active else "[dim]idle")
        table.add_row(
            sample.name,
            str(sample.queued),
            str(sample.running),
            str(sample.workers),
            f"{sample.replicas}/{so.max_replicas}",
            str(sample.pods),
            "[yellow]busy workers" if sample.floor_held else "[cyan]pre-warm" if sample.prewarm_held else "",
            f"[green]{sample.killed}" if sample.killed == 0 else f"[red]{sample.killed}",
            state,
            _next_run(sample).strip(),
            f"{sample.chart_replicas} replicas, [red]{sample.chart_killed} killed",
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
    scheduler: Scheduler,
    settings: DemoSettings,
    stop: asyncio.Event,
    console: Console | None,
    metrics_url: str,
) -> None:
    started_at = time.monotonic()
    count = 0
    poll_every = ticks(settings.poll_interval)

    async def tick() -> None:
        # The model steps once a tick; the wall clock only paces it (a slow tick does not skip a step).
        nonlocal count
        now = time.monotonic() - started_at
        new = demo.workload.arrivals() + await scheduler.tick(connection, demo.workload)
        for task in new:
            demo.sets[task.queue].arrive(count, task)
        # In the table before the poll: the scaler sees what the shadow replay sees in the same tick.
        await _insert(connection, new)
        answers = await _poll(stub, demo) if count % poll_every == 0 else []
        await _update(connection, [row for workers in demo.sets.values() for row in workers.step(count)])
        count += 1
        if answers:
            # After the step: the replicas KEDA and the HPA made of the answers.
            due_in = scheduler.due - time.time()
            samples = [
                a.workers_set.sample(now, workers=a.workers, active=a.active, error=a.error, due_in=due_in)
                for a in answers
            ]
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
    if settings.plot and not plot_files.available():
        raise ConfigError(plot_files.MISSING)
    console = _console() if sys.stdout.isatty() else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("starting an embedded PostgreSQL with Airflow's dag, dag_run and task_instance tables ...", flush=True)
    postgres = await asyncio.to_thread(EmbeddedPostgres(stat_statements=False).start)
    demo = Demo(
        Workload(random.Random(settings.seed)),
        {
            so.queue: WorkerSet.start(so, poll_interval=settings.poll_interval, cooldown=settings.cooldown)
            for so in SCALED_OBJECTS
        },
    )
    try:
        admin = await asyncpg.connect(postgres.dsn)
        await admin.execute("CREATE DATABASE airflow")
        await admin.close()
        connection = await asyncpg.connect(postgres.dsn_for("airflow"))
        await connection.execute(schema_sql(LATEST))
        scheduler = Scheduler(due=time.time() + FIRST_RUN_AFTER)
        await scheduler.start(connection)
        server_settings = ServerSettings(
            grpc_address=settings.grpc_address,
            metrics_address=settings.metrics_address,
            # Fresh within a tick: the model moves a tick at a time, and the floor should see that tick.
            database_settings=DatabaseSettings(
                refresh_interval=TICK / 2,
                # Shrunk like KEDA's: the schedule every second, the history every few, a run's first 10 s.
                prewarm=PrewarmSettings(schedule_interval=1.0, history_interval=5.0, window=10, grace=5),
            ),
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
                    await _run_loop(connection, stub, demo, scheduler, settings, stop, console, metrics_url)
        await connection.close()
    finally:
        await asyncio.to_thread(postgres.stop)
    print(
        "tasks killed: "
        + "; ".join(
            f"{ws.so.name} {ws.live.result.killed} (the chart's formula on the same tasks: {ws.chart.result.killed})"
            for ws in demo.sets.values()
        ),
        flush=True,
    )
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
