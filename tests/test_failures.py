"""Bad databases get clear UNAVAILABLE / DEADLINE_EXCEEDED answers, never a made-up 0."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import grpc
import pytest

from scaler.fixtures.airflow_schema import LATEST, schema_sql
from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from scaler.rules.database_urls import parse_url
from scaler.rules.trigger_metadata import NamedDatabase
from scaler.service.metrics import NAMESPACE as N
from scaler.service.server import SERVICE_NAME as SERVICE
from tests.conftest import (
    AirflowDatabase,
    PostgresServer,
    StartScaler,
    fast_settings,
    trusts_any_password,
    until,
    until_async,
)
from tests.support.keda import Keda
from tests.support.scrape import scrape
from tests.support.tcp_proxy import TcpProxy


async def unavailable(keda: Keda, metadata: dict[str, str]) -> str:
    """Poll and return the UNAVAILABLE details; fail on any other outcome."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keda.poll(metadata)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return caught.value.details() or ""


async def test_database_that_goes_away_is_unavailable_then_recovers(
    airflow3_db: AirflowDatabase, proxied: tuple[TcpProxy, str], start_scaler: StartScaler
) -> None:
    proxy, url = proxied
    await airflow3_db.add_many(20, "queued")
    scaler = await start_scaler(airflow=url)
    metadata = {"database": "airflow"}
    assert await scaler.keda.workers(metadata) == 2

    await proxy.cut()
    details = await unavailable(scaler.keda, metadata)
    assert "Airflow database airflow:" in details
    assert "connection refused" in details or "connection lost" in details

    await proxy.start()  # same port again
    assert await scaler.keda.workers(metadata) == 2


async def test_real_server_crash_and_restart_recovers(start_scaler: StartScaler) -> None:
    # Commits must survive the crash: the throwaway default (synchronous_commit off) may lose them.
    with EmbeddedPostgres(stat_statements=False, settings={"synchronous_commit": "on"}) as postgres:
        admin = await asyncpg.connect(postgres.dsn)
        await admin.execute(schema_sql(LATEST))
        await admin.execute(
            "INSERT INTO task_instance (id, task_id, dag_id, run_id, state, queue, pool, pool_slots, try_number) "
            "SELECT gen_random_uuid(), 't' || i, 'd', 'r', 'queued', 'default', 'p', 1, 1 FROM generate_series(1, 5) i"
        )
        await admin.close()
        scaler = await start_scaler(airflow=postgres.dsn)
        metadata = {"database": "airflow", "concurrency": "2"}
        assert await scaler.keda.workers(metadata) == 3

        await asyncio.to_thread(postgres.kill)
        details = await unavailable(scaler.keda, metadata)
        assert "connection" in details
        assert postgres.password not in details

        await asyncio.to_thread(postgres.start)
        # The pool's old connections are dead; the scaler must not report a healthy database down.
        assert await scaler.keda.workers(metadata) == 3


async def test_wrong_password_is_named(
    airflow3_db: AirflowDatabase, postgres: PostgresServer, start_scaler: StartScaler
) -> None:
    wrong = await airflow3_db.role_dsn("scaler_pw_test", "right-pw-1", login_password="wrong-pw-2")
    if await trusts_any_password(wrong):
        pytest.skip("this PostgreSQL trusts TCP connections, so no password can be wrong")
    scaler = await start_scaler()
    details = await unavailable(scaler.keda, {"connectionFromEnv": wrong})
    assert "password authentication failed for user 'scaler_pw_test'" in details
    assert "wrong-pw-2" not in details


async def test_missing_table_is_named(postgres: PostgresServer, start_scaler: StartScaler) -> None:
    # The server's maintenance database has no task_instance table.
    scaler = await start_scaler(airflow=postgres.maintenance_dsn)
    details = await unavailable(scaler.keda, {"database": "airflow"})
    assert "no task_instance table" in details


async def test_missing_database_is_named(postgres: PostgresServer, start_scaler: StartScaler) -> None:
    scaler = await start_scaler(airflow=postgres.dsn_for("no_such_airflow_db"))
    details = await unavailable(scaler.keda, {"database": "airflow"})
    assert "database 'no_such_airflow_db' does not exist" in details


async def test_missing_select_privilege_is_named(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    url = await airflow3_db.role_dsn("scaler_noperm", "noperm-pw")
    await airflow3_db.connection.execute("REVOKE ALL ON task_instance FROM PUBLIC")
    scaler = await start_scaler()
    details = await unavailable(scaler.keda, {"connectionFromEnv": url})
    assert (
        "permission denied: grant SELECT on task_instance (and dag, dag_run for prewarm) to user 'scaler_noperm'"
        in details
    )


async def test_refused_port_is_named(start_scaler: StartScaler) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        scaler = await start_scaler(airflow=f"postgresql://airflow:pw@127.0.0.1:{port}/airflow")
        details = await unavailable(scaler.keda, {"database": "airflow"})
    assert details == "Airflow database airflow: connection refused"


async def test_slow_database_times_out_then_caller_deadline_is_honoured(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    async with airflow3_db.locked():
        scaler = await start_scaler(fast_settings({"airflow": parse_url(airflow3_db.dsn)}, query_timeout=0.5))
        details = await unavailable(scaler.keda, {"database": "airflow"})
        assert "no answer within 0.5s" in details

        patient = await start_scaler(fast_settings({"airflow": parse_url(airflow3_db.dsn)}, query_timeout=120))
        ref = Keda.ref({"database": "airflow"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await patient.keda.stub.IsActive(ref, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server's handler gave up with the caller (the lock and the 120 s query timeout still hold):
        # it is counted as finished, with the deadline's code or the client's cancel, whoever was first.
        port = patient.server.http.port

        async def handler_finished() -> bool:
            m = await scrape(port)
            codes = ("DEADLINE_EXCEEDED", "CANCELLED")
            return any(m.value(f"{N}_grpc_calls_total", service=SERVICE, method="IsActive", code=c) for c in codes)

        await until_async(handler_finished)


async def test_stream_stays_open_and_silent_while_the_database_fails(
    airflow3_db: AirflowDatabase, proxied: tuple[TcpProxy, str], start_scaler: StartScaler
) -> None:
    proxy, url = proxied
    await airflow3_db.add_many(1, "queued")
    scaler = await start_scaler(airflow=url)
    stream = scaler.keda.stream({"database": "airflow"})
    assert await asyncio.wait_for(stream.next(), 60) is True

    await proxy.cut()
    await airflow3_db.connection.execute("UPDATE task_instance SET state = 'success'")
    read = asyncio.ensure_future(stream.next())
    # Until the watcher has seen the failure (its stream is then held), then at least one more read.
    watcher = scaler.server.databases.watcher_for(NamedDatabase("airflow"))
    await until(lambda: watcher.failing)
    await asyncio.sleep(0.2)  # a few more watch intervals: time for a wrong message to show (none may)
    assert not read.done(), "nothing may be sent while the database cannot be read"

    await proxy.start()
    message = await asyncio.wait_for(read, 60)
    assert message is False
    stream.cancel()
