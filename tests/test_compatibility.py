"""The oldest Airflow docs/reference.md promises, as KEDA of each generation reads the answer.

The other versions (2.9.3, 2.10.5, 3.3.2) run through the whole suite
(conftest's airflow_db); this covers the lower bound of the compatibility
matrix, 2.7.3 (no executor column, CeleryKubernetesExecutor's era), on
PostgreSQL directly and through PgBouncer. tests/test_mysql.py covers it on MySQL.
"""

from __future__ import annotations

from scaler.fixtures.airflow_schema import OLDEST, TaskInstance
from tests.conftest import PostgresServer, StartScaler, create_airflow_database, drop_airflow_database


async def test_oldest_airflow_on_postgresql(postgres: PostgresServer, start_scaler: StartScaler) -> None:
    database = await create_airflow_database(postgres, OLDEST)
    try:
        await database.add_many(9, "running", queue="default")
        await database.add_many(8, "queued", queue="default")
        # CeleryKubernetesExecutor: the `kubernetes` queue goes to Kubernetes, not to Celery workers.
        await database.add_many(30, "queued", queue="kubernetes")
        await database.add_many(12, "success", queue="default")
        await database.add(
            TaskInstance("a", "running", hostname="worker-0"),
            TaskInstance("b", "running", hostname="worker-1.workers.airflow.svc.cluster.local"),
        )
        scaler = await start_scaler(airflow=database.dsn)
        metadata = {"database": "airflow", "concurrency": "4", "excludeQueues": "kubernetes"}
        poll = await scaler.keda.poll(metadata)
        # KEDA 2.10-2.16 read the int64 fields, 2.17+ the float ones: both must say the same.
        assert (poll.value_int, poll.value, poll.target_int, poll.target, poll.active) == (5, 5.0, 1, 1.0, True)
        # No executor column before 2.10: an executor filter cannot drop anything, and is not an error.
        assert await scaler.keda.workers({**metadata, "excludeExecutors": "KubernetesExecutor"}) == 5
        # The busy-worker floor reads 2.7's hostnames like any other version's.
        assert await scaler.keda.workers({**metadata, "concurrency": "64", "scaleTargetKind": "StatefulSet"}) == 2
    finally:
        await drop_airflow_database(postgres, database)
