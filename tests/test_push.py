"""external-push: one watcher per database, whatever the number of streams; held, not lied to, on failure."""

from __future__ import annotations

import asyncio

import grpc

from scaler.rules.database_urls import parse_url
from scaler.service.metrics import NAMESPACE
from tests.conftest import AirflowDatabase, StartScaler, fast_settings
from tests.support.scrape import scrape
from tests.support.tcp_proxy import TcpProxy

N = NAMESPACE
STREAMS = 200
WATCH_INTERVAL = 0.2


async def wait_for_value(port: int, name: str, expected: float, **labels: str) -> None:
    for _ in range(200):
        if (await scrape(port)).value(name, **labels) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never reached {expected}: {(await scrape(port)).value(name, **labels)}")


async def test_many_streams_on_one_database_cost_one_watchers_queries(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)}, watch_interval=WATCH_INTERVAL)
    scaler = await start_scaler(settings)
    port = scaler.server.http.port
    # Every stream counts a different queue: each gets its own answer from the one shared read.
    streams = [scaler.keda.stream({"database": "airflow", "queues": f"q{i}"}, name=f"so{i}") for i in range(STREAMS)]
    assert await asyncio.gather(*(stream.next() for stream in streams)) == [False] * STREAMS
    await wait_for_value(port, f"{N}_watched_streams", STREAMS, database="airflow")

    before = (await scrape(port)).value(f"{N}_snapshot_query_duration_seconds_count", database="airflow") or 0
    started = asyncio.get_running_loop().time()
    await airflow3_db.add_many(1, "queued", queue="q7")
    assert await asyncio.wait_for(streams[7].next(), 60) is True  # only so7's queue got work
    await asyncio.sleep(1.0)
    elapsed = asyncio.get_running_loop().time() - started
    after = (await scrape(port)).value(f"{N}_snapshot_query_duration_seconds_count", database="airflow") or 0
    # One read per watch interval for all 200 streams (plus the one in flight), not one per stream.
    assert after - before <= elapsed / WATCH_INTERVAL + 2
    others = [stream for i, stream in enumerate(streams) if i != 7]
    pending = [asyncio.ensure_future(stream.next()) for stream in others[:20]]
    done, _ = await asyncio.wait(pending, timeout=0.5)
    assert not done, "streams whose activity did not change are sent nothing"
    for future in pending:
        future.cancel()
    for stream in streams:
        stream.cancel()
    await wait_for_value(port, f"{N}_watched_streams", 0, database="airflow")


async def test_streams_held_while_the_database_fails_are_counted(
    airflow3_db: AirflowDatabase, proxied: tuple[TcpProxy, str], start_scaler: StartScaler
) -> None:
    proxy, url = proxied
    scaler = await start_scaler(fast_settings({"airflow": parse_url(url)}, watch_interval=WATCH_INTERVAL))
    port = scaler.server.http.port
    streams = [scaler.keda.stream({"database": "airflow"}) for _ in range(3)]
    assert await asyncio.gather(*(s.next() for s in streams)) == [False] * 3
    await wait_for_value(port, f"{N}_held_streams", 0, database="airflow")

    await proxy.cut()
    await wait_for_value(port, f"{N}_held_streams", 3, database="airflow")
    await airflow3_db.add_many(2, "queued")
    await proxy.start()
    assert await asyncio.gather(*(asyncio.wait_for(s.next(), 60) for s in streams)) == [True] * 3
    await wait_for_value(port, f"{N}_held_streams", 0, database="airflow")
    for stream in streams:
        stream.cancel()


async def test_shutdown_ends_every_stream_with_ok(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    streams = [scaler.keda.stream({"database": "airflow"}) for _ in range(5)]
    await asyncio.gather(*(s.next() for s in streams))
    await asyncio.wait_for(scaler.server.stop(), 60)  # well inside the 5 s grace: streams do not hold the drain
    for stream in streams:
        assert await asyncio.wait_for(stream.call.read(), 60) is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await stream.call.code() == grpc.StatusCode.OK
