"""The MySQL backend: Airflow's other metadata database, read with aiomysql.

The same contract as postgres.py: one fixed query text, the same rows, a small
lazy pool, and driver errors turned into reasons a person can act on. Airflow
supports MySQL 8; MariaDB speaks the same protocol and runs the same query (the
tests use it, with the schema `airflow db migrate` creates there), but Airflow
itself does not support MariaDB.

Autocommit is on: under InnoDB's REPEATABLE READ a pooled connection left in a
transaction would answer every later query from the snapshot its first query
took, and the scaler would never see a new task.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiomysql
import pymysql

from scaler.adapters.databases.failures import (
    NO_PREWARM_TABLES,
    NO_TABLE,
    ConnectionLost,
    first_line,
    network_reason,
    timeout_reason,
    with_one_retry,
)
from scaler.adapters.databases.pool import PoolSettings
from scaler.errors import DatabaseUnavailable, FailureKind
from scaler.rules.database_urls import ConnectionTarget
from scaler.rules.history import (
    PAGE_SIZE,
    RUNS_BEFORE_THE_WINDOW,
    HistoryRow,
    history_query,
    page_timeout,
    scheduled_runs_query,
)
from scaler.rules.schedule import SCHEDULE_LIMIT, DagSchema, DueRow, RunRow, chunks, initial_tasks
from scaler.rules.snapshot import SnapshotRow

log = logging.getLogger(__name__)

# MySQL 8 stops the SELECT itself after the hint's milliseconds (MariaDB reads the hint as
# a comment; our own timeout still applies). Positions in GROUP BY, because MySQL resolves
# a GROUP BY name to the table's column before the select list's alias (hostname is both).
SNAPSHOT_QUERY = """SELECT /*+ MAX_EXECUTION_TIME({timeout_ms}) */ /* airflow-keda-scaler snapshot */
       state, queue, {executor} AS executor,
       CASE WHEN state = 'running' THEN NULLIF(hostname, '') END AS hostname,
       COUNT(*) AS task_count
FROM task_instance
WHERE state IN ('running', 'queued')
GROUP BY 1, 2, 3, 4"""

# `replay`: the task instances that arrived in a window, in arrival order (see postgres.py).
HISTORY_QUERY = history_query(
    "TIMESTAMPDIFF(MICROSECOND, %(start)s, queued_dttm) / 1e6 AS queued,\n"
    "       TIMESTAMPDIFF(MICROSECOND, %(start)s, start_date) / 1e6 AS started,\n"
    "       TIMESTAMPDIFF(MICROSECOND, %(start)s, end_date) / 1e6 AS ended",
    "%(start)s",
    "%(end)s",
)

SCHEMA_QUERY = """SELECT /* airflow-keda-scaler schema */
       (SELECT COUNT(*) FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = 'task_instance') AS has_table,
       (SELECT COUNT(*) FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'task_instance'
          AND column_name = 'executor') AS has_executor"""

# Pre-warm (databases/schedule.py). UNIX_TIMESTAMP of a TIMESTAMP column is its stored UTC instant,
# whatever the session's time zone.
PREWARM_SCHEMA_QUERY = """SELECT /* airflow-keda-scaler schema */
       (SELECT COUNT(DISTINCT table_name) FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name IN ('dag', 'dag_run')) AS tables,
       (SELECT COUNT(*) FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'dag' AND column_name = 'is_stale') AS airflow3,
       (SELECT COUNT(*) FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'task_instance'
          AND column_name = 'executor') AS has_executor"""

SCHEDULE_QUERY = f"""SELECT /*+ MAX_EXECUTION_TIME({{timeout_ms}}) */ /* airflow-keda-scaler schedule */
       dag_id, UNIX_TIMESTAMP(next_dagrun_create_after) AS due_epoch, UNIX_TIMESTAMP(NOW(6)) AS now_epoch
FROM dag
WHERE next_dagrun_create_after >= NOW(6) - INTERVAL %s SECOND
  AND next_dagrun_create_after <= NOW(6) + INTERVAL %s SECOND
  AND {{live}}
