"""Pre-warm: workers before scheduled DAG runs, from the real dag/dag_run/task_instance tables of each release."""

from __future__ import annotations

import asyncio
import logging

import pytest

from scaler._proto import externalscaler_pb2 as pb
from scaler.fixtures.airflow_schema import OLDEST, insert_rows, insert_task_instances
from scaler.rules.database_urls import parse_url
from scaler.rules.decision import Prewarm, PrewarmedRun, decide, explain
from scaler.rules.prewarm import PastRun, PrewarmSettings, Schedule, actual_demand, ended, predicted_demand, prewarm_for
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import parse_metadata
from scaler.service.metrics import NAMESPACE
from scaler.service.prewarm_cache import PrewarmCache
from tests.conftest import (
    AirflowDatabase,
    PostgresServer,
    Running,
    StartScaler,
    create_airflow_database,
    drop_airflow_database,
    fast_settings,
)
from tests.support.prewarm_history import PastRunSpec, ScheduledDag, add_dags
from tests.support.scrape import scrape
from tests.test_snapshot import FakeClock

N = NAMESPACE
NO_DEMAND = Snapshot(rows=(), has_executor_column=True, taken_at=0.0)


def spec(**metadata: str):  # type: ignore[no-untyped-def]
    return parse_metadata({"database": "airflow", "prewarm": "true", **metadata})


def schedule(*due: tuple[str, float], runs: dict[str, list[int]] | None = None, grace: float = 60.0) -> Schedule:
    from scaler.rules.prewarm import DueRun

    history = {
        dag: tuple(PastRun(float(-i), (("default", None, n),)) for i, n in enumerate(sizes))
        for dag, sizes in (runs or {}).items()
    }
    return Schedule(
        due=tuple(DueRun(dag, 1e9 + at, at) for dag, at in sorted(due, key=lambda d: d[1])),
        runs=history,
        grace=grace,
        taken_at=0.0,
    )


# --- the pure rules -------------------------------------------------------------------------------------------


def test_prediction_is_the_lower_median_of_the_runs_in_scope() -> None:
    runs = [PastRun(0.0, (("default", None, n), ("ml", None, 500))) for n in (40, 36, 0, 44, 41)]
    assert predicted_demand(spec(queues="default"), runs) == 40  # one failed run (0) does not move it
    assert predicted_demand(spec(queues="ml"), runs) == 500
    assert predicted_demand(spec(excludeQueues="ml"), runs) == 40
    assert predicted_demand(spec(), runs) == 540
    assert predicted_demand(spec(), []) == 0  # no history, no pre-warm
    # A DAG that changed shape: the median follows once three of five runs have the new size.
    changed = [PastRun(0.0, (("default", None, n),)) for n in (80, 80, 80, 40, 40)]
    assert predicted_demand(spec(), changed) == 80


@pytest.mark.parametrize(
    ("now", "workers"),
    [
        (-121.0, None),  # before the lead time
        (-120.0, 3),  # the lead time starts: 40 tasks / 16 -> 3 workers
        (-1.0, 3),
        (30.0, 3),  # overdue, within the grace: the run may still come
        (60.0, None),  # lead time plus grace passed: expired
    ],
)
def test_a_prewarm_lasts_from_the_lead_time_to_the_grace(now: float, workers: int | None) -> None:
    warm = prewarm_for(spec(), schedule(("etl", 0.0), runs={"etl": [40, 40, 40]}), now)
    assert (warm.workers(0, 16) if warm else None) == workers


def test_prewarms_add_up_are_capped_and_need_history() -> None:
    due = schedule(("a", 10.0), ("b", 20.0), ("new", 5.0), runs={"a": [40], "b": [100]})
    warm = prewarm_for(spec(), due, 0.0)
    assert warm is not None
    assert [run.dag_id for run in warm.runs] == ["a", "b"]  # "new" has no history
    assert (warm.predicted, warm.ahead, warm.workers(0, 16)) == (140, 140, 9)
    capped = prewarm_for(spec(prewarmMaxWorkers="4"), due, 0.0)
    assert capped is not None
    assert (capped.workers(0, 16), capped.workers(160, 16)) == (4, 14)  # at most 4 more than demand asks
    assert prewarm_for(spec(prewarm="false"), due, 0.0) is None
    assert prewarm_for(spec(prewarmLeadSeconds="15"), due, 0.0).predicted == 40  # type: ignore[union-attr]


