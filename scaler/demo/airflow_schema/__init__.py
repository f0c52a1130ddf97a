"""Airflow's real task_instance tables, and a way to put task instances in them.

The .sql files beside this module are generated from real Airflow releases by
scripts/generate_airflow_schemas.py (`airflow db migrate`, then pg_dump, or
SHOW CREATE TABLE for the `.mysql.sql` ones). The demo and the tests create
their tables from them, so the scaler is always exercised against the columns,
types and indexes Airflow really has.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import asyncpg

# PostgreSQL. The tests run on each; 2.9.x has no task_instance.executor column,
# 2.10.x is the last 2.x line, 3.3.x the current 3.x line.
VERSIONS = ("2.9.3", "2.10.5", "3.3.2")
LATEST = VERSIONS[-1]
# The oldest release docs/reference.md promises; the compatibility tests use it.
OLDEST = "2.7.3"
# MySQL (as `airflow db migrate` made it on MariaDB): oldest without, newest 2.x and 3.x with the executor column.
MYSQL_VERSIONS = (OLDEST, "2.10.5", "3.3.2")


def has_executor_column(version: str) -> bool:
    """task_instance.executor arrived in Airflow 2.10 (AIP-61, multiple executors)."""
    major, minor, *_ = (int(part) for part in version.split("."))
    return (major, minor) >= (2, 10)


def schema_sql(version: str) -> str:
    if version not in (*VERSIONS, OLDEST):
        raise ValueError(f"no task_instance schema for Airflow {version}; have {', '.join(VERSIONS)}")
    return resources.files(__name__).joinpath(f"airflow-{version}.sql").read_text()


def mysql_schema_sql(version: str) -> str:
    if version not in MYSQL_VERSIONS:
        raise ValueError(f"no MySQL task_instance schema for Airflow {version}; have {', '.join(MYSQL_VERSIONS)}")
    return resources.files(__name__).joinpath(f"airflow-{version}.mysql.sql").read_text()


@dataclass(frozen=True)
class TaskInstance:
    task_id: str
    state: str | None
    queue: str | None = "default"
    executor: str | None = None
    hostname: str | None = None
    dag_id: str = "demo_dag"
    run_id: str = "manual__demo"
    map_index: int = -1
    # The dates Airflow records on a try (replay reads them); timezone-aware.
    queued_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    max_tries: int = -1  # Airflow's column default
    try_number: int = 1


def task_instance_records(
    present: set[str], tasks: Iterable[TaskInstance]
) -> tuple[list[str], list[tuple[object, ...]]]:
    """Columns and rows for task instances, filling the NOT NULL columns a version has.

    `present` is the table's column names, which tell the version apart:
    Airflow 3 has a uuid `id`, 2.10+ an `executor` column.
    """
    columns = [
        "dag_id",
        "task_id",
        "run_id",
        "map_index",
        "state",
        "queue",
        "hostname",
        "pool",
        "pool_slots",
        "queued_dttm",
        "start_date",
        "end_date",
        "max_tries",
    ]
    has_id = "id" in present
    has_executor = "executor" in present
    has_try_number = "try_number" in present
    if has_id:
        columns.append("id")
    if has_executor:
        columns.append("executor")
    if has_try_number:
        columns.append("try_number")
    records = []
    for task in tasks:
        if task.executor is not None and not has_executor:
            raise ValueError("this task_instance table has no executor column (Airflow < 2.10)")
        record: list[object] = [
            task.dag_id,
            task.task_id,
            task.run_id,
            task.map_index,
            task.state,
            task.queue,
            task.hostname,
            "default_pool",
            1,
            task.queued_at,
            task.started_at,
            task.ended_at,
            task.max_tries,
        ]
        if has_id:
            record.append(uuid.uuid4())
        if has_executor:
            record.append(task.executor)
        if has_try_number:
            record.append(task.try_number)
        records.append(tuple(record))
    return columns, records


async def insert_task_instances(connection: asyncpg.Connection, tasks: Iterable[TaskInstance]) -> None:
    """COPY task instances into a PostgreSQL task_instance table."""
    present = {
        record["attname"]
        for record in await connection.fetch(
            "SELECT attname FROM pg_attribute "
            "WHERE attrelid = 'task_instance'::regclass AND attnum > 0 AND NOT attisdropped"
        )
    }
    columns, records = task_instance_records(present, tasks)
    await connection.copy_records_to_table("task_instance", records=records, columns=columns)


def filler(data_type: str, now: datetime.datetime) -> object:
    """A value for a NOT NULL column without a default that a test or the demo does not care about."""
    if data_type in ("integer", "smallint", "bigint", "int", "tinyint"):  # PostgreSQL and MySQL names
        return 1
    if data_type == "boolean":
        return False
    if data_type in ("double precision", "real", "numeric"):
        return 0.0
    if data_type.startswith("timestamp"):
        return now
    if data_type in ("json", "jsonb", "longtext"):  # MariaDB keeps JSON in a checked longtext
        return "{}"
    if data_type == "bytea":
        return b""
    if data_type == "uuid":
        return uuid.uuid4()
    return "x"


async def insert_rows(connection: asyncpg.Connection, table: str, rows: Iterable[dict[str, object]]) -> None:
    """COPY rows into an Airflow table (dag, dag_run), filling the NOT NULL columns a version has.

    Airflow 3's `dag` alone has a dozen NOT NULL columns without defaults (bundle, timetable, limits);
    the rows give the ones that matter, and each other one gets a plain value of its type.
    """
    columns = await connection.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 AND is_nullable = 'NO' AND column_default IS NULL",
        table,
    )
    now = datetime.datetime.now(datetime.UTC)
    rows = list(rows)
    names = sorted({name for row in rows for name in row} | {column["column_name"] for column in columns})
    types = {column["column_name"]: column["data_type"] for column in columns}
    records = [tuple(row[name] if name in row else filler(types.get(name, ""), now) for name in names) for row in rows]
    await connection.copy_records_to_table(table, records=records, columns=names)
