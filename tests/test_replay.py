"""`airflow-keda-scaler replay` against a real PostgreSQL with Airflow's own task_instance tables.

The figures are checked against the model run directly on the arrivals the
rows stand for, so what is tested is the path from the database to the model
and the report: the window, the scope, the dates, the retries, the edge cases.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.databases.postgres import PostgresReader
from scaler.commands.replay.command import Progress
from scaler.commands.replay.policies import OURS_60S, OURS_DRAIN, policies_for, prewarm_policy, replay_policies
from scaler.commands.replay.trace import TraceBuilder, Window
from scaler.fixtures.airflow_schema import TaskInstance, insert_rows
from scaler.rules.database_urls import parse_url
from scaler.rules.history import HistoryRow
from scaler.rules.trigger_metadata import parse_metadata
from scaler.simulation.control import Replay
from scaler.simulation.settings import CHART, OURS, ClusterSettings, safe_chart
from scaler.simulation.workers import Arrival
from tests.conftest import AirflowDatabase, closed_port_dsn, with_password
from tests.test_check import command

T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
FAR_FUTURE = datetime.datetime(2037, 12, 31, tzinfo=datetime.UTC)  # MySQL TIMESTAMP ends in 2038
WINDOW = ("--from", "2026-11-30T12:00", "--to", "2026-11-30T16:00")


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return command("replay", *args, env=env, timeout=120)


def ran(name: str, queued: float, started: float, ended: float | None, **fields: object) -> TaskInstance:
    state = fields.pop("state", "success" if ended is not None else "running")
    return TaskInstance(
        name,
        state,  # type: ignore[arg-type]
        queued_at=at(queued),
        started_at=at(started),
        ended_at=at(ended) if ended is not None else None,
        hostname=fields.pop("hostname", "airflow-worker-0"),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


# A burst of 40 short tasks, 6 long ones that come once workers are up, and the edge cases.
HISTORY = (
    [ran(f"burst_{i}", 60, 75 + i, 75 + i + 300, max_tries=1) for i in range(40)]
    + [ran(f"long_{i}", 200, 201, 201 + 5400, max_tries=0) for i in range(6)]
    + [
        ran("other_queue", 100, 101, 200, queue="ml"),
        ran("still_running", 3000, 3010, None),
        ran("ended_before_start", 400, 410, 405),
        ran("failed", 500, 505, 600, state="failed", try_number=2, max_tries=1),
        TaskInstance("never_started", "queued", queued_at=at(14000)),
        TaskInstance("ends_in_2037", "success", queued_at=at(450), started_at=at(460), ended_at=FAR_FUTURE),
        TaskInstance("skipped", "skipped", started_at=at(700), ended_at=at(700)),
        ran("before_the_window", -600, -590, 100),
        ran("after_the_window", 20000, 20001, 20100),
    ]
)


def expected_arrivals() -> list[Arrival]:
    """What the rows in scope stand for, written out: queued time, duration of the try, retries."""
    window_end = 4 * 3600
    arrivals = [Arrival(60, 300, 1) for _ in range(40)]
    arrivals += [Arrival(200, 5400, 0) for _ in range(6)]
    arrivals += [Arrival(3000, window_end - 3010, None)]  # still running: up to the window's end
    arrivals += [Arrival(400, 0, None)]  # an end before its start: clamped to no time
    arrivals += [Arrival(500, 95, 1)]
    arrivals += [Arrival(450, window_end + 86400 - 460, None)]  # a broken end date: up to a day after the window
    return sorted(arrivals, key=lambda a: a.at)


async def test_replays_the_window_in_scope_as_the_model_would(airflow_db: AirflowDatabase) -> None:
    await airflow_db.add(*HISTORY)
    result = replay(
        *WINDOW, "--queues", "default", "--format", "json", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow_db.dsn}
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tasks"] == 50
    settings = ClusterSettings(retries=0)  # a row's own max_tries, else Airflow's default of none
    # No scheduled run in this history: pre-warm has nothing to do and replays as ours.
    longest = max(arrival.duration for arrival in expected_arrivals())
    policies = [CHART, safe_chart(longest, settings), OURS, OURS_60S, OURS_DRAIN, prewarm_policy(120, 10)]
    expected = [Replay(p, settings, expected_arrivals(), seed=1).run(until=4 * 3600) for p in policies]
    assert [p["policy"] for p in document["policies"]] == [p.name for p in policies]
    for got, want in zip(document["policies"], expected, strict=True):
        assert got["tasks_killed"] == want.killed
        assert got["worker_hours"] == round(want.worker_seconds / 3600, 3)
        assert got["task_hours_lost"] == round(want.lost_seconds / 3600, 3)
        assert got["queued_p95_s"] == want.queued_p95
    chart, safe, ours, short, drained, warm = document["policies"]
    # The chart made safe: a grace period as long as the window's longest task (the broken end date's).
    assert (chart["grace_s"], safe["grace_s"]) == (600, longest)
    assert safe["tasks_killed"] == 0
    assert {key: warm[key] for key in ours if key != "policy"} == {key: ours[key] for key in ours if key != "policy"}
    assert chart["tasks_killed"] > 0  # the long tasks' workers go with the burst's
    assert ours["tasks_killed"] == short["tasks_killed"] == drained["tasks_killed"] == 0
    assert short["worker_hours"] <= ours["worker_hours"]
    assert drained["worker_hours"] <= ours["worker_hours"]
    observed = document["observed"]
    assert observed["out_of_scope"] == 1
    assert observed["never_started"] == 1
    assert observed["still_running_at_end"] == 1
    assert observed["bad_dates"] == 2
    assert observed["failed_or_retried"] == 1
    # The waits from queued to start: the burst's 15..54 s, the long tasks' 1 s, the others' 10, 10 and 5 s.
    waits = sorted([*range(15, 55), *[1] * 6, 10, 10, 10, 5])
    assert observed["queued_p95_s"] == waits[math.ceil(0.95 * len(waits)) - 1]
    assert observed["queued_p50_s"] == waits[math.ceil(0.5 * len(waits)) - 1]
    assert document["window"] == {"from": T0.isoformat(), "to": at(4 * 3600).isoformat()}


async def test_prints_a_table_and_what_it_left_out(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.add(*HISTORY)
    result = replay(*WINDOW, "--queues", "default", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Replayed 50 task instances of ")
    assert "2026-11-30 12:00 to 2026-11-30 16:00 UTC (queues default)" in lines[0]
    table = [line for line in lines if line.startswith(("policy", "chart formula", "airflow-keda-scaler", "observed"))]
    assert [line.split("  ")[0] for line in table] == [
        "policy",
        "chart formula",
        # As long as the longest task: the one whose broken end date is replayed up to a day after the window.
        f"chart formula, no kills (grace {max(arrival.duration for arrival in expected_arrivals()):,} s)",
        "airflow-keda-scaler",
        "airflow-keda-scaler, 60 s window",
        "airflow-keda-scaler + drain",
        "airflow-keda-scaler + pre-warm (120 s)",
        "observed (Airflow's own record)",
    ]
    assert "  1 task instances of other queues or executors left out" in lines
    assert "  1 still running at the window's end (replayed as running up to it)" in lines
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


async def test_an_empty_window_says_so(airflow3_db: AirflowDatabase) -> None:
    result = replay("--since", "1h", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    assert "Replayed 0 task instances" in result.stdout
    assert "no task instance in scope ran in this window: nothing to replay" in result.stdout


async def test_executor_and_queue_filters_scope_the_replay(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.add(*HISTORY[:5], ran("local", 60, 61, 100, executor="LocalExecutor"))
    result = replay(
        *WINDOW,
        "--exclude-executors",
        "airflow.executors.local_executor.LocalExecutor",
        "--exclude-queues",
        "ml",
        "--format",
        "json",
        env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn},
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tasks"] == 5
    assert document["observed"]["out_of_scope"] == 1
    assert document["scope"] == {
        "excludeExecutors": "airflow.executors.local_executor.LocalExecutor",
        "excludeQueues": "ml",
    }


async def test_the_plot_is_written(airflow3_db: AirflowDatabase, tmp_path: Path) -> None:
    await airflow3_db.add(*HISTORY)
    plot = tmp_path / "replay.svg"
    result = replay(*WINDOW, "--plot", str(plot), env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    text = plot.read_text()
    assert text.lstrip().startswith("<?xml")
    assert "chart formula" in text  # the panels' titles are the policies
    assert f"wrote {plot}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "0d"), "must be more than 0"),
        (("--since", "7 days"), "is not a period such as 7d"),
        (("--from", "yesterday"), "is not an ISO 8601 time"),
        (("--to", "2026-11-30"), "--to needs --from"),
        (("--since", "1d", "--from", "2026-11-30"), "give --since or --from/--to, not both"),
        (("--from", "2026-11-30", "--to", "2026-11-29"), "is not before --to"),
        (("--from", "2020-01-01", "--to", "2026-01-01"), "longer than 366 days"),
        (("--kind", "DaemonSet"), "invalid choice"),
        (("--concurrency", "0"), "concurrency"),
        (("--plot", "out.pdf"), "must end in .png, .svg or .html"),
        (("--grace", "-1"), "must be 0 or more"),
        (("--plot", "/no/such/folder/out.png"), "no such folder"),
        (("--kind", "x" * 100_000), "invalid choice: 'xxxx"),  # quoted cut short, not echoed whole
        (("--since", "x" * 100_000), "(100000 characters)"),
    ],
)
def test_wrong_arguments_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = replay(*args, env={"AIRFLOW_KEDA_SCALER_CONNECTION": "postgresql://u@127.0.0.1:1/airflow"})
    assert result.returncode == 2, result
    assert message in result.stderr
    assert result.stdout == ""
    assert len(result.stderr) < 4000  # the usage and one short line, whatever the value's size


def test_nothing_to_replay_without_a_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_KEDA_SCALER_CONNECTION"}
    result = subprocess.run(
        [sys.executable, "-m", "scaler", "replay"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 2
    assert "nothing to replay" in result.stderr


async def test_an_unreachable_database_exits_1_without_the_password(airflow3_db: AirflowDatabase) -> None:
    dsn = with_password(closed_port_dsn(airflow3_db))
    result = replay("--since", "1d", env={"AIRFLOW_KEDA_SCALER_CONNECTION": dsn})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "connection refused" in result.stderr
    password = urlsplit(dsn).password
    assert password
    assert password not in result.stdout + result.stderr


async def test_a_database_without_task_instance_exits_1(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.connection.execute("ALTER TABLE task_instance RENAME TO task_instance_gone")
    result = replay("--since", "1d", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 1
    assert "no task_instance table" in result.stderr


async def test_pages_come_in_arrival_order(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.add(*HISTORY)
    reader = PostgresReader(parse_url(airflow3_db.dsn), label="test", settings=PoolSettings(max_size=1))
    pages: list[list[HistoryRow]] = []
    try:
        async for page in reader.history(T0, at(4 * 3600), page_size=7):
            pages.append(page)
    finally:
        await reader.close()
    assert [len(page) for page in pages] == [7] * 7 + [3]  # 52 rows: the window's, skipped ones left out
    arrivals = [row.queued if row.queued is not None else row.started for page in pages for row in page]
    assert arrivals == sorted(arrivals)  # type: ignore[type-var]
    assert arrivals[0] == 60.0  # seconds from the window's start
    ends = sorted(row.ended or 0 for page in pages for row in page)
    assert ends[-2:] == [201 + 5400, (FAR_FUTURE - T0).total_seconds()]  # the long tasks, and a broken date


def test_the_observed_demand_is_what_the_scaler_would_have_answered() -> None:
    """Two tasks on one worker, one on another, one queued: the busy-worker floor counts the two workers."""
    spec = parse_metadata({"database": "a", "concurrency": "16"})
    builder = TraceBuilder(spec, Window(T0, at(100)), sample_every=10)

    def row(queued: float, started: float | None, ended: float | None, host: str | None) -> HistoryRow:
        return HistoryRow(queued, started, ended, "success", "default", None, host, 0, 1)

    builder.add([row(5, 6, 50, "w-1"), row(5, 7, 60, "w-1"), row(8, 9, 70, "w-2"), row(15, None, None, None)])
    trace, observed = builder.finish()
    assert len(trace) == 3
    by_time = {s.at: (s.running, s.queued, s.workers) for s in observed.samples}
    assert by_time[0] == (0, 0, 0)
    assert by_time[10] == (3, 0, 2)  # 3 tasks need 1 worker of 16; two are busy: the floor is 2
    assert by_time[20] == (3, 1, 2)
    assert by_time[60] == (1, 1, 1)
    assert by_time[90] == (0, 1, 1)
    assert observed.never_started == 1
    assert {s.kept for s in observed.samples} == {0}  # the trigger does not drain


@pytest.mark.parametrize(
    ("kind", "kept_at_10"),
    [
        ("Deployment", 2),  # the busiest first: w-1 is full, w-2 (1 of 4) has the free slot
        ("StatefulSet", 1),  # the lowest ordinals: w-0, idle, has free slots; w-1 and w-2 are drained
    ],
)
def test_the_observed_drain_decisions_are_what_the_drain_rule_keeps(kind: str, kept_at_10: int) -> None:
    """With `drain: "true"`, each sample says how many workers drain keeps consuming, from the hosts' tasks."""
    spec = parse_metadata({"database": "a", "concurrency": "4", "drain": "true"})
    builder = TraceBuilder(spec, Window(T0, at(100)), sample_every=10, target_kind=kind)  # type: ignore[arg-type]

    def row(queued: float, started: float | None, ended: float | None, host: str | None) -> HistoryRow:
        return HistoryRow(queued, started, ended, "success", "default", None, host, 0, 1)

    builder.add(
        [row(5, 6, 50 + n, "w-1") for n in range(4)]
        + [row(8, 9, 70, "w-2")]
        + [row(15 + n, None, None, None) for n in range(6)]
    )
    _, observed = builder.finish()
    kept = {s.at: s.kept for s in observed.samples}
    assert kept[0] == 1  # nothing runs: one worker keeps a free slot
    assert kept[10] == kept_at_10
    # 6 queued beside 5 running on w-1 and w-2: 11 tasks and a free slot need 3 workers of 4 on either kind.
    assert kept[30] == 3
    assert kept[90] == 2  # 6 queued, nothing runs: 2 idle workers leave a free slot


