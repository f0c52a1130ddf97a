"""The shared snapshot cache: single-flight, the refresh interval, failures remembered."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from scaler.errors import DatabaseUnavailable
from scaler.rules.database_urls import parse_url
from scaler.rules.snapshot import SnapshotRow
from scaler.service.snapshot_cache import SnapshotCache
from tests.conftest import AirflowDatabase, StartScaler, fast_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedReader:
    """A reader whose reads wait for the test to open a gate; counts reads."""

    label = "fake"

    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()
        self.fail_with: str | None = None

    async def read(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        self.reads += 1
        await self.gate.wait()
        if self.fail_with:
            raise DatabaseUnavailable(self.label, self.fail_with, kind="refused")
        return (SnapshotRow("queued", "default", None, self.reads),), True

    def connections_in_use(self) -> int:
        return 0

    async def close(self) -> None:
        pass


async def test_concurrent_callers_share_one_read() -> None:
    reader, clock = GatedReader(), FakeClock()
    cache = SnapshotCache(reader, refresh_interval=1.0, clock=clock)
    waiting = [asyncio.ensure_future(cache.get()) for _ in range(100)]
    await asyncio.sleep(0)
    reader.gate.set()
    snapshots = await asyncio.gather(*waiting)
    assert reader.reads == 1
    assert {s.rows[0].count for s in snapshots} == {1}


async def test_refreshes_at_most_once_per_interval() -> None:
    reader, clock = GatedReader(), FakeClock()
    reader.gate.set()
    cache = SnapshotCache(reader, refresh_interval=1.0, clock=clock)
    await cache.get()
    clock.now += 0.999
    await cache.get()
    assert reader.reads == 1
    clock.now += 0.001
    assert (await cache.get()).rows[0].count == 2


async def test_failures_are_remembered_for_the_interval_too() -> None:
    reader, clock = GatedReader(), FakeClock()
    reader.gate.set()
    reader.fail_with = "connection refused"
    cache = SnapshotCache(reader, refresh_interval=1.0, clock=clock)
    for _ in range(5):
        with pytest.raises(DatabaseUnavailable, match="connection refused"):
            await cache.get()
    assert reader.reads == 1
    reader.fail_with = None
    clock.now += 1.0
    assert (await cache.get()).rows[0].count == 2


async def test_a_caller_giving_up_does_not_cancel_the_shared_read() -> None:
    reader, clock = GatedReader(), FakeClock()
    cache = SnapshotCache(reader, refresh_interval=1.0, clock=clock)
    impatient = asyncio.ensure_future(asyncio.wait_for(cache.get(), 0.01))
    patient = asyncio.ensure_future(cache.get())
    with pytest.raises(TimeoutError):
        await impatient
    reader.gate.set()
    assert (await patient).rows[0].count == 1
    assert reader.reads == 1


async def _enable_stat_statements(database: AirflowDatabase) -> None:
    try:
        await database.connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await database.connection.execute("SELECT pg_stat_statements_reset()")
    except asyncpg.PostgresError as error:
        pytest.skip(f"pg_stat_statements is not loaded on this PostgreSQL: {error}")


async def test_keda_pattern_from_many_scaled_objects_costs_one_query_per_interval(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    """50 ScaledObjects on one database, polled as KEDA does, for about 3 refresh intervals."""
    await _enable_stat_statements(airflow3_db)
    await airflow3_db.add_many(40, "queued", queue="default")
    await airflow3_db.add_many(8, "running", queue="ml")
    interval = 1.0
    scaler = await start_scaler(fast_settings({"airflow": parse_url(airflow3_db.dsn)}, refresh_interval=interval))
    keda = scaler.keda
    started = time.monotonic()
    polls = 0
    while time.monotonic() - started < 3 * interval:
        results = await asyncio.gather(
            *(
                keda.poll({"database": "airflow", "queues": "default" if i % 2 else "ml"}, name=f"so-{i}")
                for i in range(50)
            )
        )
        polls += len(results)
        assert {r.value_int for r in results} == {3, 1}  # ceil(40/16), ceil(8/16)
    elapsed = time.monotonic() - started
    queries = await airflow3_db.snapshot_queries()
    # KEDA made 3 calls per poll; the database saw at most one query per started interval.
    assert polls * 2 >= 300  # GetMetrics + IsActive: hundreds of calls that would each have queried
    assert 1 <= queries <= int(elapsed / interval) + 1, (queries, polls, elapsed)
