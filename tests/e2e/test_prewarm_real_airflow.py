"""End to end: pre-warm before a real Airflow's scheduled DAG runs.

A real Airflow (each version of AIRFLOW_KEDA_SCALER_E2E_VERSIONS, CeleryExecutor)
runs a DAG scheduled every two minutes whose runs put SCHEDULED_TASKS tasks on
queue gamma (worker concurrency 2). Once the scaler's history has two of its
runs, a trigger with `prewarm: "true"` and `prewarmLeadSeconds: "60"`, polled
about every second as KEDA would and watched by a StreamIsActive stream, must:
- ask for the predicted workers (ceil(4 / 2) = 2) and be active at least 40 s
  before the next run's first task is queued (task_instance.queued_dttm, as
  Airflow wrote it), from 0 workers and inactive before the pre-warm;
- push `true` on the stream at the pre-warm's start, also 40 s or more before;
- go back to the normal decision after the run: 0 workers, inactive, once its
  tasks are done and before the next pre-warm;
- drop the pre-warm when the DAG is paused (REST API) during the next one, within
  a schedule read and a poll.
The timeline is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from dataclasses import dataclass

import asyncpg
import pytest

from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from scaler.rules.database_urls import parse_url
from scaler.rules.prewarm import PrewarmSettings
from scaler.rules.trigger_metadata import NamedDatabase
from scaler.service.prewarm_cache import PrewarmCache
from tests.conftest import StartScaler, fast_settings
from tests.e2e.stack import (
    CONCURRENCY,
    SCHEDULED_DAG_ID,
    SCHEDULED_DAG_SOURCE,
    SCHEDULED_QUEUE,
    SCHEDULED_TASKS,
    AirflowApi,
    AirflowStack,
    with_stack,
)
from tests.e2e.test_real_airflow import broker, versions  # noqa: F401 - the broker fixture
from tests.support.airflow_install import ensure_airflow
from tests.support.keda import ActivityStream

pytestmark = pytest.mark.e2e

LEAD = 60
SCHEDULE_INTERVAL = 5.0  # the scaler's --prewarm-schedule-interval here
METADATA = {
    "database": "airflow",
    "queues": SCHEDULED_QUEUE,
    "concurrency": str(CONCURRENCY),
    "prewarm": "true",
    "prewarmLeadSeconds": str(LEAD),
}
PREDICTED_WORKERS = -(-SCHEDULED_TASKS // CONCURRENCY)


@dataclass
class Answer:
    at: float  # Unix time
    workers: int
    active: bool


@pytest.mark.parametrize("version", versions())
async def test_prewarm_before_a_real_scheduled_dag(version: str, broker: str, start_scaler: StartScaler) -> None:  # noqa: F811
    venv = await asyncio.to_thread(ensure_airflow, version)
    with EmbeddedPostgres(stat_statements=False) as postgres:
        postgres.psql("CREATE DATABASE airflow")
        dsn = postgres.dsn_for("airflow")
        stack = AirflowStack(
            version,
            venv,
            database_url=dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
            broker_url=broker,
            dags={SCHEDULED_DAG_ID: SCHEDULED_DAG_SOURCE},
            queues=(SCHEDULED_QUEUE,),
        )
        await with_stack(stack, lambda api: run_and_check(stack, api, dsn, start_scaler))


async def run_and_check(stack: AirflowStack, api: AirflowApi, dsn: str, start_scaler: StartScaler) -> None:
    deadline = time.monotonic() + 240
    while not await api.dag_is_loaded(SCHEDULED_DAG_ID):
        stack.check_alive()
        assert time.monotonic() < deadline, "Airflow did not load the DAG within 240 s"
        await asyncio.sleep(1)
    prewarm = PrewarmSettings(schedule_interval=SCHEDULE_INTERVAL, history_interval=20.0)
    scaler = await start_scaler(fast_settings({"airflow": parse_url(dsn)}, prewarm=prewarm, refresh_interval=1.0))
    cache = scaler.server.databases.prewarm_for(NamedDatabase("airflow"))
    answers: list[Answer] = []
    events: list[tuple[float, str]] = []

    async def poll() -> Answer:
        result = await scaler.keda.poll(METADATA, name="worker-gamma")
        answer = Answer(time.time(), result.value_int, result.active)
        answers.append(answer)
        return answer

    # Until the history has two scheduled runs of the DAG (its first runs come within about four minutes).
    deadline = time.monotonic() + 480
    while len(cache.current().runs.get(SCHEDULED_DAG_ID, ())) < 2:
        stack.check_alive()
        assert time.monotonic() < deadline, f"no two scheduled runs in the history within 8 minutes: {cache.failures}"
        await poll()
        await asyncio.sleep(1)
    history = cache.current().runs[SCHEDULED_DAG_ID]
    events.append((time.time(), f"history: {len(history)} runs, initial demand {[r.tasks for r in history]}"))

    # The next run due, and the pre-warm before it.
    due = await next_due(cache, stack)
    events.append((due, "next run due (dag.next_dagrun_create_after)"))
    stream = scaler.keda.stream(METADATA, name="worker-gamma")
    pushes: list[tuple[float, bool]] = []
    watcher = asyncio.create_task(watch(stream, pushes))
    try:
        # Quiet first: nothing of the DAG runs 80 s before its next run (its runs take seconds).
        while time.time() < due - LEAD - 15:
            await poll()
            await asyncio.sleep(1)
        before = await poll()
        # Through the run, until its tasks are done and the decision is back to normal.
        while time.time() < due + LEAD - 10:
            stack.check_alive()
            await poll()
            await asyncio.sleep(1)
        first_queued, done = await run_dates(dsn, due)
        events.append((first_queued, "the run's first task queued (task_instance.queued_dttm)"))
        events.append((done, "the run's last task ended"))
        # The next pre-warm is on: pause the DAG, and it must go.
        next_due_at = due + 120
        while time.time() < next_due_at - LEAD + 10:
            await poll()
            await asyncio.sleep(1)
        during_next = answers[-1]
        await api.pause(SCHEDULED_DAG_ID)
        paused_at = time.time()
        events.append((paused_at, "DAG paused through the REST API"))
        while time.time() < paused_at + SCHEDULE_INTERVAL + 3:
            await poll()
            await asyncio.sleep(1)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        stream.call.cancel()
    events += [(at, f"StreamIsActive pushed {'active' if value else 'inactive'}") for at, value in pushes]
    print(
        f"\nAirflow {stack.version}, pre-warm lead {LEAD} s, {SCHEDULED_TASKS} tasks a run, concurrency {CONCURRENCY}:"
    )
    print(timeline(answers, events, due))

    assert (before.workers, before.active) == (0, False), before
    warm = [a for a in answers if before.at < a.at < first_queued and a.workers >= PREDICTED_WORKERS and a.active]
    assert warm, "no pre-warm before the run's first task"
    lead = first_queued - warm[0].at
    print(f"pre-warm asked for {warm[0].workers} workers {lead:.1f} s before the run's first task was queued")
    assert lead >= 40, lead
    pushed = [at for at, value in pushes if value and before.at < at < first_queued]
    assert pushed, pushes
    assert first_queued - pushed[0] >= 40, (pushed, first_queued)
    # Back to the normal decision after the run, before the next pre-warm.
    between = [a for a in answers if done + 2 < a.at < next_due_at - LEAD - 1]
    assert between, "no answer between the run's end and the next pre-warm"
    assert all((a.workers, a.active) == (0, False) for a in between), between
    assert (during_next.workers, during_next.active) == (PREDICTED_WORKERS, True), during_next
    last = answers[-1]
    assert (last.workers, last.active) == (0, False), f"the pre-warm outlived the pause: {last}"


async def next_due(cache: PrewarmCache, stack: AirflowStack) -> float:
    """The DAG's next due time (Unix) at least LEAD + 20 s away, from the scaler's own schedule."""
    while True:
        stack.check_alive()
        schedule = await cache.refresh()
        for run in schedule.due:
            if run.dag_id == SCHEDULED_DAG_ID and run.due_epoch - time.time() > LEAD + 20:
                return run.due_epoch
        await asyncio.sleep(SCHEDULE_INTERVAL)


async def watch(stream: ActivityStream, pushes: list[tuple[float, bool]]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            active = await stream.next()
            pushes.append((time.time(), active))  # when it arrived (time.time() first would be when we began to wait)


async def run_dates(dsn: str, due: float) -> tuple[float, float]:
    """(first queued, last ended) of the task instances of the scheduled run created at or after `due`."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            """SELECT extract(epoch FROM min(ti.queued_dttm))::float8 AS queued,
                      extract(epoch FROM max(ti.end_date))::float8 AS ended
               FROM dag_run r JOIN task_instance ti ON ti.dag_id = r.dag_id AND ti.run_id = r.run_id
               WHERE r.dag_id = $1 AND r.run_type = 'scheduled' AND r.queued_at >= $2""",
            SCHEDULED_DAG_ID,
            datetime.datetime.fromtimestamp(due - 5, datetime.UTC),
        )
    finally:
        await connection.close()
    assert row is not None
    assert row["queued"] is not None, "the scheduled run never queued a task"
    return row["queued"], row["ended"]


def timeline(answers: list[Answer], events: list[tuple[float, str]], due: float) -> str:
    rows = [(a.at, f"{a.at - due:+7.1f}  workers {a.workers}  active {a.active}") for a in answers]
    rows += [(at, f"{at - due:+7.1f}  * {text}") for at, text in events]
    return "\n".join(text for at, text in sorted(rows) if at >= due - LEAD - 30)
