"""Benchmark 4b: pre-warm's two reads on the big database of section 4, with 2,000 DAGs and their run history.

The schedule read and the history read, as the scaler sends them, timed on one
warm connection; then the real `serve` process with 1,000 pre-warming
ScaledObjects in KEDA's pattern, counting how many of each read PostgreSQL ran
(pg_stat_statements): at most one per database per interval, whatever the
number of ScaledObjects.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import grpc

from bench.common import Database, percentile, serve
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.adapters.databases.postgres import INITIAL_DEMAND_QUERY, SCHEDULE_QUERY
from scaler.rules.prewarm import PrewarmSettings, horizon
from scaler.rules.schedule import DagSchema, chunks

SCHEMA = DagSchema(airflow3=True, has_executor=True)  # the bench's database is Airflow 3's
SETTINGS = PrewarmSettings()
DAGS = 2000

# 2,000 DAGs: half hourly, 40% daily, 10% every 15 minutes; their next runs spread over the period;
# 10% paused, 5% stale (removed from their bundle).
DAG_ROWS = """INSERT INTO dag (dag_id, is_paused, is_stale, bundle_name, timetable_type, partition_mapper_info,
                 max_active_tasks, max_consecutive_failed_dag_runs, has_task_concurrency_limits,
                 next_dagrun_create_after)
SELECT 'dag_' || i, i % 10 = 0, i % 20 = 1, 'dags', 'cron', '{}', 16, 0, false,
       now() + make_interval(
           secs => (i * 7919) % (CASE WHEN i % 10 < 5 THEN 3600 WHEN i % 10 < 9 THEN 86400 ELSE 900 END)
       )
FROM generate_series(0, $1 - 1) AS i"""
# 30 days of scheduled runs (and a manual run a day) of each DAG, at its period.
RUN_ROWS = """INSERT INTO dag_run (dag_id, run_id, run_type, state, queued_at, start_date, end_date, logical_date,
                     run_after, clear_number, span_status)
SELECT d.dag_id, r.run_type || '__' || r.at, r.run_type, 'success', r.at, r.at, r.at + interval '5 minutes', r.at,
       r.at, 0, 'ended'
FROM dag AS d
CROSS JOIN LATERAL (
    SELECT 'scheduled' AS run_type, d.next_dagrun_create_after - make_interval(secs => k * p.period) AS at
    FROM (SELECT CASE WHEN substr(d.dag_id, 5)::int % 10 < 5 THEN 3600 WHEN substr(d.dag_id, 5)::int % 10 < 9
                      THEN 86400 ELSE 900 END AS period) AS p,
         generate_series(1, (30 * 86400) / p.period) AS k
    UNION ALL
    SELECT 'manual', d.next_dagrun_create_after - make_interval(days => k) + interval '17 minutes'
    FROM generate_series(1, 30) AS k
) AS r"""
# The task instances of each DAG's last 6 scheduled runs: 5-40 tasks queued in the first half minute, a few later.
TASK_ROWS = """INSERT INTO task_instance (id, dag_id, task_id, run_id, try_number, pool, pool_slots, state, queue,
                           executor, queued_dttm, start_date, end_date)
SELECT gen_random_uuid(), r.dag_id, 'task_' || t, r.run_id, 1, 'default_pool', 1, 'success',
       (ARRAY['default', 'default', 'ml', 'etl'])[1 + t % 4], NULL,
       r.start_date + make_interval(
           secs => CASE WHEN t < 5 + substr(r.dag_id, 5)::int % 36 THEN t % 30 ELSE 300 + t END
       ),
       r.start_date + make_interval(secs => 40 + t), r.start_date + make_interval(secs => 100 + t)
FROM (SELECT dag_id, run_id, start_date, row_number() OVER (PARTITION BY dag_id ORDER BY logical_date DESC) AS n
      FROM dag_run WHERE run_type = 'scheduled') AS r
