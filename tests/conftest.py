"""Real parts for every test: a PostgreSQL server, Airflow's own tables, the gRPC server.

The suite uses the server named by AIRFLOW_KEDA_SCALER_TEST_DSN (a superuser or
a role that may create databases) when it is set; otherwise it starts a
throwaway PostgreSQL in a temporary folder, so a fresh clone needs nothing
running.

Every test that uses the server runs twice: once with the scaler connecting to
it directly (`[direct-...]`) and once through a throwaway PgBouncer in
transaction pooling mode (`[pgbouncer-...]`), as many Airflow installations
run. The tests' own setup connections always go direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import hypothesis
import pytest

from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.fixtures.airflow_schema import (
    VERSIONS,
    TaskInstance,
    has_executor_column,
    insert_task_instances,
    schema_sql,
)
from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from scaler.rules.database_urls import ConnectionTarget, parse_url
from scaler.rules.prewarm import PrewarmSettings
from scaler.rules.snapshot import Clock
from scaler.service.database_caches import DatabaseSettings
from scaler.service.server import ScalerServer, ServerSettings
from tests.support.keda import Keda
from tests.support.servers import PgBouncer, ServerUnavailable
from tests.support.tcp_proxy import TcpProxy

DSN_ENV = "AIRFLOW_KEDA_SCALER_TEST_DSN"

# Property tests: the same examples on every run (a red CI is a finding, not a roll of the dice) and
# no deadline (a loaded machine is slow, not wrong). HYPOTHESIS_PROFILE=explore searches further.
hypothesis.settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=300, database=None, print_blob=True
)
hypothesis.settings.register_profile("explore", deadline=None, max_examples=20_000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
ROUTES = ("direct", "pgbouncer")


@dataclass
class PostgresServer:
    """The server under test, and the route the scaler takes to it (direct or through PgBouncer)."""

    admin_dsn: str  # direct: the tests' own setup
    embedded: EmbeddedPostgres | None
    bouncer: PgBouncer | None = None

    def direct_dsn_for(self, database: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(parts._replace(path="/" + database))

    def dsn_for(self, database: str) -> str:
        """What the scaler is given for `database`: through PgBouncer on the pgbouncer route."""
        direct = self.direct_dsn_for(database)
        if self.bouncer is None:
            return direct
        return replace_login(direct, host="127.0.0.1", port=self.bouncer.port)

    @property
    def maintenance_dsn(self) -> str:
        """dsn_for the admin DSN's own database (which has no task_instance table)."""
        return self.dsn_for(urlsplit(self.admin_dsn).path.lstrip("/") or "postgres")


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    if dsn := os.environ.get(DSN_ENV):
        yield dsn, None
        return
    with EmbeddedPostgres() as server:
        yield server.dsn, server


def pgbouncer_or_skip(dsn: str, *, pool_size: int = 4) -> PgBouncer:
    """A (not yet started) PgBouncer in front of the server, or a skip that says why there is none."""
    if not urlsplit(dsn).password:
        # PgBouncer then has nothing to log in with but trust, which lets wrong passwords in and
        # holds clients of a missing database until its login retry: not what production runs.
        pytest.skip(f"the PgBouncer route needs a server that checks passwords; {DSN_ENV} has none")
    try:
        return PgBouncer(dsn, pool_size=pool_size)
    except ServerUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="session", params=ROUTES)
def postgres(
    request: pytest.FixtureRequest, postgres_admin_dsn: tuple[str, EmbeddedPostgres | None]
) -> Iterator[PostgresServer]:
    dsn, embedded = postgres_admin_dsn
    if request.param == "direct":
        yield PostgresServer(admin_dsn=dsn, embedded=embedded)
        return
    with pgbouncer_or_skip(dsn) as bouncer:
        yield PostgresServer(admin_dsn=dsn, embedded=embedded, bouncer=bouncer)


async def until(condition: Callable[[], object], limit: float = 60.0) -> None:
    """Wait until the condition holds: for state nothing signals (another process, a server's counters).

    `limit` only turns a hang into a failure; no verdict depends on how fast the machine is.
    """
    await until_async(lambda: _now(condition), limit)


async def _now(condition: Callable[[], object]) -> object:
    return condition()


async def until_async(condition: Callable[[], Awaitable[object]], limit: float = 60.0) -> None:
    async with asyncio.timeout(limit):
        while not await condition():  # noqa: ASYNC110 - nothing signals the state waited for
            await asyncio.sleep(0.02)


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replace_login(
    dsn: str, *, user: str | None = None, password: str | None = None, host: str | None = None, port: int | None = None
) -> str:
    """The DSN with its user, password, host or port replaced (the others kept)."""
    parts = urlsplit(dsn)
    user = user or parts.username or ""
    password = password if password is not None else parts.password
    login = f"{user}:{password}" if password else user
    return parts._replace(netloc=f"{login}@{host or parts.hostname}:{port or parts.port or 5432}").geturl()


def closed_port_dsn(database: AirflowDatabase) -> str:
    """The database's DSN pointing at a port where nothing listens (connection refused)."""
    return replace_login(database.dsn, host="127.0.0.1", port=free_port())


def with_password(dsn: str, password: str = "never-in-logs-7f3a9c") -> str:
    """The DSN with a password in it (a trusting server ignores it), for no-secret-in-logs tests."""
    return dsn if urlsplit(dsn).password else replace_login(dsn, password=password)


async def trusts_any_password(dsn: str) -> bool:
    """Whether this server lets a wrong password in (trust auth), so password tests must skip."""
    try:
        connection = await asyncpg.connect(dsn, statement_cache_size=0)
    except (asyncpg.InvalidPasswordError, asyncpg.ProtocolViolationError):
        # PgBouncer refuses a wrong password with 08P01 "SASL authentication failed".
        return False
    await connection.close()
    return True


