"""The MySQL backend against a real server, with the tables `airflow db migrate` made there.

The server is the one named by AIRFLOW_KEDA_SCALER_TEST_MYSQL_URL (an admin URL,
mysql://user:password@host:port/, of a user that may create databases and users)
or a throwaway MariaDB the tests start (Debian ships MariaDB, not MySQL; Airflow
supports MySQL 8, and both speak the same protocol and run the same query). The
schemas are those Airflow's own migrations created on MariaDB
(scaler/fixtures/airflow_schema/*.mysql.sql) for 2.7.3 (no executor column), 2.10.5 and 3.3.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomysql
import pytest

from scaler.commands.replay.policies import OURS_60S, OURS_DRAIN, prewarm_policy
from scaler.fixtures.airflow_schema import (
    MYSQL_VERSIONS,
    TaskInstance,
    filler,
    has_executor_column,
    mysql_schema_sql,
    task_instance_records,
)
from scaler.rules.database_urls import parse_url
from scaler.simulation.control import Replay
from scaler.simulation.settings import CHART, OURS, ClusterSettings, safe_chart
from tests.conftest import StartScaler, fast_settings, free_port, until_async
from tests.support.prewarm_history import add_dags
from tests.support.servers import MariaDB, ServerUnavailable
from tests.test_check import check
from tests.test_failures import unavailable
from tests.test_prewarm import DAGS, check_cache
from tests.test_replay import HISTORY, WINDOW, check_prewarm_replay, expected_arrivals, hourly_dag, replay

MYSQL_URL_ENV = "AIRFLOW_KEDA_SCALER_TEST_MYSQL_URL"


@dataclass
class MySQLServer:
    admin_url: str
    throwaway: MariaDB | None

    def url_for(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        parts = urlsplit(self.admin_url)
        login = user or unquote(parts.username or "root")
        secret = unquote(parts.password or "") if password is None else password
        credentials = f"{login}:{secret}" if secret else login
        return f"mysql://{credentials}@{parts.hostname}:{parts.port or 3306}/{database}"

    async def connect(self, database: str | None = None) -> Any:
        parts = urlsplit(self.admin_url)
        return await aiomysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=database,
            autocommit=True,
        )


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    if url := os.environ.get(MYSQL_URL_ENV):
        yield MySQLServer(admin_url=url, throwaway=None)
        return
    try:
        server = MariaDB()
    except ServerUnavailable as missing:
        pytest.skip(str(missing))
    with server:
        yield MySQLServer(admin_url=server.admin_url, throwaway=server)


@dataclass
class MySQLDatabase:
    version: str
    name: str
    url: str  # what the scaler is given
    connection: Any  # aiomysql.Connection, autocommit
    server: MySQLServer

    @property
    def has_executor_column(self) -> bool:
        return has_executor_column(self.version)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold a write lock on task_instance from another session, so snapshot queries wait."""
        blocker = await self.server.connect(self.name)
        async with blocker.cursor() as cursor:
            await cursor.execute("LOCK TABLES task_instance WRITE")
        try:
            yield
        finally:
            async with blocker.cursor() as cursor:
                await cursor.execute("UNLOCK TABLES")
            blocker.close()

    async def execute(self, sql: str, args: object = None) -> list[tuple[Any, ...]]:
        async with self.connection.cursor() as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall())

    async def add(self, *tasks: TaskInstance) -> None:
        rows = await self.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'task_instance'"
        )
        columns, records = task_instance_records({name for (name,) in rows}, tasks)
        # TIMESTAMP values are read in the session's time zone: write them as UTC, as Airflow does.
        await self.execute("SET time_zone = '+00:00'")
        # The driver writes a uuid as its text, which MariaDB's uuid and MySQL's char columns take.
        values = [tuple(_mysql_value(v) for v in record) for record in records]
        placeholders = ", ".join(["%s"] * len(columns))
        async with self.connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO task_instance ({', '.join(columns)}) VALUES ({placeholders})",
                values,
            )

    async def add_many(self, count: int, state: str, **fields: str | None) -> None:
        prefix = uuid.uuid4().hex[:8]
        await self.add(*(TaskInstance(f"{state}_{prefix}_{i}", state, **fields) for i in range(count)))  # type: ignore[arg-type]

    async def login(self, user: str, password: str, *, grant_select: bool, login_password: str | None = None) -> str:
        """A new login for the scaler (SELECT on task_instance only, or nothing), as a mysql:// URL."""
        await self.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        if grant_select:
            await self.execute(f"GRANT SELECT ON `{self.name}`.task_instance TO '{user}'@'%'")
        return self.server.url_for(self.name, user=user, password=login_password or password)


