"""How each backend's small pool connects and how long its query may run (PostgreSQL and MySQL alike)."""

from __future__ import annotations

from dataclasses import dataclass

from scaler.options import positive, setting


@dataclass(frozen=True)
class PoolSettings:
    max_size: int = setting(
        2, flag="--pool-size", parse=positive(int), metavar="N", help="Most connections per Airflow database."
    )
    connect_timeout: float = setting(
        5.0,
        flag="--connect-timeout",
        parse=positive(float),
        metavar="SECONDS",
        help="How long to wait for a database connection.",
    )
    query_timeout: float = setting(
        2.0,
        flag="--query-timeout",
        parse=positive(float),
        metavar="SECONDS",
        help="How long the snapshot query may run (KEDA's HPA path allows 3 s per call).",
    )