CROSS JOIN generate_series(0, 44) AS t
WHERE r.n <= 6"""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def _timed(connection: object, query: str, args: tuple[object, ...], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await connection.fetch(query, *args)  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - started)
    return samples


async def _reads(database: Database, marker: str) -> int:
    connection = await database.connect()
    try:
        value = await connection.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname = current_database() AND s.query LIKE '%airflow-keda-scaler {marker}%'"
        )
    finally:
        await connection.close()
    return int(value)


async def _keda_pattern(address: str, scaled_objects: int, seconds: float) -> int:
    """Each ScaledObject polls (GetMetrics, IsActive) every 10 s, spread over the period; returns the calls."""
    calls = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ExternalScalerStub(channel)

        async def one(index: int) -> None:
            nonlocal calls
            ref = pb.ScaledObjectRef(
                name=f"workers-{index}",
                namespace="airflow",
                scalerMetadata={"database": "airflow", "queues": "default", "prewarm": "true"},
            )
            await asyncio.sleep(10 * index / scaled_objects)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="x"), timeout=3)
                await stub.IsActive(ref, timeout=3)
                calls += 2
                await asyncio.sleep(10)

        await asyncio.gather(*(one(i) for i in range(scaled_objects)))
    return calls


async def run(database: Database, dags: int, runs: int, scaled_objects: int, seconds: float) -> str:
    connection = await database.connect()
    try:
        started = time.monotonic()
        await connection.execute(DAG_ROWS, dags)
        await connection.execute(RUN_ROWS)
        await connection.execute(TASK_ROWS)
        for table in ("dag", "dag_run", "task_instance"):
            await connection.execute(f"VACUUM ANALYZE {table}")
        loaded = time.monotonic() - started
        counts = {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("dag", "dag_run", "task_instance")
        }
        print(f"  pre-warm: {counts} loaded in {loaded:.0f}s", flush=True)
        ahead = horizon(SETTINGS)
        schedule_query = SCHEDULE_QUERY.format(live=SCHEMA.live)
        schedule_args = (float(SETTINGS.grace), float(ahead))
        due = [row["dag_id"] for row in await connection.fetch(schedule_query, *schedule_args)]
        history_query = INITIAL_DEMAND_QUERY.format(executor=SCHEMA.executor, run_date=SCHEMA.run_date)
        # The history read is a statement per DAGS_PER_STATEMENT due DAGs: each statement timed, and the whole.
        statements = [(list(chunk), SETTINGS.runs, float(SETTINGS.window)) for chunk in chunks(due)]
        history_args = statements[0]
        await _timed(connection, schedule_query, schedule_args, 5)  # warm
        for args in statements:
            await _timed(connection, history_query, args, 1)
        schedule = await _timed(connection, schedule_query, schedule_args, runs)
        history: list[float] = []
        whole: list[float] = []
        for _ in range(max(5, runs // 20)):
            started_read = time.perf_counter()
            for args in statements:
                history += await _timed(connection, history_query, args, 1)
            whole.append(time.perf_counter() - started_read)
        explain = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) "
        schedule_plan = "\n".join(r[0] for r in await connection.fetch(explain + schedule_query, *schedule_args))
        history_plan = "\n".join(r[0] for r in await connection.fetch(explain + history_query, *history_args))
    finally:
        await connection.close()
    print(
        f"  schedule read p99 {percentile(schedule, 99) * 1000:.2f} ms; history statement p99 "
        f"{percentile(history, 99) * 1000:.2f} ms, the whole read ({len(due)} DAGs) p99 "
        f"{percentile(whole, 99) * 1000:.1f} ms",
        flush=True,
    )
    # The shared reads under load: the real serve process, ScaledObjects that all pre-warm.
    before = {marker: await _reads(database, marker) for marker in ("schedule", "run history")}
    async with serve({"airflow": database.dsn}) as scaler:
        calls = await _keda_pattern(scaler.address, scaled_objects, seconds)
    made = {marker: await _reads(database, marker) - count for marker, count in before.items()}
    allowed_schedule = math.ceil(seconds / SETTINGS.schedule_interval) + 1
    # A history read is a statement per DAGS_PER_STATEMENT due DAGs.
    allowed_history = (math.ceil(seconds / SETTINGS.history_interval) + 1) * len(statements)
    print(f"  {scaled_objects} pre-warming ScaledObjects, {calls} calls in {seconds:g}s: reads {made}", flush=True)
    checks = [
        ("schedule read p99 < 50 ms", percentile(schedule, 99) < 0.050, _ms(percentile(schedule, 99))),
        ("history read p99 < 50 ms, each statement", percentile(history, 99) < 0.050, _ms(percentile(history, 99))),
        (
            f"at most one schedule read per {SETTINGS.schedule_interval:g} s",
            made["schedule"] <= allowed_schedule,
            f"{made['schedule']} in {seconds:g} s",
        ),
        (
            f"at most one history read per {SETTINGS.history_interval:g} s",
            made["run history"] <= allowed_history,
            f"{made['run history']} statements in {seconds:g} s, {len(statements)} a read",
        ),
    ]
    return "\n".join(
        [
            "## 4b. Pre-warm's reads on a big Airflow database",
            "",
            f"The database of section 4, plus Airflow 3's real `dag` and `dag_run` tables holding {counts['dag']:,} "
            f"DAGs (half hourly, 40% daily, 10% every 15 minutes; 10% paused, 5% stale) and {counts['dag_run']:,} "
            "runs (30 days of scheduled runs and a manual run a day each), and task instances for each DAG's last "
            f"six scheduled runs (task_instance now {counts['task_instance']:,} rows); loaded in {loaded:.0f} s. "
            f"Each read as the scaler sends it, with the default settings (look ahead {ahead} s): the schedule "
            f"{runs} times; the history of the {len(due)} DAGs it lists, a statement per {len(statements[0][0])} DAGs "
            f"({len(statements)} statements), {len(whole)} times; on one warm connection.",
            "",
            "| read | p50 | p99 | max |",
            "| --- | ---: | ---: | ---: |",
            f"| schedule (due DAGs) | {_ms(percentile(schedule, 50))} | {_ms(percentile(schedule, 99))} | "
            f"{_ms(max(schedule))} |",
            f"| history, one statement (last {SETTINGS.runs} scheduled runs' initial demand of up to "
            f"{len(statements[0][0])} DAGs) | {_ms(percentile(history, 50))} | {_ms(percentile(history, 99))} | "
            f"{_ms(max(history))} |",
            f"| history, the whole read ({len(due)} DAGs, every {SETTINGS.history_interval:g} s) | "
            f"{_ms(percentile(whole, 50))} | {_ms(percentile(whole, 99))} | {_ms(max(whole))} |",
            "",
            f"Then the real `serve` process with {scaled_objects} ScaledObjects that all pre-warm, each polling "
            f"(GetMetrics and IsActive) every 10 s for {seconds:g} s ({calls} calls): PostgreSQL ran "
            f"{made['schedule']} schedule reads and {made['run history']} history statements "
            f"({len(statements)} a read) (`pg_stat_statements`).",
            "",
            "Targets:",
            "",
            *(f"- {what}: {'met' if ok else '**missed**'} ({figure})." for what, ok, figure in checks),
            "",
            "Schedule plan:",
            "",
            "```",
            _indexes_only(schedule_plan),
            "```",
            "",
            "History plan:",
            "",
            "```",
            _indexes_only(history_plan),
            "```",
        ]
    )


def _indexes_only(plan: str) -> str:
    """The plan's lines without the per-run figures that differ between runs (kept short for the doc)."""
    return "\n".join(line for line in plan.splitlines() if not re.match(r"\s*(Planning|Execution) Time", line))
