"""The PostgreSQL backend: a small lazy asyncpg pool and the fixed snapshot query.

The query is fixed text: it reads the running and queued task instances
(through the `ti_state` index) grouped by state, queue, executor and, for
running ones, the worker's hostname, once for every ScaledObject on this
database. Filtering by queue and executor happens in
decision.py, in memory, so nothing a ScaledObject author writes reaches SQL.

PgBouncer in transaction mode: asyncpg's statement cache is off, so no named
prepared statement outlives its transaction.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg

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
from scaler.errors import DatabaseUnavailable, FailureKind, shown
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

# The marker comment lets operators find the scaler in pg_stat_statements / pg_stat_activity.
# Inside the statement, because pg_stat_statements keeps the text from the statement's start.
# Hostnames only for running rows: a queued row's hostname is its previous try's worker, not a busy one.
SNAPSHOT_QUERY = """SELECT /* airflow-keda-scaler snapshot */
       state, queue, {executor} AS executor,
       CASE WHEN state = 'running' THEN nullif(hostname, '') END AS hostname,
       count(*) AS task_count
FROM task_instance
WHERE state IN ('running', 'queued')
GROUP BY 1, 2, 3, 4"""

# Airflow 2.10+ stores the executor per task instance; before that every row is the default executor's.
SNAPSHOT_QUERIES = {
    True: SNAPSHOT_QUERY.format(executor="executor"),
    False: SNAPSHOT_QUERY.format(executor="NULL::varchar"),
}

# `replay`: the task instances that arrived in a window, in arrival order (a sequential scan: no index
# covers the dates; replay reads a window once, not on every call).
HISTORY_QUERY = history_query(
    "date_part('epoch', queued_dttm - $1) AS queued, date_part('epoch', start_date - $1) AS started,\n"
    "       date_part('epoch', end_date - $1) AS ended",
    "$1",
    "$2",
)
HISTORY_QUERIES = {
    True: HISTORY_QUERY.format(executor="executor"),
    False: HISTORY_QUERY.format(executor="NULL::varchar"),
}

# `replay`'s pre-warm policy: $1 from, $2 to, $3 the initial-demand window (seconds).
SCHEDULED_RUNS_QUERY = scheduled_runs_query(
    "date_part('epoch', coalesce(r.queued_at, r.start_date))::float8", "$1", "$2", "make_interval(secs => $3)"
)

# One round trip, once per pool: Airflow 2.7-2.9 have no executor column, and a
# missing table should be reported as such, not as a confusing SQL error.
SCHEMA_QUERY = """SELECT /* airflow-keda-scaler schema */ to_regclass('task_instance') IS NOT NULL AS has_table,
       EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('task_instance')
                 AND attname = 'executor' AND NOT attisdropped) AS has_executor"""


# Pre-warm (databases/schedule.py): the DAGs due soon, through idx_next_dagrun_create_after.
PREWARM_SCHEMA_QUERY = """SELECT /* airflow-keda-scaler schema */
       to_regclass('dag') IS NOT NULL AND to_regclass('dag_run') IS NOT NULL AS has_tables,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('dag')
                 AND attname = 'is_stale' AND NOT attisdropped) AS airflow3,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('task_instance')
                 AND attname = 'executor' AND NOT attisdropped) AS has_executor"""

SCHEDULE_QUERY = f"""SELECT /* airflow-keda-scaler schedule */ dag_id,
       date_part('epoch', next_dagrun_create_after)::float8 AS due_epoch, date_part('epoch', now())::float8 AS now_epoch
FROM dag
WHERE next_dagrun_create_after >= now() - make_interval(secs => $1)
  AND next_dagrun_create_after <= now() + make_interval(secs => $2)
  AND {{live}}
ORDER BY next_dagrun_create_after
LIMIT {SCHEDULE_LIMIT}"""

# $1 the DAG ids (an array parameter: one text whatever their number), $2 the runs, $3 the window.
INITIAL_DEMAND_QUERY = f"""SELECT /* airflow-keda-scaler run history */
       r.dag_id, r.run_id, date_part('epoch', r.start_date)::float8 AS started_epoch,
       ti.queue, {{executor}} AS executor, count(ti.task_id) AS task_count
