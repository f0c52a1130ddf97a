"""What one read of an Airflow database says (a Snapshot of rows) and what a database reader is.

Pure data and protocols: the decision, the readers and the cache (snapshot_cache.py) share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from scaler.errors import DatabaseUnavailable

Clock = Callable[[], float]


@dataclass(frozen=True)
class SnapshotRow:
    """How many task instances are in `state` on `queue` for `executor` (on worker `hostname`, if running)."""

    state: str
    queue: str | None
    executor: str | None
    count: int
    # As Airflow recorded it, for running rows only: the busy-worker floor and pod-deletion-cost use it.
    hostname: str | None = None


@dataclass(frozen=True)
class Snapshot:
    rows: tuple[SnapshotRow, ...]
    has_executor_column: bool
    taken_at: float  # clock time at which the query finished


class SnapshotReader(Protocol):
    """A database backend: one query returning the running/queued counts (running ones per hostname)."""

    @property
    def label(self) -> str: ...

    async def read(self) -> tuple[tuple[SnapshotRow, ...], bool]:
        """Return (rows, whether task_instance has an executor column); raise DatabaseUnavailable."""
        ...

    def connections_in_use(self) -> int:
        """Connections running a query now (for the pool gauge)."""
        ...

    async def close(self) -> None: ...


class RefreshObserver(Protocol):
    """Told of every snapshot query: metrics.ScalerMetrics is one."""

    def refreshed(self, database: str, seconds: float, failure: DatabaseUnavailable | None) -> None: ...
