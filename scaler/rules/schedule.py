"""What pre-warm reads of an Airflow database: the schedule and the runs' initial demand (pure data).

Two fixed queries per dialect (postgres.py, mysql.py), read once per database on
their own intervals (prewarm_cache.py):
- the schedule: DAGs whose next scheduled run is due within a window around now
  (`dag.next_dagrun_create_after`, through its index), not paused, and not
  stale (3.x `is_stale`) or still active (2.x `is_active`): the same DAGs
  Airflow's scheduler creates runs for;
- the initial demand: for given DAGs, their last N scheduled runs that started
  more than `window` seconds ago (found backwards through the
  (dag_id, logical_date or execution_date) unique index), and per run the task
  instances first queued within its first `window` seconds, by queue and executor
  (through the `ti_dag_run` index).
Dates come back as Unix seconds, with the database's own now: the scaler never
compares its clock with the database's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# Most DAGs one schedule read returns: a bound on memory whatever the database holds.
SCHEDULE_LIMIT = 10_000
# DAGs per statement of the history read: each statement stays short (tens of milliseconds on a big
# database, docs/benchmarks.md section 4b) however many DAGs are due, and its text small.
DAGS_PER_STATEMENT = 100


def chunks(dag_ids: Sequence[str]) -> list[Sequence[str]]:
    return [dag_ids[i : i + DAGS_PER_STATEMENT] for i in range(0, len(dag_ids), DAGS_PER_STATEMENT)]


class DueRow(NamedTuple):
    dag_id: str
    due_epoch: float  # next_dagrun_create_after
    now_epoch: float  # the database's now when it was read


class RunRow(NamedTuple):
    """One run's task instances on one (queue, executor) first queued in its first window; a run with
    none has one row with queue and executor NULL and 0 tasks. Pre-warm's history and replay's scheduled
    runs read these alike (INITIAL_TASKS)."""

    dag_id: str
    run_id: str
    at_epoch: float  # Unix time: the run's start (pre-warm's history) or its creation (replay)
    queue: str | None
    executor: str | None
    tasks: int


def initial_tasks(window: str) -> str:
    """The join that makes a run `r` (dag_id, run_id, start_date) its initial demand: its task instances
    first queued within `window` (a dialect's interval) of its start, through `ti_dag_run`. LEFT: a run
    with none still counts, with 0."""
    return f"""LEFT JOIN task_instance AS ti
       ON ti.dag_id = r.dag_id AND ti.run_id = r.run_id
      AND ti.queued_dttm >= r.start_date AND ti.queued_dttm < r.start_date + {window}"""


@dataclass(frozen=True)
class DagSchema:
    """The columns that differ between Airflow 2.x and 3.x, read once per pool."""

    airflow3: bool  # dag.is_stale (3.x) instead of dag.is_active (2.x); dag_run.logical_date for execution_date
    has_executor: bool  # task_instance.executor (2.10+)

    @property
    def live(self) -> str:
        """The condition on `dag` for a DAG the scheduler creates runs for."""
        state = "is_stale = false" if self.airflow3 else "is_active = true"
        return f"is_paused = false AND {state}"

    @property
    def executor(self) -> str:
        """task_instance's executor column as `ti`, or NULL before Airflow 2.10."""
        return "ti.executor" if self.has_executor else "NULL"

    @property
    def run_date(self) -> str:
        return "logical_date" if self.airflow3 else "execution_date"


class ScheduleReader(Protocol):
    @property
    def label(self) -> str: ...

    async def schedule(self, *, behind: int, ahead: int) -> tuple[DueRow, ...]:
        """DAGs due from `behind` seconds ago to `ahead` seconds from now, by due time; raises DatabaseUnavailable."""
        ...

    async def initial_demand(self, dag_ids: Sequence[str], *, runs: int, window: int) -> tuple[RunRow, ...]:
        """The initial demand of each DAG's last `runs` scheduled runs; raises DatabaseUnavailable."""
        ...