def test_decision_adds_runs_not_due_yet_holds_due_ones_and_is_active() -> None:
    trigger = spec()
    warm = Prewarm((PrewarmedRun("etl_hourly", 1e9, 95, 40),), 40, 40, 10)
    idle = decide(trigger, NO_DEMAND, prewarm=warm)
    assert (idle.workers, idle.active, idle.prewarm_workers) == (3, True, 3)
    assert explain(trigger, idle) == (
        "demand 0 (running 0 + queued 0) / concurrency 16 -> 0 workers; "
        "pre-warm for DAG etl_hourly due in 95 s: predicted 40 tasks -> 3 workers; "
        "active: 0 <= activationThreshold 0, pre-warm on"
    )
    busy = Snapshot((SnapshotRow("queued", "default", None, 80),), True, 0.0)
    # Not due yet: its 40 tasks are not among the 80 queued, so 120 tasks need 8 workers.
    on_top = decide(trigger, busy, prewarm=warm)
    assert on_top.workers == 8
    assert "predicted 40 tasks on top of demand 80 -> 8 workers" in explain(trigger, on_top)
    # Due (the run may be there, its tasks among the 80): held at 3, below demand's 5, so 5.
    due = Prewarm((PrewarmedRun("etl_hourly", 1e9, -5, 40),), 40, 0, 10)
    assert decide(trigger, busy, prewarm=due).workers == 5
    assert decide(trigger, NO_DEMAND).active is False


def test_why_a_prewarm_ended() -> None:
    run = PrewarmedRun("etl", 1e9, 0, 40)
    assert ended(run, schedule(("etl", 0.0))) == "expired"  # still due: the run never came
    later = Schedule(due=schedule(("etl", 3600.0)).due, runs={}, grace=60.0, taken_at=0.0)
    assert later.due[0].due_epoch > run.due_epoch
    assert ended(run, later) == "arrived"  # the scheduler created it and moved on
    assert ended(run, schedule()) == "cancelled"  # paused or removed
    history = Schedule(due=(), runs={"etl": (PastRun(1e9 + 2, (("default", None, 37),)),)}, grace=60.0, taken_at=0)
    assert actual_demand(spec(), run, history) == 37
    assert actual_demand(spec(), run, schedule()) is None


# --- the reads, on every release's real tables -------------------------------------------------------------------

DAGS = [
    ScheduledDag("etl_hourly", 100.0, [PastRunSpec(40), PastRunSpec(44), PastRunSpec(0), PastRunSpec(36)]),
    ScheduledDag("ml_daily", 300.0, [PastRunSpec(8, queue="ml")] * 3),
    ScheduledDag("paused", 50.0, [PastRunSpec(20)], paused=True),
    ScheduledDag("stale", 50.0, [PastRunSpec(20)], stale=True),
    ScheduledDag("far_away", 90_000.0, [PastRunSpec(20)]),
    ScheduledDag("overdue", -30.0, [PastRunSpec(12)] * 7),
    ScheduledDag("manual_only", 60.0, [PastRunSpec(30, run_type="manual")]),
]


async def add_postgres_dags(database: AirflowDatabase) -> None:
    await add_dags(
        DAGS,
        airflow3=database.version.startswith("3."),
        insert_rows=lambda table, rows: insert_rows(database.connection, table, rows),
        insert_tasks=lambda tasks: insert_task_instances(database.connection, tasks),
    )


