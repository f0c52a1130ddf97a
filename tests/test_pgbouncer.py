"""PgBouncer in transaction pooling mode: what breaks the chart's trigger must not break the scaler.

The rest of the suite already runs every PostgreSQL test through PgBouncer
(the `[pgbouncer-...]` ids, see conftest.py). These tests pin down the two
things that are PgBouncer's own: server connections shared between clients
from one transaction to the next, and PgBouncer restarting under a running
scaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest

from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from tests.conftest import (
    AirflowDatabase,
    PostgresServer,
    StartScaler,
    create_airflow_database,
    drop_airflow_database,
    pgbouncer_or_skip,
)
from tests.support.servers import PgBouncer


@pytest.fixture
def bouncer(postgres_admin_dsn: tuple[str, EmbeddedPostgres | None]) -> Iterator[PgBouncer]:
    """A PgBouncer of its own with two server connections per database, handed out per transaction."""
    with pgbouncer_or_skip(postgres_admin_dsn[0], pool_size=2) as server:
        yield server


@contextlib.asynccontextmanager
async def holding_a_server_connection(url: str) -> AsyncIterator[None]:
    """Keep one of PgBouncer's server connections busy in an open transaction."""
    holder = await asyncpg.connect(url, statement_cache_size=0)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT 1")
    try:
        yield
    finally:
        await transaction.rollback()
        await holder.close()


@pytest.fixture
async def database(postgres_admin_dsn: tuple[str, EmbeddedPostgres | None]) -> AsyncIterator[AirflowDatabase]:
    direct = PostgresServer(admin_dsn=postgres_admin_dsn[0], embedded=postgres_admin_dsn[1])
    created = await create_airflow_database(direct, "3.3.2")
    yield created
    await drop_airflow_database(direct, created)


def through(bouncer: PgBouncer, database: AirflowDatabase) -> str:
    return bouncer.dsn_for(database.name)


async def test_this_pgbouncer_breaks_a_client_that_caches_prepared_statements(
    bouncer: PgBouncer, database: AirflowDatabase
) -> None:
    # The control: asyncpg's default statement cache prepares a named statement on the
    # server connection PgBouncer lent for one transaction; the next transaction may get
    # another server connection, where that name does not exist. If this stopped failing,
    # the PgBouncer under test would not be in transaction mode and the test below would
    # prove nothing.
    url = through(bouncer, database)
    query = "SELECT count(*) FROM task_instance WHERE state IN ('running', 'queued')"
    cached = await asyncpg.connect(url)
    try:
        await cached.fetchval(query)
        async with holding_a_server_connection(url):
            with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
                await cached.fetchval(query)
    finally:
        await cached.close()


async def test_scalers_moved_between_server_connections_never_collide(
    bouncer: PgBouncer, database: AirflowDatabase, start_scaler: StartScaler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scaler")
    await database.add_many(5, "running")
    await database.add_many(12, "queued")
    url = through(bouncer, database)
    scalers = [await start_scaler(airflow=url) for _ in range(2)]
    metadata = {"database": "airflow", "concurrency": "4"}
    for round_ in range(20):
        # The same moves that broke the cached client above, and two scalers taking turns.
        assert await scalers[0].keda.workers(metadata) == 5, f"round {round_}"
        async with holding_a_server_connection(url):
            results = await asyncio.gather(*(scaler.keda.workers(metadata) for scaler in scalers))
        assert results == [5, 5], f"round {round_}"
    assert "prepared statement" not in caplog.text
    assert not [record for record in caplog.records if record.name.startswith("scaler")]


async def test_scaler_keeps_answering_across_pgbouncer_restarts(
    bouncer: PgBouncer, database: AirflowDatabase, start_scaler: StartScaler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    await database.add_many(6, "queued")
    scaler = await start_scaler(airflow=through(bouncer, database))
    metadata = {"database": "airflow", "concurrency": "4"}
    assert await scaler.keda.workers(metadata) == 2

    # A graceful restart (SIGTERM, as Kubernetes sends): the pool's connections are dead,
    # the first read after it retries on a new connection and nobody sees an error.
    await asyncio.to_thread(bouncer.restart)
    await database.add_many(6, "running")
    assert await scaler.keda.workers(metadata) == 3

    # A crash with work arriving meanwhile: while PgBouncer is gone the answer is
    # UNAVAILABLE naming the cause (never a made-up 0); once it is back, the new demand.
    await asyncio.to_thread(bouncer.kill)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.keda.poll(metadata)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "connection refused" in (caught.value.details() or "")
    await database.add_many(4, "queued")
    await asyncio.to_thread(bouncer.start)
    assert await scaler.keda.workers(metadata) == 4
    for _ in range(10):
        assert await scaler.keda.workers(metadata) == 4

    assert "prepared statement" not in caplog.text
    assert bouncer.admin_password not in caplog.text


async def test_a_server_setting_pgbouncer_refuses_is_named_with_the_fix(
    bouncer: PgBouncer, database: AirflowDatabase, start_scaler: StartScaler
) -> None:
    # asyncpg sends the URL's options=-c settings as startup parameters; PgBouncer accepts only a few.
    url = through(bouncer, database) + "?options=-csearch_path%3Dpublic"
    scaler = await start_scaler()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.keda.poll({"connectionFromEnv": url})
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert "unsupported startup parameter: search_path" in details
    assert "ignore_startup_parameters" in details