@dataclass
class AirflowDatabase:
    """A fresh database holding one Airflow version's task_instance table."""

    version: str
    name: str
    dsn: str  # what the scaler is given (through PgBouncer on that route)
    direct_dsn: str  # the tests' own connections
    connection: asyncpg.Connection

    @property
    def has_executor_column(self) -> bool:
        return has_executor_column(self.version)

    async def add(self, *tasks: TaskInstance) -> None:
        await insert_task_instances(self.connection, tasks)

    async def add_many(self, count: int, state: str, **fields: str | None) -> None:
        prefix = uuid.uuid4().hex[:8]
        await self.add(*(TaskInstance(f"{state}_{prefix}_{i}", state, **fields) for i in range(count)))  # type: ignore[arg-type]

    async def role_dsn(self, role: str, password: str, *, login_password: str | None = None) -> str:
        """Create a login role (no privileges) and return a DSN that logs in as it.

        login_password, when given, is what the DSN carries instead of the role's password.
        """
        await self.connection.execute(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        return replace_login(self.dsn, user=role, password=login_password or password)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold an exclusive lock on task_instance, so snapshot queries block until the block ends."""
        blocker = await asyncpg.connect(self.direct_dsn)
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE task_instance IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
            await blocker.close()

    async def until_snapshot_query_waits(self, limit: float = 60.0) -> None:
        """Until the scaler's snapshot query runs on the server, blocked by locked(): a call is in flight."""
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock' AND query LIKE '%airflow-keda-scaler snapshot%'"
        )
        await until_async(lambda: self.connection.fetchval(query), limit)

    async def snapshot_queries(self) -> int:
        """How many snapshot queries this database's server executed (pg_stat_statements)."""
        value = await self.connection.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database() AND s.query LIKE '%airflow-keda-scaler snapshot%'"
        )
        return int(value)


async def create_airflow_database(postgres: PostgresServer, version: str) -> AirflowDatabase:
    name = f"airflow_test_{version.replace('.', '_')}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    direct_dsn = postgres.direct_dsn_for(name)
    connection = await asyncpg.connect(direct_dsn)
    await connection.execute(schema_sql(version))
    return AirflowDatabase(
        version=version, name=name, dsn=postgres.dsn_for(name), direct_dsn=direct_dsn, connection=connection
    )


async def drop_airflow_database(postgres: PostgresServer, database: AirflowDatabase) -> None:
    await database.connection.close()
    admin = await asyncpg.connect(postgres.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=VERSIONS)
async def airflow_db(request: pytest.FixtureRequest, postgres: PostgresServer) -> AsyncIterator[AirflowDatabase]:
    """Every test using this runs once per real Airflow schema (2.9.3, 2.10.5, 3.3.2)."""
    database = await create_airflow_database(postgres, request.param)
    yield database
    await drop_airflow_database(postgres, database)


@pytest.fixture
async def airflow3_db(postgres: PostgresServer) -> AsyncIterator[AirflowDatabase]:
    """One database with the newest schema, for tests about mechanics rather than schemas."""
    database = await create_airflow_database(postgres, VERSIONS[-1])
    yield database
    await drop_airflow_database(postgres, database)


@pytest.fixture
async def direct_db(postgres_admin_dsn: tuple[str, EmbeddedPostgres | None]) -> AsyncIterator[AirflowDatabase]:
    """One database with the newest schema on the direct route only (not through PgBouncer too): for tests whose
    subject is not the route to the database and that are costly to run twice."""
    dsn, embedded = postgres_admin_dsn
    server = PostgresServer(admin_dsn=dsn, embedded=embedded)
    database = await create_airflow_database(server, VERSIONS[-1])
    yield database
    await drop_airflow_database(server, database)


@pytest.fixture
async def proxied(airflow3_db: AirflowDatabase) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the database (cut() it to make the database vanish) and a DSN through it."""
    parts = urlsplit(airflow3_db.dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    yield proxy, replace_login(airflow3_db.dsn, host="127.0.0.1", port=proxy.port)
    await proxy.cut()


def fast_settings(
    databases: dict[str, ConnectionTarget] | None = None, *, prewarm: PrewarmSettings | None = None, **registry: float
) -> ServerSettings:
    return ServerSettings(
        grpc_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        shutdown_grace=5.0,
        database_settings=DatabaseSettings(
            refresh_interval=registry.get("refresh_interval", 0.0),
            watch_interval=registry.get("watch_interval", 0.05),
            idle_timeout=registry.get("idle_timeout", 300.0),
            pool=PoolSettings(
                connect_timeout=registry.get("connect_timeout", 2.0),
                query_timeout=registry.get("query_timeout", 2.0),
            ),
            prewarm=prewarm or PrewarmSettings(),
        ),
        databases=databases or {},
        # Never the developer's own cluster: the Kubernetes tests bring their own API server.
        kubernetes=KubernetesSettings(mode="off"),
        # Not the test runner's cgroup: the budget's tests set their own limit.
        memory_limit=0,
    )


@dataclass
class Running:
    server: ScalerServer
    channel: grpc.aio.Channel
    keda: Keda


StartScaler = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_scaler() -> AsyncIterator[StartScaler]:
    """Start the production server on a free port and a KEDA-shaped client for it."""
    started: list[Running] = []

    async def start(
        settings: ServerSettings | None = None, *, clock: Clock = time.monotonic, **databases: str
    ) -> Running:
        configured = {name: parse_url(url) for name, url in databases.items()}
        if settings is None:
            settings = fast_settings(configured)
        server = ScalerServer(settings, clock=clock)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        running = Running(server, channel, Keda(channel))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close(grace=None)
        await running.server.stop()
