"""Scheduled DAGs and their past runs in a real Airflow schema, for the pre-warm tests (PostgreSQL and MySQL)."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from scaler.fixtures.airflow_schema import TaskInstance


@dataclass(frozen=True)
class PastRunSpec:
    tasks: int  # in-window task instances on `queue`
    queue: str = "default"
    run_type: str = "scheduled"
    late_tasks: int = 2  # queued after the window: never initial demand


@dataclass
class ScheduledDag:
    dag_id: str
    due_in: float  # seconds from now; negative: overdue
    runs: Sequence[PastRunSpec] = field(default_factory=list)  # newest first
    period: float = 3600.0
    paused: bool = False
    stale: bool = False


def dag_row(dag: ScheduledDag, airflow3: bool, now: datetime.datetime) -> dict[str, object]:
    row: dict[str, object] = {
        "dag_id": dag.dag_id,
        "is_paused": dag.paused,
        "next_dagrun_create_after": now + datetime.timedelta(seconds=dag.due_in),
    }
    if airflow3:
        row["is_stale"] = dag.stale
    else:
        row["is_active"] = not dag.stale
    return row


def run_rows(
    dag: ScheduledDag, airflow3: bool, now: datetime.datetime
) -> tuple[list[dict[str, object]], list[TaskInstance]]:
    """The DAG's past runs (the newest one period before its due time) and their task instances."""
    runs: list[dict[str, object]] = []
    tasks: list[TaskInstance] = []
    for index, run in enumerate(dag.runs):
        started = now + datetime.timedelta(seconds=dag.due_in - (index + 1) * dag.period)
        run_id = f"{run.run_type}__{started.isoformat()}"
        row: dict[str, object] = {
            "dag_id": dag.dag_id,
            "run_id": run_id,
            "run_type": run.run_type,
            "state": "success",
            "queued_at": started,
            "start_date": started,
            "end_date": started + datetime.timedelta(seconds=300),
            "logical_date" if airflow3 else "execution_date": started,
        }
        if airflow3:
            row["run_after"] = started
        runs.append(row)
        for number in range(run.tasks + run.late_tasks):
            # In-window tasks queued 1-30 s after the start; late ones after the 60 s window.
            queued = started + datetime.timedelta(seconds=1 + number % 30 if number < run.tasks else 90 + number)
            tasks.append(
                TaskInstance(
                    f"t{number}",
                    "success",
                    queue=run.queue,
                    hostname="worker-0",
                    dag_id=dag.dag_id,
                    run_id=run_id,
                    queued_at=queued,
                    started_at=queued,
                    ended_at=queued + datetime.timedelta(seconds=20),
                )
            )
    return runs, tasks


InsertRows = Callable[[str, list[dict[str, object]]], Awaitable[None]]
InsertTasks = Callable[[list[TaskInstance]], Awaitable[None]]


async def add_dags(
    dags: Sequence[ScheduledDag], *, airflow3: bool, insert_rows: InsertRows, insert_tasks: InsertTasks
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    await insert_rows("dag", [dag_row(dag, airflow3, now) for dag in dags])
    for dag in dags:
        runs, tasks = run_rows(dag, airflow3, now)
        if runs:
            await insert_rows("dag_run", runs)
            await insert_tasks(tasks)
