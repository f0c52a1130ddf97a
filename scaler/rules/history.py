"""What `replay` reads of an Airflow database: the task instances of a time window (pure data).

One row per task instance whose try arrived in the window: queued (queued_dttm),
or started (start_date) when it has no queued time. Task instances that never
reach a worker (skipped, upstream_failed, removed) are left out by the query.
The backends (postgres.py, mysql.py) stream these in arrival order, a page at a
time, through a read-only cursor: the table is read once and never held whole.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import NamedTuple, Protocol

from scaler.rules.schedule import RunRow, initial_tasks

# A page of rows at a time: bounded memory, and few enough round trips.
PAGE_SIZE = 10_000
# The first page waits for the server to sort the window: a longer limit than the snapshot's query timeout.
MIN_PAGE_TIMEOUT = 120.0


def page_timeout(query_timeout: float) -> float:
    """How long one page of the history may take."""
    return max(query_timeout, MIN_PAGE_TIMEOUT)


# States of task instances that never ran on a worker.
NEVER_ON_A_WORKER = ("skipped", "upstream_failed", "removed")


def history_query(dates: str, start: str, end: str) -> str:
    """The one history query, in a dialect's words: `dates` selects queued, started and ended as seconds
    from the window's start; `start` and `end` are the bounds' placeholders. `{executor}` is left to fill
    (the column, or NULL before Airflow 2.10).
    """
    arrival = "coalesce(queued_dttm, start_date)"
    never = ", ".join(f"'{state}'" for state in NEVER_ON_A_WORKER)
    return f"""SELECT /* airflow-keda-scaler replay */
       {dates},
       state, queue, {{executor}} AS executor, nullif(hostname, '') AS hostname, max_tries, try_number, dag_id, run_id
FROM task_instance
WHERE {arrival} >= {start} AND {arrival} < {end}
  AND (state IS NULL OR state NOT IN ({never}))
ORDER BY {arrival}"""


class HistoryRow(NamedTuple):
    """One task instance; its dates as seconds from the window's start (the database subtracts: no datetimes)."""

    queued: float | None
    started: float | None
    ended: float | None
    state: str | None
    queue: str | None
    executor: str | None
    hostname: str | None
    max_tries: int | None
    try_number: int | None
    dag_id: str | None = None
    run_id: str | None = None


# The scheduled runs before the window whose initial demand predicts the first ones in it (pre-warm).
RUNS_BEFORE_THE_WINDOW = 7 * 86400


def scheduled_runs_query(created: str, start: str, end: str, window: str) -> str:
    """The scheduled runs created in [start, end) with their initial demand (schedule.initial_tasks), in a
    dialect's words: `created` selects a run's creation as Unix seconds; `start`, `end` are placeholders,
    `window` an interval. `{executor}` is left to fill. A sequential scan of dag_run: replay reads a window once.
    """
    return f"""SELECT /* airflow-keda-scaler replay runs */
       r.dag_id, r.run_id, {created} AS created, ti.queue, {{executor}} AS executor, count(ti.task_id) AS task_count
FROM dag_run AS r
{initial_tasks(window)}
WHERE r.run_type = 'scheduled' AND coalesce(r.queued_at, r.start_date) >= {start}
  AND coalesce(r.queued_at, r.start_date) < {end}
GROUP BY 1, 2, 3, 4, 5"""


class HistoryReader(Protocol):
    @property
    def label(self) -> str: ...

    def history(
        self, start: datetime.datetime, end: datetime.datetime, *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[list[HistoryRow]]:
        """The window's rows in arrival order, a page at a time; raises DatabaseUnavailable."""
        ...

    async def scheduled_runs(self, start: datetime.datetime, end: datetime.datetime, window: int) -> list[RunRow]:
        """The scheduled runs created from RUNS_BEFORE_THE_WINDOW before `start` to `end`, `at_epoch` their
        creation; raises DatabaseUnavailable."""
        ...

    async def close(self) -> None: ...
