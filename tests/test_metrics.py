"""/metrics after a scripted sequence of scaling changes: the right values, promtool-clean, no secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import time
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler.rules.database_urls import parse_url
from scaler.service.metrics import NAMESPACE
from scaler.service.servicer import METRIC_NAME
from tests.conftest import (
    AirflowDatabase,
    Running,
    StartScaler,
    closed_port_dsn,
    fast_settings,
    until,
    until_async,
    with_password,
)
from tests.support.keda import Keda
from tests.support.scrape import PROMTOOL, get, promtool_problems, scrape, scrape_with_every_series

N = NAMESPACE
SERVICE = "externalscaler.ExternalScaler"
CELERY = {"namespace": "airflow", "scaled_object": "celery-worker"}


async def start(start_scaler: StartScaler, database: AirflowDatabase, *, series_ttl: float = 600.0) -> Running:
    settings = fast_settings({"airflow": parse_url(with_password(database.dsn))})
    return await start_scaler(dataclasses.replace(settings, series_ttl=series_ttl))


async def test_scripted_scaling_changes_show_in_metrics(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start(start_scaler, airflow3_db)
    port = scaler.server.http.port
    metadata = {"database": "airflow", "concurrency": "16"}
    started = time.time()

    # 1. Nothing to do: 0 workers, inactive; a series at 0 for the change counter.
    assert await scaler.keda.workers(metadata) == 0
    m = await scrape(port)
    assert m.value(f"{N}_desired_workers", **CELERY) == 0
    assert m.value(f"{N}_active", **CELERY) == 0
    assert m.value(f"{N}_decision_changes_total", **CELERY) == 0
    assert m.value(f"{N}_demand_tasks", **CELERY, state="queued") == 0

    # 2. Work arrives on two queues: 5 running + 23 queued -> ceil(28/16) = 2 workers.
    await airflow3_db.add_many(5, "running", queue="default")
    await airflow3_db.add_many(20, "queued", queue="default")
    await airflow3_db.add_many(3, "queued", queue="ml")
    assert await scaler.keda.workers(metadata) == 2
    m = await scrape(port)
    assert m.value(f"{N}_desired_workers", **CELERY) == 2
    assert m.value(f"{N}_active", **CELERY) == 1
    assert m.value(f"{N}_decision_changes_total", **CELERY) == 1
    assert m.value(f"{N}_demand_tasks", **CELERY, state="running") == 5
    assert m.value(f"{N}_demand_tasks", **CELERY, state="queued") == 23
    assert m.value(f"{N}_queue_demand_tasks", **CELERY, queue="default", state="queued") == 20
    assert m.value(f"{N}_queue_demand_tasks", **CELERY, queue="ml", state="queued") == 3

    # 3. The same answer again is not a change.
    assert await scaler.keda.workers(metadata) == 2
    assert (await scrape(port)).value(f"{N}_decision_changes_total", **CELERY) == 1

    # 4. The ml queue drains and default grows: 3 workers; ml shows 0 rather than vanishing.
    await airflow3_db.connection.execute("DELETE FROM task_instance WHERE queue = 'ml'")
    await airflow3_db.add_many(20, "queued", queue="default")
    assert await scaler.keda.workers(metadata) == 3
    m = await scrape(port)
    assert m.value(f"{N}_desired_workers", **CELERY) == 3
    assert m.value(f"{N}_decision_changes_total", **CELERY) == 2
    assert m.value(f"{N}_queue_demand_tasks", **CELERY, queue="ml", state="queued") == 0
    assert m.value(f"{N}_queue_demand_tasks", **CELERY, queue="default", state="queued") == 40
    last = m.value(f"{N}_last_decision_timestamp_seconds", **CELERY)
    assert last is not None
    assert started <= last <= time.time()

    # Four polls, three calls each, all OK; each one timed.
    for method in ("GetMetricSpec", "GetMetrics", "IsActive"):
        assert m.value(f"{N}_grpc_calls_total", service=SERVICE, method=method, code="OK") == 4
        assert m.value(f"{N}_grpc_call_duration_seconds_count", service=SERVICE, method=method) == 4

    # The database: every call read a fresh snapshot (refresh interval 0 here), none failed.
    queries = m.value(f"{N}_snapshot_query_duration_seconds_count", database="airflow")
    assert queries is not None
    assert queries >= 8
    assert m.samples(f"{N}_snapshot_errors_total", database="airflow") == []
    assert m.value(f"{N}_database_up", database="airflow") == 1
    age = m.value(f"{N}_snapshot_age_seconds", database="airflow")
    assert age is not None
    assert 0 <= age < 5
    assert m.value(f"{N}_pool_connections_in_use", database="airflow") == 0


async def test_errors_are_counted_by_status_code_and_kind(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start(start_scaler, airflow3_db)
    port = scaler.server.http.port
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scaler.keda.poll({"database": "airflow", "concurrency": "zero"})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    closed = closed_port_dsn(airflow3_db)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scaler.keda.poll({"connectionFromEnv": closed})
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # A refused call is counted when its handler ends, a moment after gRPC's abort sent the status:
    # the caller can hear of it before the count (a stress run caught 1 of 2 here).
    async def both_counted() -> bool:
        counted = (await scrape(port)).value(
            f"{N}_grpc_calls_total", service=SERVICE, method="GetMetrics", code="UNAVAILABLE"
        )
        return counted is not None and counted >= 2

    await until_async(both_counted)
    m = await scrape(port)
    assert m.value(f"{N}_grpc_calls_total", service=SERVICE, method="GetMetricSpec", code="INVALID_ARGUMENT") == 1
    assert m.value(f"{N}_grpc_calls_total", service=SERVICE, method="GetMetrics", code="UNAVAILABLE") == 2
    label = f"127.0.0.1:{urlsplit(closed).port}/{airflow3_db.name}"
    assert m.value(f"{N}_snapshot_errors_total", database=label, kind="refused") == 2
    assert m.value(f"{N}_database_up", database=label) == 0
    # Nothing about the broken ScaledObject was decided, and nothing was made up.
    assert m.samples(f"{N}_desired_workers") == []
    assert "never-in-logs" not in m.text


async def test_pool_connections_in_use_while_a_query_runs(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start(start_scaler, airflow3_db)
    metadata = {"database": "airflow"}
    await scaler.keda.workers(metadata)  # the pool exists and has learnt the schema
    async with airflow3_db.locked():
        request = pb.GetMetricsRequest(scaledObjectRef=Keda.ref(metadata), metricName=METRIC_NAME)
        in_flight = asyncio.ensure_future(scaler.keda.stub.GetMetrics(request, timeout=60))
        await airflow3_db.until_snapshot_query_waits()
        assert (await scrape(scaler.server.http.port)).value(f"{N}_pool_connections_in_use", database="airflow") == 1
    await in_flight
    assert (await scrape(scaler.server.http.port)).value(f"{N}_pool_connections_in_use", database="airflow") == 0


async def test_streams_are_counted_open_and_pushed(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    scaler = await start(start_scaler, airflow3_db)
    port = scaler.server.http.port
    stream = scaler.keda.stream({"database": "airflow"})
    assert await stream.next() is False
    await airflow3_db.add_many(1, "queued")
    assert await stream.next() is True
    m = await scrape(port)
    assert m.value(f"{N}_open_streams") == 1
    assert m.value(f"{N}_stream_messages_total", **CELERY) == 2
    assert m.value(f"{N}_active", **CELERY) == 1

    stream.cancel()
    await until(lambda: scaler.server.scaled_objects.open_streams == 0)
    m = await scrape(port)
    assert m.value(f"{N}_open_streams") == 0
    assert m.value(f"{N}_grpc_calls_total", service=SERVICE, method="StreamIsActive", code="CANCELLED") == 1


async def test_series_of_scaled_objects_that_stop_calling_disappear(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    # The expiry runs on a fake clock that only this test moves: the server's own expiry task
    # (every ttl/10 of real time, 60 s here) cannot race the explicit expire() below.
    now = [1000.0]
    settings = fast_settings({"airflow": parse_url(with_password(airflow3_db.dsn))})
    scaler = await start_scaler(dataclasses.replace(settings, series_ttl=600.0), clock=lambda: now[0])
    port = scaler.server.http.port
    keda = scaler.keda
    await keda.poll({"database": "airflow"}, name="deleted")
    await keda.poll({"database": "airflow"}, name="still-polling")
    stream = keda.stream({"database": "airflow"})  # "celery-worker", pushed to and silent
    await stream.next()
    now[0] += 599.0
    await keda.poll({"database": "airflow"}, name="still-polling")
    assert scaler.server.scaled_objects.expire() == []  # nobody is silent for longer than the ttl yet
    now[0] += 2.0
    gone = scaler.server.scaled_objects.expire()
    assert [str(key) for key in gone] == ["airflow/deleted"]
    m = await scrape(port)
    for name in ("desired_workers", "active", "last_decision_timestamp_seconds", "decision_changes_total"):
        assert m.samples(f"{N}_{name}", scaled_object="deleted") == [], name
        assert m.samples(f"{N}_{name}", scaled_object="still-polling") != [], name
        assert m.samples(f"{N}_{name}", scaled_object="celery-worker") != [], name
    assert m.samples(f"{N}_demand_tasks", scaled_object="deleted") == []
    stream.cancel()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
async def test_promtool_accepts_the_exposition(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    scaler = await start(start_scaler, airflow3_db)
    m = await scrape_with_every_series(scaler, airflow3_db)
    assert f"{N}_snapshot_errors" in m.family_names()  # every kind of series is present
    assert promtool_problems(m.text) == ""


async def test_healthz_and_readyz_follow_shutdown(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    scaler = await start(start_scaler, airflow3_db)
    port = scaler.server.http.port
    assert await get(port, "/healthz") == (200, "ok\n")
    assert (await get(port, "/readyz"))[0] == 200

    # Hold a call in flight so the drain lasts while we look.
    async with airflow3_db.locked():
        request = pb.GetMetricsRequest(scaledObjectRef=Keda.ref({"database": "airflow"}), metricName=METRIC_NAME)
        in_flight = asyncio.ensure_future(scaler.keda.stub.GetMetrics(request, timeout=60))
        await airflow3_db.until_snapshot_query_waits()
        stopping = asyncio.ensure_future(scaler.server.stop())
        await until(lambda: not scaler.server.ready())
        status, text = await get(port, "/readyz")
        assert status == 503
        assert "shutting down" in text
        assert (await get(port, "/healthz"))[0] == 200  # alive: Kubernetes must not kill it mid-drain
        assert (await scrape(port)).value(f"{N}_pool_connections_in_use", database="airflow") == 1
    await in_flight
    await stopping


async def test_health_and_reflection_calls_are_counted_too(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    scaler = await start(start_scaler, airflow3_db)
    health = health_pb2_grpc.HealthStub(scaler.channel)
    await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=3)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=3)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    not_found = {"service": "grpc.health.v1.Health", "method": "Check", "code": "NOT_FOUND"}

    async def refusal_counted() -> object:  # counted a moment after the status went out (see above)
        return (await scrape(scaler.server.http.port)).value(f"{N}_grpc_calls_total", **not_found)

    await until_async(refusal_counted)
    port = scaler.server.http.port
    watch_cancelled = {"service": "grpc.health.v1.Health", "method": "Watch", "code": "CANCELLED"}

    async def counted() -> object:  # the cancelled stream is counted once the server sees the cancel
        return (await scrape(port)).value(f"{N}_grpc_calls_total", **watch_cancelled)

    await until_async(counted)
    m = await scrape(port)
    health_calls = {"service": "grpc.health.v1.Health"}
    assert m.value(f"{N}_grpc_calls_total", **health_calls, method="Check", code="OK") == 1
    assert m.value(f"{N}_grpc_calls_total", **health_calls, method="Check", code="NOT_FOUND") == 1
    assert m.value(f"{N}_grpc_calls_total", **health_calls, method="Watch", code="CANCELLED") == 1


async def test_metrics_are_negotiated_and_compressed_as_prometheus_asks(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    # Prometheus asks for OpenMetrics and gzip; a plain client gets the text format, uncompressed.
    scaler = await start_scaler(fast_settings({"airflow": parse_url(airflow3_db.dsn)}))
    await scaler.keda.poll({"database": "airflow"})
    url = f"http://127.0.0.1:{scaler.server.http.port}/metrics"
    headers = {"Accept": "application/openmetrics-text;version=1.0.0", "Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers=headers) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = gzip.decompress(await response.read()).decode()
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
            assert "Content-Encoding" not in response.headers
            assert response.headers["Content-Type"].startswith("text/plain")
            plain = await response.text()
    assert body.rstrip().endswith("# EOF")
    assert 'airflow_keda_scaler_desired_workers{namespace="airflow",scaled_object="celery-worker"}' in body
    assert 'airflow_keda_scaler_desired_workers{namespace="airflow",scaled_object="celery-worker"}' in plain