def test_the_progress_bar_draws_on_one_line_and_clears_it() -> None:
    stream = io.StringIO()
    bar = Progress(stream)
    bar.show("reading task instances", 0.5, "500 rows")
    bar.show("reading task instances", 0.5, "500 rows")  # unchanged: not drawn again
    bar.done()
    text = stream.getvalue()
    assert text.count("\r") == 3  # drawn once, then cleared with a blank line between two returns
    assert "███████████████░░░░░░░░░░░░░░░  50% 500 rows" in text
    assert text.endswith("\r")
    Progress(None).show("nothing", 1.0, "")  # not a terminal: nothing to draw on


def test_policies_in_processes_give_what_they_give_in_one() -> None:
    """A big trace runs each policy in a process of its own (fed from a file): the figures must not change."""
    builder = TraceBuilder(parse_metadata({"database": "a", "concurrency": "4"}), Window(T0, at(3600)), sample_every=60)
    builder.add(
        [
            HistoryRow(float(start), float(start + 5), float(start + 5 + length), "success", None, None, f"w-{n}", 1, 1)
            for n, (start, length) in enumerate((i * 7 % 3000, 60 + i * 37 % 1500) for i in range(300))
        ]
    )
    trace, _ = builder.finish()
    window = Window(T0, at(3600))
    cluster = ClusterSettings(concurrency=4)
    policies = policies_for(trace, cluster)
    here = replay_policies(policies, cluster, trace, window, 60)
    apart = replay_policies(policies, cluster, trace, window, 60, processes_from=0)
    assert apart == here
    assert here[0].killed > 0  # a trace on which the policies differ