FROM unnest($1::varchar[]) AS d(dag_id)
CROSS JOIN LATERAL (
    SELECT run.dag_id, run.run_id, run.start_date FROM dag_run AS run
    WHERE run.dag_id = d.dag_id AND run.run_type = 'scheduled' AND run.{{run_date}} IS NOT NULL
      AND run.start_date < now() - make_interval(secs => $3)
    ORDER BY run.{{run_date}} DESC
    LIMIT $2
) AS r
{initial_tasks("make_interval(secs => $3)")}
GROUP BY 1, 2, 3, 4, 5"""


class PostgresReader:
    """Reads snapshots from one PostgreSQL database (a SnapshotReader)."""

    def __init__(self, target: ConnectionTarget, *, label: str, settings: PoolSettings) -> None:
        self._target = target
        self._label = label
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        # Known once the schema has been looked at: whether task_instance has an executor column.
        self._has_executor: bool | None = None
        self._dag_schema: DagSchema | None = None  # pre-warm's, likewise

    @property
    def label(self) -> str:
        return self._label

    async def read(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        return await with_one_retry(self._label, self._read_once, self._expire)

    async def _read_once(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        pool = await self._ensure_pool()
        settings = self._settings
        try:
            async with pool.acquire(timeout=settings.connect_timeout) as connection:
                if self._has_executor is None:
                    schema = await connection.fetchrow(SCHEMA_QUERY, timeout=settings.query_timeout)
                    assert schema is not None
                    if not schema["has_table"]:
                        raise DatabaseUnavailable(self._label, NO_TABLE, kind="no_table")
                    self._has_executor = bool(schema["has_executor"])
                has_executor = self._has_executor
                records = await connection.fetch(SNAPSHOT_QUERIES[has_executor], timeout=settings.query_timeout)
        except DatabaseUnavailable:
            raise
        except asyncpg.UndefinedTableError:
            self._has_executor = None
            raise DatabaseUnavailable(self._label, NO_TABLE, kind="no_table") from None
        except asyncpg.UndefinedColumnError:
            # The schema changed under us (an Airflow upgrade or downgrade): look again next time.
            self._has_executor = None
            raise DatabaseUnavailable(
                self._label, "task_instance changed shape; re-reading its schema", kind="schema_changed"
            ) from None
        except BaseException as error:
            raise self._explain(error) from None
        rows = tuple(
            SnapshotRow(
                state=r["state"],
                queue=r["queue"],
                executor=r["executor"],
                count=r["task_count"],
                hostname=r["hostname"],
            )
            for r in records
        )
        return rows, has_executor

    async def history(
        self, start: datetime.datetime, end: datetime.datetime, *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[list[HistoryRow]]:
        """The task instances that arrived in [start, end), in arrival order, through a read-only cursor."""
        settings = self._settings
        timeout = page_timeout(settings.query_timeout)
        try:
            pool = await self._ensure_pool()
            async with pool.acquire(timeout=settings.connect_timeout) as connection:
                schema = await connection.fetchrow(SCHEMA_QUERY, timeout=settings.query_timeout)
                assert schema is not None
                if not schema["has_table"]:
                    raise DatabaseUnavailable(self._label, NO_TABLE, kind="no_table")
                query = HISTORY_QUERIES[bool(schema["has_executor"])]
                async with connection.transaction(readonly=True):
                    # A cursor in SQL, not asyncpg's: that one prepares a named statement, which outlives the
                    # transaction on the server connection and, behind PgBouncer in transaction mode, clashes
                    # with the same name prepared by the next client that gets that connection.
                    await connection.execute(
                        f"DECLARE history NO SCROLL CURSOR FOR {query}", start, end, timeout=timeout
                    )
                    fetch = f"FETCH FORWARD {int(page_size)} FROM history"
                    while records := await connection.fetch(fetch, timeout=timeout):
                        yield [HistoryRow(*record) for record in records]
        except DatabaseUnavailable:
            raise
        except Exception as error:
            raise self._explain(error) from None

    async def schedule(self, *, behind: int, ahead: int) -> tuple[DueRow, ...]:
        records = await self._prewarm_read(
            lambda schema: SCHEDULE_QUERY.format(live=schema.live), float(behind), float(ahead)
        )
        return tuple(DueRow(r["dag_id"], r["due_epoch"], r["now_epoch"]) for r in records)

    async def initial_demand(self, dag_ids: Sequence[str], *, runs: int, window: int) -> tuple[RunRow, ...]:
        rows: list[RunRow] = []
        for chunk in chunks(dag_ids):
            records = await self._prewarm_read(
                lambda schema: INITIAL_DEMAND_QUERY.format(executor=schema.executor, run_date=schema.run_date),
                list(chunk),
                runs,
                float(window),
            )
            rows += (RunRow(*record) for record in records)
        return tuple(rows)

    async def scheduled_runs(self, start: datetime.datetime, end: datetime.datetime, window: int) -> list[RunRow]:
        records = await self._prewarm_read(
            lambda schema: SCHEDULED_RUNS_QUERY.format(executor=schema.executor),
            start - datetime.timedelta(seconds=RUNS_BEFORE_THE_WINDOW),
            end,
            float(window),
            timeout=page_timeout(self._settings.query_timeout),
        )
        return [RunRow(*record) for record in records]

    async def _prewarm_read(
        self, query: Callable[[DagSchema], str], *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """One pre-warm query, in the words of this database's Airflow version."""
        settings = self._settings
        try:
            pool = await self._ensure_pool()
            async with pool.acquire(timeout=settings.connect_timeout) as connection:
                if self._dag_schema is None:
                    schema = await connection.fetchrow(PREWARM_SCHEMA_QUERY, timeout=settings.query_timeout)
                    assert schema is not None
                    if not schema["has_tables"]:
                        raise DatabaseUnavailable(self._label, NO_PREWARM_TABLES, kind="no_table")
                    self._dag_schema = DagSchema(bool(schema["airflow3"]), bool(schema["has_executor"]))
                text = query(self._dag_schema)
                return list(await connection.fetch(text, *args, timeout=timeout or settings.query_timeout))
        except DatabaseUnavailable:
            raise
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            self._dag_schema = None  # an upgrade or downgrade under us: look again next time
            raise DatabaseUnavailable(
                self._label, "dag or dag_run changed shape; re-reading their schema", kind="schema_changed"
            ) from None
        except Exception as error:
            raise self._explain(error) from None

    def connections_in_use(self) -> int:
        pool = self._pool
        return 0 if pool is None else pool.get_size() - pool.get_idle_size()

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            target = self._target
            # min_size 0: the pool connects on first use, so a bad URL is reported
            # by the call that uses it rather than by pool creation.
            self._pool = await asyncpg.create_pool(
                dsn=target.dsn,
                min_size=0,
                max_size=self._settings.max_size,
                statement_cache_size=0,
                max_inactive_connection_lifetime=60.0,
                timeout=self._settings.connect_timeout,
                command_timeout=self._settings.query_timeout,
                server_settings=dict(target.server_settings),
            )
        return self._pool

    async def _expire(self) -> None:
        if self._pool is not None:
            await self._pool.expire_connections()

    def _explain(self, error: BaseException) -> BaseException:
        """Turn a driver or network error into a reason a person can act on."""
        settings, target = self._settings, self._target
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return error
        kind: FailureKind
        reason: str
        if isinstance(error, TimeoutError | asyncio.TimeoutError):
            kind = "timeout"
            reason = timeout_reason(settings.query_timeout, settings.connect_timeout)
        elif isinstance(error, asyncpg.InvalidPasswordError):
            kind = "authentication"
            reason = f"password authentication failed for user '{target.user}'"
        elif isinstance(error, asyncpg.ProtocolViolationError) and (refusal := _pgbouncer_refusal(error, target)):
            kind, reason = refusal
        elif isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
            kind = "authentication"
            reason = f"not authorised: {error.message}"
        elif isinstance(error, asyncpg.InvalidCatalogNameError):
            kind = "no_database"
            reason = f"database '{target.database}' does not exist"
        elif isinstance(error, asyncpg.InsufficientPrivilegeError):
            kind = "permission"
            reason = (
                "permission denied: grant SELECT on task_instance (and dag, dag_run for prewarm) "
                f"to user '{target.user}' ({error.message})"
            )
        elif isinstance(error, asyncpg.TooManyConnectionsError):
            kind = "too_many_connections"
            reason = f"the server refuses more connections: {error.message}"
        elif isinstance(error, asyncpg.CannotConnectNowError):
            kind = "not_accepting"
            reason = f"the server does not accept connections now: {error.message}"
        elif isinstance(error, asyncpg.QueryCanceledError):
            kind = "cancelled"
            reason = f"the snapshot query was cancelled by the server: {error.message}"
        elif isinstance(error, asyncpg.ClientConfigurationError):
            # An InterfaceError too, but no lost connection: retrying the same options fails the same way.
            kind = "query"
            reason = f"the driver refuses the URL's options: {shown(first_line(error), 200)}"
        elif isinstance(
            error,
            asyncpg.ConnectionDoesNotExistError | asyncpg.InterfaceError | ConnectionResetError | BrokenPipeError,
        ):
            return ConnectionLost(first_line(error))
        elif isinstance(error, OSError):  # refused, DNS, TLS (ssl.SSLError is an OSError) or other
            kind, reason = network_reason(error)
        elif isinstance(error, asyncpg.PostgresError):
            kind = "query"
            reason = f"query failed: {type(error).__name__}: {first_line(error)}"
        else:
            log.error("unexpected error reading %s", self._label, exc_info=error)
            kind = "unexpected"
            reason = f"unexpected error: {type(error).__name__}"
        return DatabaseUnavailable(self._label, reason, kind=kind)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self._settings.connect_timeout)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()