def check_schedule(read: Schedule) -> None:
    due = {run.dag_id: run.due_at - read.taken_at for run in read.due}
    # Paused, stale (3.x) or inactive (2.x), and far-off DAGs are not in the schedule.
    assert set(due) == {"etl_hourly", "ml_daily", "overdue", "manual_only"}
    assert due["etl_hourly"] == pytest.approx(100, abs=10)
    assert due["overdue"] == pytest.approx(-30, abs=10)
    sizes = {dag: [run_tasks(run) for run in runs] for dag, runs in read.runs.items()}
    # Newest first; in-window tasks only; the last --prewarm-runs (5) of 7; manual runs are no history.
    assert sizes["etl_hourly"] == [40, 44, 0, 36]
    assert sizes["ml_daily"] == [8, 8, 8]
    assert sizes["overdue"] == [12] * 5
    assert "manual_only" not in sizes
    assert prewarm_for(spec(queues="default"), read, read.taken_at) is not None


def run_tasks(run: PastRun) -> int:
    return sum(count for _, _, count in run.tasks)


async def test_the_schedule_and_history_reads_on_every_release(airflow_db: AirflowDatabase) -> None:
    await add_postgres_dags(airflow_db)
    await check_cache(airflow_db.dsn)


async def test_the_reads_on_the_oldest_release(postgres: PostgresServer) -> None:
    database = await create_airflow_database(postgres, OLDEST)
    try:
        await add_postgres_dags(database)
        await check_cache(database.dsn)
    finally:
        await drop_airflow_database(postgres, database)


async def check_cache(url: str) -> None:
    from scaler.adapters.databases.pool import PoolSettings
    from scaler.service.database_caches import reader_for

    reader = reader_for(parse_url(url), label="airflow", settings=PoolSettings())
    clock = FakeClock()
    cache = PrewarmCache(reader, settings=PrewarmSettings(), clock=clock)
    try:
        check_schedule(await cache.refresh())
        assert dict(cache.reads) == {"schedule": 1, "history": 1}
        clock.now += 20
        await cache.refresh()  # the schedule again, the history only after --prewarm-history-interval
        assert dict(cache.reads) == {"schedule": 2, "history": 1}
    finally:
        await cache.close()
        await reader.close()


# --- through KEDA's calls ---------------------------------------------------------------------------------------


async def prewarming_scaler(
    database: AirflowDatabase, start_scaler: StartScaler, *, schedule_interval: float = 1e6, **registry: float
) -> tuple[Running, FakeClock, PrewarmCache]:
    """The scaler on `database` (DAGS in it), on a fake clock, and its pre-warm cache for the database."""
    await add_postgres_dags(database)
    clock = FakeClock()
    prewarm = PrewarmSettings(schedule_interval=schedule_interval)
    settings = fast_settings({"airflow": parse_url(database.dsn)}, prewarm=prewarm, **registry)
    scaler = await start_scaler(settings, clock=clock)
    return scaler, clock, scaler.server.databases.prewarm_for(spec().database)


async def test_keda_gets_the_prewarm_before_the_run_and_nothing_without_prewarm(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler, clock, cache = await prewarming_scaler(airflow3_db, start_scaler)
    metadata = {"database": "airflow", "queues": "default", "prewarm": "true"}
    # The first call finds no schedule yet and never waits for one: the normal decision. (Only that call:
    # the read it starts in the background may be done by the next one.)
    ref = scaler.keda.ref(metadata)
    first = await scaler.keda.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="m"), timeout=3)
    assert first.metricValues[0].metricValue == 0
    await cache.settled()  # the read that call started, in the background
    # etl_hourly is due in ~100 s (lower median of 40, 44, 0, 36: 36 tasks), overdue is within its grace (12):
    # 48 tasks / 16 -> 3 workers.
    warm = await scaler.keda.poll(metadata)
    assert (warm.value, warm.active) == (3, True)
    assert (await scaler.keda.poll({**metadata, "prewarmLeadSeconds": "30"}, name="b")).value == 1  # overdue's 12
    assert (await scaler.keda.poll({**metadata, "prewarm": "false"}, name="c")).active is False
    scrape_ = await scrape(scaler.server.http.port)
    assert scrape_.value(f"{N}_prewarm_workers", namespace="airflow", scaled_object="celery-worker") == 3
    assert scrape_.value(f"{N}_prewarm_query_duration_seconds_count", database="airflow", read="schedule") == 1
    # Past every due time plus the grace, and the runs never came: the pre-warm ends, counted as expired.
    clock.now += 400
    after = await scaler.keda.poll(metadata)
    assert (after.value, after.active) == (0, False)
    scrape_ = await scrape(scaler.server.http.port)
    labels = {"namespace": "airflow", "scaled_object": "celery-worker"}
    assert scrape_.value(f"{N}_prewarm_runs_total", outcome="expired", **labels) == 2


