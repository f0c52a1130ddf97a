"""The scaler over a real socket, called as KEDA calls it, on every real Airflow schema."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import pytest

from scaler._proto import externalscaler_pb2 as pb
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.service.servicer import METRIC_NAME
from tests.conftest import AirflowDatabase, PostgresServer, StartScaler
from tests.support.keda import Keda

K8S_PATH = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"


async def test_empty_table_asks_for_no_workers_and_is_inactive(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start_scaler(airflow=airflow_db.dsn)
    poll = await scaler.keda.poll({"database": "airflow"})
    assert (poll.value, poll.value_int, poll.active) == (0.0, 0, False)
    assert (poll.metric_name, poll.target, poll.target_int) == (METRIC_NAME, 1.0, 1)


async def test_seventeen_running_and_sixteen_queued_need_three_workers(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    await airflow_db.add_many(17, "running")
    await airflow_db.add_many(16, "queued")
    await airflow_db.add_many(40, "success")  # finished work never counts
    await airflow_db.add_many(5, "deferred")  # waits in the triggerer, needs no worker slot
    await airflow_db.add_many(3, "scheduled")
    scaler = await start_scaler(airflow=airflow_db.dsn)
    poll = await scaler.keda.poll({"database": "airflow", "concurrency": "16"})
    assert (poll.value, poll.value_int, poll.active) == (3.0, 3, True)


async def test_connection_from_env_works_in_every_url_form(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    await airflow_db.add_many(5, "queued")
    scaler = await start_scaler()
    for scheme in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg"):
        url = airflow_db.dsn.replace("postgresql://", f"{scheme}://", 1) + "?sslmode=disable"
        assert await scaler.keda.workers({"connectionFromEnv": url, "concurrency": "2"}) == 3, scheme


async def test_queue_filters(airflow_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    await airflow_db.add_many(10, "running", queue="default")
    await airflow_db.add_many(7, "queued", queue="ml")
    await airflow_db.add_many(30, "queued", queue="kubernetes")
    scaler = await start_scaler(airflow=airflow_db.dsn)
    keda = scaler.keda
    assert await keda.workers({"database": "airflow", "concurrency": "1"}) == 47
    assert await keda.workers({"database": "airflow", "concurrency": "1", "queues": "ml"}) == 7
    assert await keda.workers({"database": "airflow", "concurrency": "1", "queues": "default,ml"}) == 17
    assert await keda.workers({"database": "airflow", "concurrency": "1", "excludeQueues": "kubernetes"}) == 17


async def test_executor_filter_keeps_null_and_matches_every_spelling(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    if not airflow_db.has_executor_column:
        pytest.skip("Airflow before 2.10 has no executor column (covered by the next test)")
    await airflow_db.add(
        TaskInstance("default_executor", "running", executor=None),
        TaskInstance("celery_alias", "queued", executor="CeleryExecutor"),
        TaskInstance("k8s_class", "queued", executor="KubernetesExecutor"),
        TaskInstance("k8s_path", "running", executor=K8S_PATH),
        TaskInstance("k8s_alias", "queued", executor="my_k8s"),
    )
    scaler = await start_scaler(airflow=airflow_db.dsn)
    metadata = {"database": "airflow", "concurrency": "1"}
    assert await scaler.keda.workers(metadata) == 5
    assert await scaler.keda.workers({**metadata, "excludeExecutors": "KubernetesExecutor"}) == 3
    assert await scaler.keda.workers({**metadata, "excludeExecutors": K8S_PATH}) == 3
    assert await scaler.keda.workers({**metadata, "excludeExecutors": f"my_k8s:{K8S_PATH}"}) == 2


async def test_schema_without_executor_column_counts_everything(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    if airflow_db.has_executor_column:
        pytest.skip("this schema has the executor column")
    await airflow_db.add_many(3, "running")
    await airflow_db.add_many(2, "queued")
    scaler = await start_scaler(airflow=airflow_db.dsn)
    metadata = {"database": "airflow", "concurrency": "1", "excludeExecutors": "KubernetesExecutor"}
    assert await scaler.keda.workers(metadata) == 5


async def test_activation_threshold(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    await airflow3_db.add_many(3, "queued")
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    assert not (await scaler.keda.poll({"database": "airflow", "activationThreshold": "3"})).active
    assert (await scaler.keda.poll({"database": "airflow", "activationThreshold": "2"})).active


GARBAGE = {
    "no database": ({}, "metadata key 'connectionFromEnv'"),
    "concurrency zero": ({"database": "airflow", "concurrency": "0"}, "metadata key 'concurrency': 0 is less than 1"),
    "concurrency text": ({"database": "airflow", "concurrency": "many"}, "'many' is not an integer"),
    "unknown database name": ({"database": "nope"}, "no database named 'nope' is configured on the scaler"),
    "mssql url": ({"connectionFromEnv": "mssql://u:secretpw@h/db"}, "unsupported URL scheme 'mssql://'"),
}


@pytest.mark.parametrize(("metadata", "message"), GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_metadata_is_invalid_argument_on_every_call(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler, metadata: dict[str, str], message: str
) -> None:
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    ref = Keda.ref(metadata)
    calls: dict[str, Awaitable[object]] = {
        "GetMetricSpec": scaler.keda.stub.GetMetricSpec(ref, timeout=3),
        "GetMetrics": scaler.keda.stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=METRIC_NAME), timeout=3
        ),
        "IsActive": scaler.keda.stub.IsActive(ref, timeout=3),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
        assert message in (caught.value.details() or ""), rpc
        assert "secretpw" not in (caught.value.details() or "")
    if "concurrency" in metadata or not metadata or metadata.get("database") == "nope":
        return
    stream = scaler.keda.stub.StreamIsActive(ref)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_metric_spec_is_unimplemented(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    stream = scaler.keda.stub.StreamMetricSpec(Keda.ref({"database": "airflow"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_sends_current_state_at_once_then_changes(
    airflow_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start_scaler(airflow=airflow_db.dsn)
    stream = scaler.keda.stream({"database": "airflow"})
    first = await asyncio.wait_for(stream.next(), 60)
    assert first is False
    await airflow_db.add_many(1, "queued")
    second = await asyncio.wait_for(stream.next(), 60)
    assert second is True
    await airflow_db.connection.execute("UPDATE task_instance SET state = 'success'")
    third = await asyncio.wait_for(stream.next(), 60)
    assert third is False
    stream.cancel()


async def test_many_scaled_objects_share_one_pool_per_database(
    airflow3_db: AirflowDatabase, postgres: PostgresServer, start_scaler: StartScaler
) -> None:
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    await asyncio.gather(
        *(scaler.keda.poll({"database": "airflow", "queues": f"q{i}"}, name=f"so{i}") for i in range(20)),
        *(scaler.keda.poll({"connectionFromEnv": airflow3_db.dsn}, name=f"env{i}") for i in range(20)),
    )
    if postgres.bouncer is not None:
        # Through PgBouncer the scaler's connections are PgBouncer's clients, not server backends;
        # the test's own connection goes direct, so every client of this database is the scaler's.
        clients = await asyncio.to_thread(postgres.bouncer.show, "CLIENTS")
        backends = sum(1 for client in clients if client["database"] == airflow3_db.name)
    else:
        backends = await airflow3_db.connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'airflow-keda-scaler'"
        )
    # Two distinct databases as the scaler sees them (by name, by URL), at most 2 connections each.
    assert 1 <= backends <= 4