def hourly_dag(airflow3: bool) -> tuple[list[dict[str, object]], list[TaskInstance]]:
    """An hourly DAG of 48 five-minute tasks, from five hours before the window: its dag_run rows and tasks."""
    runs: list[dict[str, object]] = []
    tasks: list[TaskInstance] = []
    for hour in range(-5, 4):
        created = at(hour * 3600 + 600)
        run_id = f"scheduled__{created.isoformat()}"
        row: dict[str, object] = {
            "dag_id": "etl_hourly",
            "run_id": run_id,
            "run_type": "scheduled",
            "state": "success",
            "queued_at": created,
            "start_date": created,
            "logical_date" if airflow3 else "execution_date": created,
        }
        if airflow3:
            row["run_after"] = created
        runs.append(row)
        queued = created + datetime.timedelta(seconds=5)
        tasks += [
            TaskInstance(
                f"t{i}",
                "success",
                dag_id="etl_hourly",
                run_id=run_id,
                hostname="airflow-worker-0",
                queued_at=queued,
                started_at=queued,
                ended_at=queued + datetime.timedelta(seconds=300),
            )
            for i in range(48)
        ]
    return runs, tasks


def check_prewarm_replay(url: str) -> None:
    """Pre-warm has workers up for the hourly runs; ours starts them from zero every hour."""
    result = replay(*WINDOW, "--format", "json", env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    by_name = {policy["policy"]: policy for policy in document["policies"]}
    ours, warm = by_name[OURS.name], by_name["airflow-keda-scaler + pre-warm (120 s)"]
    assert ours["scheduled_tasks"] == warm["scheduled_tasks"] == 4 * 48  # the window's four runs
    assert ours["queued_p95_scheduled_s"] >= 60  # a pod's start, from zero, every hour
    assert warm["queued_p95_scheduled_s"] == 0
    assert warm["tasks_killed"] == 0
    text = replay(*WINDOW, env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
    assert "p95 scheduled runs" in text.stdout, text.stderr


async def test_the_prewarm_policy_replays_scheduled_runs_with_their_history(airflow_db: AirflowDatabase) -> None:
    runs, tasks = hourly_dag(airflow_db.version.startswith("3."))
    await insert_rows(airflow_db.connection, "dag_run", runs)
    await airflow_db.add(*tasks)
    check_prewarm_replay(airflow_db.dsn)


async def test_without_dag_run_the_other_policies_still_replay(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.add(*HISTORY)
    await airflow3_db.connection.execute("DROP TABLE dag_run")
    result = replay(*WINDOW, "--format", "json", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    names = [p["policy"] for p in json.loads(result.stdout)["policies"]]
    assert [names[0], *names[2:]] == [CHART.name, OURS.name, OURS_60S.name, OURS_DRAIN.name]
    assert names[1].startswith("chart formula, no kills (grace ")
    assert "note: no pre-warm policy: cannot read the scheduled runs: no dag or dag_run table" in result.stderr
