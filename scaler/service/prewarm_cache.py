"""The per-database pre-warm snapshot (prewarm.Schedule) and the reads that keep it.

Beside the demand snapshot (snapshot_cache.py), and like it shared by every
ScaledObject and call on a database, with one difference: nothing ever waits
for it. A call reads what is in memory (`current()`), and when the schedule is
older than its interval that call starts a refresh in the background, one at a
time. So a slow or failing pre-warm read never delays or fails a decision; it
is logged once when it starts failing, counted, and the last schedule stays
(its pre-warms expire on their own, `grace` after their runs were due).

Two reads, each on its own interval (databases/schedule.py): the schedule every
`schedule_interval`, and the last runs' initial demand of the DAGs it lists
every `history_interval` (they change once a run, and cost more). A database
no trigger pre-warms for is never read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Literal, Protocol, TypeVar

from scaler.errors import DatabaseUnavailable
from scaler.rules.prewarm import DueRun, PastRun, PrewarmSettings, Schedule, horizon
from scaler.rules.schedule import RunRow, ScheduleReader
from scaler.rules.snapshot import Clock

log = logging.getLogger(__name__)

Read = Literal["schedule", "history"]
T = TypeVar("T")


class PrewarmObserver(Protocol):
    """Told of every pre-warm read: metrics.ScalerMetrics is one."""

    def prewarm_read(self, database: str, read: Read, seconds: float, failure: DatabaseUnavailable | None) -> None: ...


class PrewarmCache:
    """One database's pre-warm snapshot; see the module docstring."""

    def __init__(
        self,
        reader: ScheduleReader,
        *,
        settings: PrewarmSettings,
        clock: Clock = time.monotonic,
        observer: PrewarmObserver | None = None,
    ) -> None:
        self.reader = reader
        self.settings = settings
        self.clock = clock
        self.observer = observer
        self.reads: Counter[Read] = Counter()  # reads started, by kind
        self._schedule = Schedule(due=(), runs={}, grace=settings.grace, taken_at=-math.inf)
        self._schedule_at = -math.inf  # when the last schedule read ended, well or not
        self._history_at = -math.inf
        self._refreshing: asyncio.Task[Schedule] | None = None
        self.failures: dict[Read, DatabaseUnavailable] = {}  # reads failing now, with why

    @property
    def label(self) -> str:
        return self.reader.label

    def current(self) -> Schedule:
        """The schedule in memory, now; starts a refresh in the background when it is due. Never waits."""
        if self._refreshing is None and self.clock() - self._schedule_at >= self.settings.schedule_interval:
            self._refreshing = asyncio.create_task(self._refresh_in_background(), name=f"pre-warm {self.label}")
        return self._schedule

    async def _refresh_in_background(self) -> Schedule:
        try:
            return await self.refresh()
        except Exception:
            # A bug of ours, not the database's (those are DatabaseUnavailable): said, and retried an interval later.
            log.exception("pre-warm refresh of %s failed", self.label, extra={"database": self.label})
            self._schedule_at = self.clock()
            return self._schedule
        finally:
            self._refreshing = None

    async def settled(self) -> Schedule:
        """The schedule once the refresh in flight (started now if one is due) is done: `check` and the tests
        wait for it; KEDA's calls never do."""
        self.current()
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        return self._schedule

    async def refresh(self) -> Schedule:
        """Read the schedule, and the history when it is due; failures are logged and counted, never raised."""
        due = await self._read(
            "schedule", self.reader.schedule(behind=self.settings.grace, ahead=horizon(self.settings))
        )
        taken_at = self._schedule_at = self.clock()
        if due is None:
            return self._schedule
        runs = self._schedule.runs
        if taken_at - self._history_at >= self.settings.history_interval:
            dag_ids = sorted({row.dag_id for row in due})
            read = self.reader.initial_demand(dag_ids, runs=self.settings.runs, window=self.settings.window)
            rows = await self._read("history", read)
            if rows is not None:
                self._history_at = self.clock()
                runs = _runs(rows)
        self._schedule = Schedule(
            due=tuple(
                DueRun(row.dag_id, row.due_epoch, taken_at + row.due_epoch - row.now_epoch)
                for row in sorted(due, key=lambda row: row.due_epoch)
            ),
            runs=runs,
            grace=self.settings.grace,
            taken_at=taken_at,
        )
        return self._schedule

    async def _read(self, read: Read, query: Awaitable[T]) -> T | None:
        self.reads[read] += 1
        started = time.perf_counter()  # real time even under a fake clock: the query's cost
        try:
            result = await query
        except DatabaseUnavailable as error:
            self._observe(read, started, error)
            if read not in self.failures:
                log.warning(
                    "pre-warm %s read of %s failing (decisions go on without pre-warm from it): %s",
                    read,
                    self.label,
                    error.reason,
                    extra={"database": self.label, "read": read, "reason": error.reason},
                )
            self.failures[read] = error
            if read == "schedule":
                self._schedule_at = self.clock()  # retried after an interval, not by every call
            return None
        self._observe(read, started, None)
        if self.failures.pop(read, None) is not None:
            log.info("pre-warm %s read of %s recovered", read, self.label, extra={"database": self.label})
        return result

    def _observe(self, read: Read, started: float, failure: DatabaseUnavailable | None) -> None:
        if self.observer is not None:
            self.observer.prewarm_read(self.label, read, time.perf_counter() - started, failure)

    async def close(self) -> None:
        task, self._refreshing = self._refreshing, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _runs(rows: Iterable[RunRow]) -> dict[str, tuple[PastRun, ...]]:
    """Rows by (DAG, run) -> each DAG's runs, newest first."""
    by_run: dict[tuple[str, str], tuple[float, list[tuple[str | None, str | None, int]]]] = {}
    for row in rows:
        _, tasks = by_run.setdefault((row.dag_id, row.run_id), (row.at_epoch, []))
        if row.tasks:
            tasks.append((row.queue, row.executor, row.tasks))
    by_dag: dict[str, list[PastRun]] = {}
    for (dag_id, _), (started, tasks) in by_run.items():
        by_dag.setdefault(dag_id, []).append(PastRun(started, tuple(tasks)))
    return {dag_id: tuple(sorted(runs, key=lambda run: -run.started_epoch)) for dag_id, runs in by_dag.items()}