ORDER BY next_dagrun_create_after
LIMIT {SCHEDULE_LIMIT}"""

# MySQL before 8.0.14 and MariaDB have no LATERAL: one parenthesised part per DAG (the same text each
# time, its values bound), so each still reads its last runs backwards through the unique index.
RECENT_RUNS = """(SELECT dag_id, run_id, start_date FROM dag_run
  WHERE dag_id = %s AND run_type = 'scheduled' AND {run_date} IS NOT NULL
    AND start_date < NOW(6) - INTERVAL %s SECOND
  ORDER BY {run_date} DESC LIMIT %s)"""
INITIAL_DEMAND_QUERY = f"""SELECT /*+ MAX_EXECUTION_TIME({{timeout_ms}}) */ /* airflow-keda-scaler run history */
       r.dag_id, r.run_id, UNIX_TIMESTAMP(r.start_date) AS started_epoch,
       ti.queue, {{executor}} AS executor, COUNT(ti.task_id) AS task_count
FROM ({{runs}}) AS r
{initial_tasks("INTERVAL %s SECOND")}
GROUP BY 1, 2, 3, 4, 5"""
# `replay`'s pre-warm policy, in a UTC session (bounds in UTC without a zone, as for the history).
SCHEDULED_RUNS_QUERY = scheduled_runs_query(
    "UNIX_TIMESTAMP(coalesce(r.queued_at, r.start_date))", "%(start)s", "%(end)s", "INTERVAL %(window)s SECOND"
)
# TIMESTAMP columns come back in the session's time zone: make it UTC, as Airflow stores them.
UTC_SESSION = "SET time_zone = '+00:00'"

# MySQL and MariaDB server error codes, by what the operator has to do about them.
_AUTHENTICATION = {1045, 1129, 1130, 1251, 1698}  # access denied, host blocked/not allowed, auth plugin
_PERMISSION = {1044, 1142, 1143}  # no access to the database, to the table, to a column
_TIMEOUT = {1205, 1969, 3024}  # lock wait, MariaDB max_statement_time, MySQL max_execution_time
_LOST = {2006, 2013, 2014, 2055, 4031}  # gone away, lost during query, out of sync, idle disconnect
_TOO_MANY = {1040, 1203, 1226}


class MySQLReader:
    """Reads snapshots from one MySQL (or MariaDB) database (a SnapshotReader)."""

    def __init__(self, target: ConnectionTarget, *, label: str, settings: PoolSettings) -> None:
        self._target = target
        self._label = label
        self._settings = settings
        self._pool: Any = None  # aiomysql.Pool: the library has no type information
        self._has_executor: bool | None = None
        self._dag_schema: DagSchema | None = None  # pre-warm's, read once
        # The MAX_EXECUTION_TIME hint's, and the snapshot query's text by whether task_instance has an
        # executor column (Airflow 2.10+).
        self._timeout_ms = int(settings.query_timeout * 1000)
        self._queries = {
            True: SNAPSHOT_QUERY.format(timeout_ms=self._timeout_ms, executor="executor"),
            False: SNAPSHOT_QUERY.format(timeout_ms=self._timeout_ms, executor="NULL"),
        }

    @property
    def label(self) -> str:
        return self._label

    async def read(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        return await with_one_retry(self._label, self._read_once, self._expire)

    async def _read_once(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        async with self._connection() as connection:
            if self._has_executor is None:
                (has_table, has_executor), *_ = await self._fetch(connection, SCHEMA_QUERY)
                if not has_table:
                    raise DatabaseUnavailable(self._label, NO_TABLE, kind="no_table")
                self._has_executor = bool(has_executor)
            has_executor = self._has_executor
            records = await self._fetch(connection, self._queries[has_executor])
        rows = tuple(
            SnapshotRow(state=state, queue=queue, executor=executor, count=int(count), hostname=hostname)
            for state, queue, executor, hostname, count in records
        )
        return rows, has_executor

    async def history(
        self, start: datetime.datetime, end: datetime.datetime, *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[list[HistoryRow]]:
        """The task instances that arrived in [start, end), in arrival order, streamed (unbuffered cursor)."""
        timeout = page_timeout(self._settings.query_timeout)
        async with self._connection() as connection:
            (has_table, has_executor), *_ = await self._fetch(connection, SCHEMA_QUERY)
            if not has_table:
                raise DatabaseUnavailable(self._label, NO_TABLE, kind="no_table")
            query = HISTORY_QUERY.format(executor="executor" if has_executor else "NULL")
            await self._fetch(connection, UTC_SESSION)
            bounds = {"start": _naive_utc(start), "end": _naive_utc(end)}
            async with connection.cursor(aiomysql.SSCursor) as cursor:
                await asyncio.wait_for(cursor.execute(query, bounds), timeout)
                while rows := await asyncio.wait_for(cursor.fetchmany(page_size), timeout):
                    yield [HistoryRow(*row) for row in rows]

    async def schedule(self, *, behind: int, ahead: int) -> tuple[DueRow, ...]:
        timeout_ms = self._timeout_ms
        (records,) = await self._prewarm_read(
            lambda schema: [(SCHEDULE_QUERY.format(timeout_ms=timeout_ms, live=schema.live), (behind, ahead))]
        )
        return tuple(DueRow(dag_id, float(due), float(now)) for dag_id, due, now in records)

    async def initial_demand(self, dag_ids: Sequence[str], *, runs: int, window: int) -> tuple[RunRow, ...]:
        def statements(schema: DagSchema) -> list[tuple[str, object]]:
            recent = RECENT_RUNS.format(run_date=schema.run_date)
            return [
                (
                    INITIAL_DEMAND_QUERY.format(
                        timeout_ms=self._timeout_ms,
                        executor=schema.executor,
                        runs=" UNION ALL ".join([recent] * len(chunk)),
                    ),
                    (*(value for dag_id in chunk for value in (dag_id, window, runs)), window),
                )
                for chunk in chunks(dag_ids)
            ]

        results = await self._prewarm_read(statements)
        return tuple(
            RunRow(dag_id, run_id, float(started), queue, executor, int(count))
            for records in results
            for dag_id, run_id, started, queue, executor, count in records
        )

    async def scheduled_runs(self, start: datetime.datetime, end: datetime.datetime, window: int) -> list[RunRow]:
        bounds = {
            "start": _naive_utc(start - datetime.timedelta(seconds=RUNS_BEFORE_THE_WINDOW)),
            "end": _naive_utc(end),
            "window": window,
        }
        results = await self._prewarm_read(
            lambda schema: [(UTC_SESSION, None), (SCHEDULED_RUNS_QUERY.format(executor=schema.executor), bounds)],
            timeout=page_timeout(self._settings.query_timeout),
        )
        return [
            RunRow(dag_id, run_id, float(created), queue, executor, int(count))
            for dag_id, run_id, created, queue, executor, count in results[-1]
        ]

    async def _prewarm_read(
        self, statements: Callable[[DagSchema], list[tuple[str, object]]], *, timeout: float | None = None
    ) -> list[list[tuple[Any, ...]]]:
        """Pre-warm statements, in the words of this database's Airflow version."""
        async with self._connection() as connection:
            if self._dag_schema is None:
                (tables, airflow3, has_executor), *_ = await self._fetch(connection, PREWARM_SCHEMA_QUERY)
                if tables < 2:
                    raise DatabaseUnavailable(self._label, NO_PREWARM_TABLES, kind="no_table")
                self._dag_schema = DagSchema(bool(airflow3), bool(has_executor))
            try:
                return [
                    await self._fetch(connection, text, args, timeout=timeout)
                    for text, args in statements(self._dag_schema)
                ]
            except pymysql.err.ProgrammingError as error:
                if not error.args or error.args[0] not in (1054, 1146):  # unknown column, no such table
                    raise
                self._dag_schema = None  # an upgrade or downgrade under us: look again next time
                raise DatabaseUnavailable(
                    self._label, "dag or dag_run changed shape; re-reading their schema", kind="schema_changed"
                ) from None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection for the block; driver errors come out as reasons a person can act on.

        A block ended by anything but a DatabaseUnavailable of ours (raised between complete answers) may
        have cut a query off half way, which leaves the protocol out of step: that connection is closed,
        never reused.
        """
        try:
            pool = await self._ensure_pool()
            connection = await asyncio.wait_for(pool.acquire(), self._settings.connect_timeout)
        except Exception as error:
            raise self._explain(error) from None
        healthy = False
        try:
            yield connection
            healthy = True
        except DatabaseUnavailable:
            healthy = True
            raise
        except Exception as error:
            raise self._explain(error) from None
        finally:
            if not healthy:
                connection.close()
            pool.release(connection)

    async def _fetch(
        self, connection: Any, query: str, args: object = None, *, timeout: float | None = None
    ) -> list[tuple[Any, ...]]:
        async with connection.cursor() as cursor:
            await asyncio.wait_for(cursor.execute(query, args), timeout or self._settings.query_timeout)
            rows: list[tuple[Any, ...]] = list(await cursor.fetchall())
            return rows

    def connections_in_use(self) -> int:
        pool = self._pool
        return 0 if pool is None else int(pool.size - pool.freesize)

    async def _ensure_pool(self) -> Any:
        if self._pool is None:
            parts = urlsplit(self._target.dsn)
            options = dict(parse_qsl(parts.query))
            # The parsed host, not urlsplit's: that one is lower-cased and still percent-encoded.
            host, port = self._target.hosts[0]
            # minsize 0: the pool connects on first use, so a bad URL is reported by that call.
            self._pool = await aiomysql.create_pool(
                minsize=0,
                maxsize=self._settings.max_size,
                pool_recycle=60,
                host=host,
                port=port,
                user=unquote(parts.username or ""),
                password=unquote(parts.password or ""),
                db=self._target.database,
                charset=options.get("charset", "utf8mb4"),
                ssl=_ssl_context(options),
                connect_timeout=self._settings.connect_timeout,
                autocommit=True,
                program_name="airflow-keda-scaler",
            )
        return self._pool

    async def _expire(self) -> None:
        if self._pool is not None:
            await self._pool.clear()

    def _explain(self, error: BaseException) -> BaseException:
        """Turn a driver or network error into a reason a person can act on."""
        settings, target = self._settings, self._target
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return error
        code = error.args[0] if isinstance(error, pymysql.MySQLError) and error.args else None
        message = str(error.args[1]) if isinstance(error, pymysql.MySQLError) and len(error.args) > 1 else ""
        cause = error.__cause__ or error.__context__
        kind: FailureKind
        if isinstance(error, TimeoutError | asyncio.TimeoutError) or code in _TIMEOUT:
            kind = "timeout"
            reason = timeout_reason(settings.query_timeout, settings.connect_timeout)
        elif code in _AUTHENTICATION:
            kind = "authentication"
            reason = f"access denied for user '{target.user}' (wrong password, or no login from this host): {message}"
        elif code == 1049:
            kind = "no_database"
            reason = f"database '{target.database}' does not exist"
        elif code in _PERMISSION:
            kind = "permission"
            reason = (
                "permission denied: grant SELECT on task_instance (and dag, dag_run for prewarm) "
                f"to user '{target.user}' ({message})"
            )
        elif code == 1146:
            self._has_executor = None
            kind = "no_table"
            reason = NO_TABLE
        elif code == 1054:
            # The schema changed under us (an Airflow upgrade or downgrade): look again next time.
            self._has_executor = None
            kind = "schema_changed"
            reason = "task_instance changed shape; re-reading its schema"
        elif code in _TOO_MANY:
            kind = "too_many_connections"
            reason = f"the server refuses more connections: {message}"
        elif code == 1317:
            kind = "cancelled"
            reason = f"the snapshot query was cancelled by the server: {message}"
        elif code in _LOST or isinstance(error, ConnectionResetError | BrokenPipeError):
            return ConnectionLost(message or first_line(error))
        elif code == 2003 or isinstance(error, OSError):
            # aiomysql reports a failed connect as 2003 and keeps the socket error as the cause.
            socket_error = cause if isinstance(cause, OSError) else error
            if isinstance(socket_error, OSError):
                kind, reason = network_reason(socket_error)
            else:
                kind, reason = "network", f"cannot connect: {message or first_line(error)}"
        elif isinstance(error, pymysql.MySQLError):
            kind = "query"
            reason = f"query failed: {type(error).__name__} {code}: {message or first_line(error)}"
        else:
            log.error("unexpected error reading %s", self._label, exc_info=error)
            kind = "unexpected"
            reason = f"unexpected error: {type(error).__name__}"
        return DatabaseUnavailable(self._label, reason, kind=kind)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), timeout=self._settings.connect_timeout)
            except (TimeoutError, OSError):
                pool.terminate()


def _naive_utc(moment: datetime.datetime) -> datetime.datetime:
    """A bound for a TIMESTAMP comparison in a UTC session (UTC_SESSION): the driver writes a datetime's
    digits only, so it must be UTC without a zone."""
    return moment.astimezone(datetime.UTC).replace(tzinfo=None)


def _ssl_context(options: dict[str, str]) -> ssl.SSLContext | None:
    """TLS from the URL's ssl_* options, as the MySQL clients read them; None for none asked."""
    mode = options.get("ssl_mode", "").upper()
    if mode == "DISABLED" or not (mode or {"ssl_ca", "ssl_cert", "ssl_key"} & options.keys()):
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca"))
    if mode in ("REQUIRED", "PREFERRED") and "ssl_ca" not in options:
        # REQUIRED encrypts without checking whom it talks to, as the mysql client does.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "VERIFY_CA":
        context.check_hostname = False
    if "ssl_cert" in options:
        context.load_cert_chain(options["ssl_cert"], options.get("ssl_key"))
    return context