def _mysql_value(value: object) -> object:
    """The driver writes a uuid as its text, and a datetime without its zone (so: in UTC)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


@pytest.fixture(params=MYSQL_VERSIONS)
async def mysql_db(request: pytest.FixtureRequest, mysql_server: MySQLServer) -> AsyncIterator[MySQLDatabase]:
    version: str = request.param
    name = f"airflow_test_{version.replace('.', '_')}_{uuid.uuid4().hex[:10]}"
    admin = await mysql_server.connect()
    async with admin.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    admin.close()
    connection = await mysql_server.connect(name)
    database = MySQLDatabase(version, name, mysql_server.url_for(name), connection, mysql_server)
    ddl = "\n".join(line for line in mysql_schema_sql(version).splitlines() if not line.startswith("--"))
    ((server_version,),) = await database.execute("SELECT VERSION()")
    if "MariaDB" not in server_version:
        # The dumps come from MariaDB, whose native uuid type is what Airflow 3's migration
        # chose there; on MySQL 8 the same migration makes a 36-character column.
        ddl = ddl.replace(" uuid ", " char(36) ")
    await database.execute(ddl)
    yield database
    connection.close()
    # A fresh connection: a test may have restarted the server under the first one.
    admin = await mysql_server.connect()
    async with admin.cursor() as cursor:
        await cursor.execute(f"DROP DATABASE {name}")
    admin.close()


async def test_demand_by_queue_and_state(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    await mysql_db.add_many(17, "running")
    await mysql_db.add_many(16, "queued")
    await mysql_db.add_many(7, "queued", queue="ml")
    await mysql_db.add_many(30, "queued", queue="kubernetes")
    await mysql_db.add_many(40, "success")
    await mysql_db.add_many(5, "deferred")
    await mysql_db.add_many(3, "scheduled")
    scaler = await start_scaler(airflow=mysql_db.url)
    poll = await scaler.keda.poll({"database": "airflow", "concurrency": "16"})
    assert (poll.value, poll.value_int, poll.active) == (5.0, 5, True)  # ceil(70 / 16)
    keda = scaler.keda
    assert await keda.workers({"database": "airflow", "concurrency": "1", "queues": "ml"}) == 7
    assert await keda.workers({"database": "airflow", "concurrency": "1", "excludeQueues": "kubernetes"}) == 40


async def test_every_mysql_url_form(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    await mysql_db.add_many(5, "queued")
    scaler = await start_scaler()
    for scheme in ("mysql", "mysql+mysqldb", "mysql+pymysql"):
        url = mysql_db.url.replace("mysql://", f"{scheme}://", 1) + "?charset=utf8mb4&__extra__=%7B%7D"
        assert await scaler.keda.workers({"connectionFromEnv": url, "concurrency": "2"}) == 3, scheme


async def test_executor_filter(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    k8s_path = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"
    metadata = {"database": "airflow", "concurrency": "1", "excludeExecutors": f"my_k8s:{k8s_path}"}
    if not mysql_db.has_executor_column:
        await mysql_db.add_many(3, "running")
        scaler = await start_scaler(airflow=mysql_db.url)
        assert await scaler.keda.workers(metadata) == 3  # no column: everything is the default executor's
        return
    await mysql_db.add(
        TaskInstance("default_executor", "running", executor=None),
        TaskInstance("celery_alias", "queued", executor="CeleryExecutor"),
        TaskInstance("k8s_class", "queued", executor="KubernetesExecutor"),
        TaskInstance("k8s_path", "running", executor=k8s_path),
        TaskInstance("k8s_alias", "queued", executor="my_k8s"),
    )
    scaler = await start_scaler(airflow=mysql_db.url)
    assert await scaler.keda.workers({**metadata, "excludeExecutors": ""}) == 5
    assert await scaler.keda.workers(metadata) == 2


async def test_busy_worker_floor_from_hostnames(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    # Three tasks on three workers: one worker would do by count, but all three are busy.
    for host in ("worker-a", "worker-b.workers.airflow.svc.cluster.local", "worker-c"):
        await mysql_db.add(TaskInstance(f"t_{host}", "running", hostname=host))
    await mysql_db.add(TaskInstance("retry", "queued", hostname="worker-d"))  # a queued retry's old host
    scaler = await start_scaler(airflow=mysql_db.url)
    assert await scaler.keda.workers({"database": "airflow", "concurrency": "16"}) == 3
    assert await scaler.keda.workers({"database": "airflow", "concurrency": "16", "scaleDownProtection": "false"}) == 1


async def test_each_call_sees_new_tasks(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    # A pooled connection left inside a REPEATABLE READ transaction would keep answering 0.
    scaler = await start_scaler(airflow=mysql_db.url)
    metadata = {"database": "airflow", "concurrency": "2"}
    assert not (await scaler.keda.poll(metadata)).active
    for expected in (1, 2, 3):
        await mysql_db.add_many(2, "queued")
        assert await scaler.keda.workers(metadata) == expected


async def test_errors_name_the_cause(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    if mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("error handling does not depend on the schema version")
    scaler = await start_scaler()
    keda = scaler.keda

    suffix = uuid.uuid4().hex[:6]  # users outlive the test's database
    wrong = await mysql_db.login(f"pw_{suffix}", "right-pw-5", grant_select=True, login_password="wrong-pw-6")
    details = await unavailable(keda, {"connectionFromEnv": wrong})
    assert f"access denied for user 'pw_{suffix}'" in details
    assert "wrong-pw-6" not in details
    assert "right-pw-5" not in details

    no_grant = await mysql_db.login(f"noperm_{suffix}", "noperm-pw", grant_select=False)
    details = await unavailable(keda, {"connectionFromEnv": no_grant})
    assert (
        f"permission denied: grant SELECT on task_instance (and dag, dag_run for prewarm) to user 'noperm_{suffix}'"
        in details
    )

    missing = mysql_db.server.url_for("no_such_airflow_db")
    details = await unavailable(keda, {"connectionFromEnv": missing})
    assert "database 'no_such_airflow_db' does not exist" in details

    empty = f"empty_{suffix}"
    await mysql_db.execute(f"CREATE DATABASE {empty}")
    try:
        details = await unavailable(keda, {"connectionFromEnv": mysql_db.server.url_for(empty)})
    finally:
        await mysql_db.execute(f"DROP DATABASE {empty}")
    assert "no task_instance table" in details

    refused = f"mysql://airflow:pw@127.0.0.1:{free_port()}/airflow"
    assert await unavailable(keda, {"connectionFromEnv": refused}) == (
        f"Airflow database 127.0.0.1:{refused.rsplit(':', 1)[1].split('/')[0]}/airflow: connection refused"
    )


async def test_slow_database_times_out(mysql_db: MySQLDatabase, start_scaler: StartScaler) -> None:
    if mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("timeouts do not depend on the schema version")
    await mysql_db.add_many(3, "queued")
    scaler = await start_scaler(fast_settings({"airflow": parse_url(mysql_db.url)}, query_timeout=0.5))
    metadata = {"database": "airflow", "concurrency": "1"}
    assert await scaler.keda.workers(metadata) == 3
    async with mysql_db.locked():
        assert "no answer within 0.5s" in await unavailable(scaler.keda, metadata)
    assert await scaler.keda.workers(metadata) == 3  # the cut-off connection was not reused


async def test_connections_the_server_closed_are_replaced_without_an_error(
    mysql_db: MySQLDatabase, start_scaler: StartScaler
) -> None:
    # MySQL closes connections idle past wait_timeout, and proxies cut them sooner. Whichever
    # notices first, the pool when it hands the connection out or the read's one retry, the
    # next call must get its answer from a new connection, not an error.
    if mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("connection handling does not depend on the schema version")
    await mysql_db.add_many(3, "queued")
    scaler = await start_scaler(airflow=mysql_db.url)
    metadata = {"database": "airflow", "concurrency": "1"}
    assert await scaler.keda.workers(metadata) == 3
    pooled = await mysql_db.execute(
        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
    )
    assert pooled, "the scaler keeps its connection in the pool"
    for (connection_id,) in pooled:
        await mysql_db.execute(f"KILL CONNECTION {int(connection_id)}")
    await mysql_db.add_many(2, "queued")
    assert await scaler.keda.workers(metadata) == 5


async def test_connection_lost_during_the_query_is_retried_once(
    mysql_db: MySQLDatabase, start_scaler: StartScaler
) -> None:
    # A connection that dies under a running query (a failover, a proxy, KILL) reaches the
    # reader as "Lost connection during query": one retry on a new connection answers.
    if mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("connection handling does not depend on the schema version")
    await mysql_db.add_many(4, "queued")
    scaler = await start_scaler(fast_settings({"airflow": parse_url(mysql_db.url)}, query_timeout=5))
    metadata = {"database": "airflow", "concurrency": "1"}
    async with mysql_db.locked():
        poll = asyncio.ensure_future(scaler.keda.workers(metadata))
        waiting: list[tuple[Any, ...]] = []

        async def query_reached_the_server() -> bool:
            nonlocal waiting
            waiting = await mysql_db.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE info LIKE '%airflow-keda-scaler snapshot%' AND id <> CONNECTION_ID()"
            )
            return bool(waiting)

        await until_async(query_reached_the_server)
        for (connection_id,) in waiting:
            await mysql_db.execute(f"KILL CONNECTION {int(connection_id)}")
    assert await poll == 4


async def test_server_restart_is_unavailable_then_recovers(
    mysql_server: MySQLServer, mysql_db: MySQLDatabase, start_scaler: StartScaler
) -> None:
    if mysql_server.throwaway is None or mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("needs the throwaway server (it is restarted), once")
    await mysql_db.add_many(5, "queued")
    scaler = await start_scaler(airflow=mysql_db.url)
    metadata = {"database": "airflow", "concurrency": "2"}
    assert await scaler.keda.workers(metadata) == 3
    await asyncio.to_thread(mysql_server.throwaway.kill)
    details = await unavailable(scaler.keda, metadata)
    assert "connection refused" in details or "connection lost" in details
    assert mysql_server.throwaway.admin_password not in details
    await asyncio.to_thread(mysql_server.throwaway.start)
    # The pool's connections died with the server; the first call after it must not fail.
    assert await scaler.keda.workers(metadata) == 3


async def test_check_command_reads_mysql(mysql_db: MySQLDatabase) -> None:
    if mysql_db.version != MYSQL_VERSIONS[-1]:
        pytest.skip("the command's path does not depend on the schema version")
    await mysql_db.add_many(5, "running", queue="default")
    await mysql_db.add_many(4, "queued", queue="ml")
    url = mysql_db.url.replace("mysql://", "mysql+mysqldb://", 1) + "?charset=utf8mb4"
    result = await asyncio.to_thread(check, "--concurrency", "4", env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "default 5 0" in lines
    assert "ml 0 4" in lines
    assert "demand 9 (running 5 + queued 4) / concurrency 4 -> 3 workers; active: 9 > activationThreshold 0" in lines
    password = unquote(urlsplit(mysql_db.url).password or "")
    assert password not in result.stdout + result.stderr


async def test_replay_reads_mysql_as_postgresql(mysql_db: MySQLDatabase) -> None:
    """The same history gives the same figures as on PostgreSQL (tests/test_replay.py), in every schema."""
    await mysql_db.add(*HISTORY)
    url = mysql_db.url.replace("mysql://", "mysql+pymysql://", 1)
    env = {"AIRFLOW_KEDA_SCALER_CONNECTION": url}
    result = await asyncio.to_thread(replay, *WINDOW, "--queues", "default", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tasks"] == 50
    settings = ClusterSettings(retries=0)
    longest = max(arrival.duration for arrival in expected_arrivals())
    policies = [CHART, safe_chart(longest, settings), OURS, OURS_60S, OURS_DRAIN, prewarm_policy(120, 10)]
    expected = [Replay(p, settings, expected_arrivals(), seed=1).run(until=4 * 3600) for p in policies]
    assert [(p["tasks_killed"], p["worker_hours"]) for p in document["policies"]] == [
        (want.killed, round(want.worker_seconds / 3600, 3)) for want in expected
    ]
    assert document["observed"]["never_started"] == 1
    assert document["observed"]["bad_dates"] == 2
    password = unquote(urlsplit(mysql_db.url).password or "")
    assert password not in result.stdout + result.stderr


# Pre-warm's reads (test_prewarm.py checks the same on PostgreSQL).


async def mysql_insert_rows(database: MySQLDatabase, table: str, rows: list[dict[str, object]]) -> None:
    """INSERT rows, filling the NOT NULL columns without a default (as insert_rows does on PostgreSQL)."""
    required = await database.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = DATABASE() "
        "AND table_name = %s AND is_nullable = 'NO' AND column_default IS NULL AND extra NOT LIKE '%%auto_increment%%'",
        (table,),
    )
    now = datetime.datetime.now(datetime.UTC)
    types = {name: kind for name, kind in required}
    names = sorted({name for row in rows for name in row} | set(types))
    values = [
        tuple(_mysql_value(row[name] if name in row else filler(types.get(name, ""), now)) for name in names)
        for row in rows
    ]
    await database.execute("SET time_zone = '+00:00'")
    placeholders = ", ".join(["%s"] * len(names))
    async with database.connection.cursor() as cursor:
        await cursor.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})", values)


async def test_the_reads_on_mysql(mysql_db: MySQLDatabase) -> None:
    await add_dags(
        DAGS,
        airflow3=mysql_db.version.startswith("3."),
        insert_rows=lambda table, rows: mysql_insert_rows(mysql_db, table, rows),
        insert_tasks=lambda tasks: mysql_db.add(*tasks),
    )
    await check_cache(mysql_db.url)


async def test_replay_prewarm_policy_on_mysql(mysql_db: MySQLDatabase) -> None:
    runs, tasks = hourly_dag(mysql_db.version.startswith("3."))
    await mysql_insert_rows(mysql_db, "dag_run", runs)
    await mysql_db.add(*tasks)
    await asyncio.to_thread(check_prewarm_replay, mysql_db.url)
