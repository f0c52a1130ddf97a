"""Pure: when scheduled DAG runs are due, how many workers to start before them.

A database's pre-warm snapshot (a `Schedule`) holds the DAGs whose next scheduled
run is due soon (`dag.next_dagrun_create_after`) and, for each, its last N
scheduled runs' initial demand: the task instances first queued within the
run's first `window` seconds, by queue and executor. The scope of a trigger
(queues, excludeQueues, excludeExecutors) is applied here, in memory, as for
the demand snapshot.

A trigger's predicted demand for a run is the lower median, over those runs,
of each run's in-scope initial demand. The median ignores one failed or odd run
in five, follows a changed DAG after three runs of its new shape, and there is
no prediction (so no pre-warm) for a DAG without history. The lower median of
an even count pays for the smaller of the two middle runs.

A trigger pre-warms from `prewarmLeadSeconds` before a run is due until the
scheduler creates it (the next schedule read shows the DAG's next run instead,
and the run's tasks are counted as demand), or until `grace` seconds after it
was due if it does not come. How the predicted tasks become workers is
decision.py's (Prewarm.workers): on top of demand before the run is due, held
after, at most prewarmMaxWorkers more; never fewer than without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from scaler.options import positive, setting
from scaler.rules.decision import Prewarm, PrewarmedRun, in_scope
from scaler.rules.trigger_metadata import MAX_PREWARM_LEAD, TriggerSpec


@dataclass(frozen=True)
class PrewarmSettings:
    """serve's pre-warm flags; the simulation model takes the same (ClusterSettings.prewarm)."""

    schedule_interval: float = setting(
        15.0,
        flag="--prewarm-schedule-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How often the schedule of due DAG runs is read, once per database, for triggers with prewarm on.",
    )
    history_interval: float = setting(
        300.0,
        flag="--prewarm-history-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How often the initial demand of the due DAGs' last scheduled runs is read, once per database.",
    )
    runs: int = setting(
        5,
        flag="--prewarm-runs",
        parse=positive(int),
        metavar="N",
        help="Scheduled runs of a DAG whose initial demand predicts its next one's (their median).",
    )
    window: int = setting(
        60,
        flag="--prewarm-window",
        parse=positive(int),
        metavar="SECONDS",
        help="A run's initial demand: its task instances first queued within this long after it started.",
    )
    grace: int = setting(
        60,
        flag="--prewarm-grace",
        parse=positive(int),
        metavar="SECONDS",
        help="How long after its due time a pre-warm lasts when the run does not come (paused, scheduler down).",
    )


def horizon(settings: PrewarmSettings) -> int:
    """How far ahead the schedule is read: the longest lead, and room for the reads' own intervals."""
    return math.ceil(MAX_PREWARM_LEAD + settings.history_interval + 2 * settings.schedule_interval)


# (queue, executor, task instances) of one run's initial demand.
Tasks = tuple[tuple[str | None, str | None, int], ...]


@dataclass(frozen=True)
class DueRun:
    """The next scheduled run of a DAG: `due_epoch` is next_dagrun_create_after (Unix time), which names
    it; `due_at` is the same moment on the scaler's clock."""

    dag_id: str
    due_epoch: float
    due_at: float


@dataclass(frozen=True)
class PastRun:
    """One earlier scheduled run: when it started (Unix time) and its initial demand."""

    started_epoch: float
    tasks: Tasks


@dataclass(frozen=True)
class Schedule:
    """What one database says of scheduled work to come (see the module docstring)."""

    due: tuple[DueRun, ...]  # by due_at
    runs: Mapping[str, tuple[PastRun, ...]]  # dag_id -> its last scheduled runs, newest first
    grace: float  # seconds a pre-warm outlives its run's due time when the run does not come
    taken_at: float  # scaler clock time of the schedule read
    _listed: frozenset[tuple[str, float]] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_listed", frozenset((due.dag_id, due.due_epoch) for due in self.due))

    def in_prewarm(self, lead: float, now: float) -> Iterator[DueRun]:
        """The runs a trigger with this lead pre-warms for at `now`: due within `lead`, or overdue within the
        grace (a run that has not come by then never pre-warms again)."""
        for due in self.due:
            if due.due_at - lead > now:
                return  # sorted by due_at: every later one starts later
            if now < due.due_at + self.grace:
                yield due

    def lists(self, dag_id: str, due_epoch: float) -> bool:
        """Whether the schedule still has this run due (the scheduler has not created it)."""
        return (dag_id, due_epoch) in self._listed


def run_demand(spec: TriggerSpec, run: PastRun) -> int:
    """A past run's initial demand in the trigger's scope."""
    return sum(count for queue, executor, count in run.tasks if in_scope(spec, queue, executor))


def predicted_demand(spec: TriggerSpec, runs: Sequence[PastRun]) -> int:
    """The lower median of the runs' in-scope initial demand; 0 without history.

    >>> from scaler.rules.trigger_metadata import parse_metadata
    >>> spec = parse_metadata({"database": "a", "queues": "default"})
    >>> runs = [PastRun(0.0, (("default", None, n), ("ml", None, 99))) for n in (40, 38, 0, 44, 41)]
    >>> predicted_demand(spec, runs), predicted_demand(spec, runs[:2]), predicted_demand(spec, [])
    (40, 38, 0)
    """
    if not runs:
        return 0
    counts = sorted(run_demand(spec, run) for run in runs)
    return counts[(len(counts) - 1) // 2]


def prewarm_for(spec: TriggerSpec, schedule: Schedule, now: float) -> Prewarm | None:
    """The trigger's pre-warm at `now` (scaler clock), or None when none is on or it is off for the trigger."""
    if not spec.prewarm:
        return None
    runs: list[PrewarmedRun] = []
    for due in schedule.in_prewarm(spec.prewarm_lead, now):
        predicted = predicted_demand(spec, schedule.runs.get(due.dag_id, ()))
        if predicted > 0:
            runs.append(PrewarmedRun(due.dag_id, due.due_epoch, round(due.due_at - now), predicted))
    if not runs:
        return None
    total = sum(run.predicted for run in runs)
    ahead = sum(run.predicted for run in runs if run.due_in > 0)
    return Prewarm(tuple(runs), total, ahead, spec.prewarm_max_workers)


Outcome = Literal["arrived", "expired", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = ("arrived", "expired", "cancelled")


def ended(run: PrewarmedRun, schedule: Schedule) -> Outcome:
    """Why a run's pre-warm ended: the scheduler created it (its DAG is due later now), it never came
    (still listed as due: scheduler down, or a prediction that dropped to 0), or its DAG left the schedule
    (paused, stale, removed)."""
    if schedule.lists(run.dag_id, run.due_epoch):
        return "expired"
    if any(due.dag_id == run.dag_id and due.due_epoch > run.due_epoch for due in schedule.due):
        return "arrived"
    return "cancelled"


def actual_demand(spec: TriggerSpec, run: PrewarmedRun, schedule: Schedule) -> int | None:
    """The in-scope initial demand of the run a pre-warm was for, once the history has it; else None.

    The run is the DAG's first scheduled run started at or after its due time (less a minute of
    clock difference between scheduler and database).
    """
    later = [past for past in schedule.runs.get(run.dag_id, ()) if past.started_epoch >= run.due_epoch - 60]
    if not later:
        return None
    return run_demand(spec, min(later, key=lambda past: past.started_epoch))
