"""`airflow-keda-scaler check`: the numbers on success, one clear line on failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from subprocess import CompletedProcess

import pytest

from scaler.fixtures.airflow_schema import TaskInstance
from tests.conftest import AirflowDatabase, PostgresServer, trusts_any_password
from tests.test_prewarm import add_postgres_dags


def command(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CompletedProcess[str]:
    """`python -m scaler NAME ARGS` as a user runs it, with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "scaler", name, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def check(*args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
    return command("check", *args, env=env)


async def test_prints_demand_per_queue_and_workers(airflow_db: AirflowDatabase) -> None:
    await airflow_db.add_many(17, "running", queue="default")
    await airflow_db.add_many(16, "queued", queue="default")
    await airflow_db.add_many(3, "queued", queue="ml")
    await airflow_db.add(TaskInstance("k8s", "queued", queue="kubernetes"))
    url = airflow_db.dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
    result = check("--exclude-queues", "kubernetes", env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "default 17 16" in lines
    assert "ml 0 3" in lines
    assert "not counted (queue or executor filters): 1" in lines
    executor = "yes" if airflow_db.has_executor_column else "no"
    assert f"executor column: {executor}" in result.stdout
    explained = "demand 36 (running 17 + queued 19) / concurrency 16 -> 3 workers; active: 36 > activationThreshold 0"
    assert explained in lines


async def test_says_when_the_busy_worker_floor_raised_the_workers_as_serve_does(airflow_db: AirflowDatabase) -> None:
    # 42 tasks fit on 3 workers, but the 6 running ones are on 6 workers: scale-down must keep all 6.
    for n in range(6):
        await airflow_db.add(TaskInstance(f"busy{n}", "running", hostname=f"airflow-worker-{n}"))
    await airflow_db.add_many(36, "queued", queue="default")
    result = check(env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow_db.dsn})
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert (
        "demand 42 (running 6 + queued 36) / concurrency 16 -> 3 workers, busy-worker floor 6 (Deployment) "
        "-> 6 workers; active: 42 > activationThreshold 0"
    ) in lines


async def test_says_which_busy_workers_drain_would_keep_and_drain(airflow3_db: AirflowDatabase) -> None:
    # Four busy workers, 1 + 7 + 2 + 4 tasks, 3 queued, concurrency 8.
    for n, tasks in enumerate([1, 7, 2, 4]):
        for t in range(tasks):
            await airflow3_db.add(TaskInstance(f"w{n}_{t}", "running", hostname=f"airflow-worker-{n}"))
    await airflow3_db.add_many(3, "queued")
    result = check("--concurrency", "8", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    # A Deployment keeps the busiest (7 and 4 tasks: 14 of 16 slots with the queued) and drains the least busy;
    # a StatefulSet keeps its lowest ordinal (1 task and the 3 queued fit) and drains the top ones.
    assert (
        'with drain: "true" on a Deployment, of the busy workers: drain 2 of 4 workers (airflow-worker-0, '
        "airflow-worker-2): 2 kept consuming for queued 3 and their running tasks (concurrency 8)"
    ) in lines
    assert (
        'with drain: "true" on a StatefulSet, of the busy workers: drain 3 of 4 workers (airflow-worker-3, '
        "airflow-worker-2, airflow-worker-1): 1 kept consuming for queued 3 and their running tasks (concurrency 8)"
    ) in lines


async def test_checks_every_configured_database(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.add_many(5, "queued")
    result = check("--database", f"main={airflow3_db.dsn}", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "Airflow database main: reachable" in result.stdout
    assert "-> 3 workers" in result.stdout


def test_bad_url_is_one_line_and_exit_2() -> None:
    result = check("--connection", "mssql://airflow:hunter2@db/airflow")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unsupported URL scheme 'mssql://'" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_refused_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = check("--connection", f"postgresql://airflow:hunter2@127.0.0.1:{port}/airflow")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: Airflow database 127.0.0.1:{port}/airflow: connection refused"


async def test_wrong_password_is_one_line_and_exit_1(airflow3_db: AirflowDatabase) -> None:
    url = await airflow3_db.role_dsn("check_pw_test", "right-pw-3", login_password="wrong-pw-4")
    if await trusts_any_password(url):
        pytest.skip("this PostgreSQL trusts TCP connections, so no password can be wrong")
    result = check("--connection", url)
    assert result.returncode == 1
    assert "password authentication failed for user 'check_pw_test'" in result.stderr
    assert "wrong-pw-4" not in result.stderr


def test_no_task_instance_table_is_one_line_and_exit_1(postgres: PostgresServer) -> None:
    result = check("--connection", postgres.maintenance_dsn)
    assert result.returncode == 1
    assert "no task_instance table" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_nothing_to_check_says_what_to_give() -> None:
    env = {k: "" for k in ("AIRFLOW_KEDA_SCALER_CONNECTION", "AIRFLOW_KEDA_SCALER_DATABASE")}
    result = check(env=env)
    assert result.returncode == 2
    assert "give --connection URL" in result.stderr


async def test_lists_the_prewarms_due_with_their_prediction(airflow_db: AirflowDatabase) -> None:
    await add_postgres_dags(airflow_db)
    result = check(
        "--queues", "default", "--prewarm-lead", "300", env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow_db.dsn}
    )
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    explained = "demand 0 (running 0 + queued 0) / concurrency 16 -> 0 workers; inactive: 0 <= activationThreshold 0"
    assert explained in lines
    assert "pre-warm: scheduled runs due within 300 s (prewarmLeadSeconds)" in lines
    assert any(
        line.startswith("etl_hourly due in ")
        and line.endswith("predicted 36 tasks (last runs, newest first: 40 44 0 36)")
        for line in lines
    ), lines
    assert any(
        line.startswith("manual_only due in") and line.endswith("no scheduled run yet: no pre-warm") for line in lines
    )
    assert not any(line.startswith(("paused", "stale", "far_away")) for line in lines)
    # overdue (12) and etl_hourly (36): 48 tasks / 16.
    assert 'with prewarm: "true": pre-warm 3 workers (prewarmMaxWorkers 10) -> workers 3; active: yes' in lines


async def test_a_prewarm_read_failure_is_said_and_the_check_goes_on(airflow3_db: AirflowDatabase) -> None:
    await airflow3_db.connection.execute("DROP TABLE dag")
    result = check(env={"AIRFLOW_KEDA_SCALER_CONNECTION": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    assert "pre-warm: cannot read the schedule or its history (schedule: no dag or dag_run table" in result.stdout