async def test_a_paused_dag_stops_its_prewarm_at_the_next_schedule_read(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler, _, cache = await prewarming_scaler(airflow3_db, start_scaler)
    metadata = {"database": "airflow", "queues": "default", "prewarm": "true", "prewarmLeadSeconds": "300"}
    await scaler.keda.poll(metadata)
    await cache.settled()
    assert (await scaler.keda.poll(metadata)).value == 3
    await airflow3_db.connection.execute("UPDATE dag SET is_paused = true WHERE dag_id IN ('etl_hourly', 'overdue')")
    await cache.refresh()
    assert (await scaler.keda.poll(metadata)).active is False
    scrape_ = await scrape(scaler.server.http.port)
    labels = {"namespace": "airflow", "scaled_object": "celery-worker"}
    assert scrape_.value(f"{N}_prewarm_runs_total", outcome="cancelled", **labels) == 2


async def test_a_failing_prewarm_read_never_fails_the_decision(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler, caplog: pytest.LogCaptureFixture
) -> None:
    await airflow3_db.connection.execute("DROP TABLE dag_run")
    await airflow3_db.add_many(20, "queued")
    clock = FakeClock()
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)}, prewarm=PrewarmSettings(schedule_interval=1))
    scaler = await start_scaler(settings, clock=clock)
    metadata = {"database": "airflow", "prewarm": "true"}
    cache = scaler.server.databases.prewarm_for(spec().database)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await cache.refresh()
            clock.now += 2
            poll = await scaler.keda.poll(metadata)
            assert (poll.value, poll.active) == (2, True)  # the demand decision, untouched
    failing = [r for r in caplog.records if "pre-warm schedule read of airflow failing" in r.getMessage()]
    assert len(failing) == 1, "logged once, not per read"
    assert "no dag or dag_run table" in failing[0].getMessage()
    scrape_ = await scrape(scaler.server.http.port)
    assert (scrape_.value(f"{N}_prewarm_errors_total", database="airflow", read="schedule", kind="no_table") or 0) >= 3


async def test_one_schedule_read_per_interval_whatever_the_scaled_objects(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler, clock, cache = await prewarming_scaler(airflow3_db, start_scaler, schedule_interval=15)
    for round_ in range(3):
        polls = [scaler.keda.poll({"database": "airflow", "prewarm": "true"}, name=f"so{i}") for i in range(50)]
        await asyncio.gather(*polls)
        await cache.settled()  # the one background read this round started
        assert cache.reads["schedule"] == round_ + 1
        clock.now += 15


async def test_a_stream_is_pushed_true_when_a_prewarm_starts(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler, clock, cache = await prewarming_scaler(airflow3_db, start_scaler, watch_interval=0.05)
    await cache.refresh()  # at 1000 on the scaler's clock: etl_hourly due at about 1100, overdue at about 970
    clock.now = 1031  # overdue's grace has passed
    metadata = {"database": "airflow", "queues": "default", "prewarm": "true", "prewarmLeadSeconds": "10"}
    stream = scaler.keda.stream(metadata)
    assert await asyncio.wait_for(stream.next(), 30) is False
    clock.now = 1095  # etl_hourly's pre-warm starts: a moment in time, no database change
    assert await asyncio.wait_for(stream.next(), 30) is True
    clock.now = 1161  # its due time plus the grace passed, and the run never came
    assert await asyncio.wait_for(stream.next(), 30) is False
    stream.cancel()