# PgBouncer answers every refusal of its own with SQLSTATE 08P01 (protocol violation) and
# a message, where PostgreSQL has a code per cause; these are the 1.x messages, by cause.
_PGBOUNCER_REFUSALS: tuple[tuple[re.Pattern[str], FailureKind], ...] = (
    (re.compile(r"SASL authentication failed|password authentication failed|no such user"), "authentication"),
    (re.compile(r'database ".*" does not exist|no such database'), "no_database"),
    (
        re.compile(r"no more connections allowed|max_client_conn|max_db_connections|max_user_connections"),
        "too_many_connections",
    ),
    (re.compile(r"query_wait_timeout|server_connect_timeout|client_login_timeout"), "timeout"),
    (re.compile(r"cannot connect to server|server login has been failing|server conn crashed"), "network"),
    (re.compile(r"pgbouncer is (paused|shutting down)|database .* is (paused|disabled)"), "not_accepting"),
    (re.compile(r"unsupported startup parameter"), "query"),
)


def _pgbouncer_refusal(
    error: asyncpg.ProtocolViolationError, target: ConnectionTarget
) -> tuple[FailureKind, str] | None:
    """(kind, reason) for a refusal by PgBouncer, named as PostgreSQL's own would be; None otherwise."""
    message = error.message
    kind = next((kind for pattern, kind in _PGBOUNCER_REFUSALS if pattern.search(message)), None)
    if kind is None:
        return None
    if kind == "authentication":
        return kind, f"password authentication failed for user '{target.user}' (PgBouncer: {message})"
    if kind == "no_database":
        return kind, f"database '{target.database}' does not exist (PgBouncer: {message})"
    if kind == "query":
        return kind, (
            f"PgBouncer: {message}: it comes from the URL's options= (-c name=value); list it in PgBouncer's "
            "ignore_startup_parameters, or set it for the user (ALTER ROLE ... SET) and drop it from the URL"
        )
    return kind, f"PgBouncer: {message}"
