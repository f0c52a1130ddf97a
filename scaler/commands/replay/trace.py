"""Pure: task_instance rows of a window -> the model's arrivals, and what really happened in it.

Rows come in arrival order (the backends' history query), a page at a time.
Each in-scope row that ran becomes an Arrival: it could start at its queued time
and runs for end_date - start_date. Beside that, the rows themselves say what
happened: the wait from queued_dttm to start_date, the tasks that failed or were
retried, and, sampled over time, the demand and the workers the scaler would
have answered (`decide` on the running and queued task instances of that
moment, hostnames included), which is what the accuracy test compares with the
scaler's live answers.
"""

from __future__ import annotations

import datetime
import heapq
import math
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from scaler.rules.decision import decide, in_scope
from scaler.rules.drain import kept_from_history
from scaler.rules.history import HistoryRow
from scaler.rules.name_filters import EMPTY
from scaler.rules.schedule import RunRow
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import TargetKind, TriggerSpec
from scaler.simulation.control import ScheduledRun
from scaler.simulation.workers import Arrival

NEVER = math.inf
# A try that "ran" longer than this has a broken date (year 9999 and the like): it is counted.
LONGEST_TRY = 366 * 86400
# Tries are replayed up to a day after the window's end at most.
AFTER_THE_WINDOW = 86400
# States in which a try ended badly: the history cannot tell a lost worker from the task's own error.
FAILED_STATES = ("failed", "up_for_retry")


@dataclass(frozen=True)
class Window:
    start: datetime.datetime  # timezone-aware
    end: datetime.datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True)
class ObservedSample:
    at: int  # seconds from the window's start
    running: int
    queued: int
    workers: int  # what the scaler would have answered then (decide, busy-worker floor included)
    kept: int = 0  # with `drain: "true"`, the workers drain would have kept consuming (drain.kept_from_history)


@dataclass
class Observed:
    """What the history says happened, beside what the policies would have done."""

    rows: int = 0  # rows read
    tasks: int = 0  # in scope and run (the replayed tasks)
    out_of_scope: int = 0  # other queues or executors
    never_started: int = 0  # in scope, queued, never started (still queued at the window's end, or failed so)
    still_running: int = 0  # in scope, started, not ended: replayed up to the window's end
    bad_dates: int = (
        0  # end before start, start before queued, or a try longer than a year (cut a day after the window)
    )
    failed_or_retried: int = 0
    waits: array[int] = field(default_factory=lambda: array("q"))  # queued_dttm -> start_date, seconds
    samples: list[ObservedSample] = field(default_factory=list)


@dataclass
class Trace:
    """The arrivals, compact: a week of a busy Airflow is a million of them."""

    # 32-bit: seconds of a window of at most 366 days fit, and a million tasks take 12 MB.
    at: array[int] = field(default_factory=lambda: array("i"))
    duration: array[int] = field(default_factory=lambda: array("i"))
    retries: array[int] = field(default_factory=lambda: array("i"))  # -1: not known
    scheduled: array[int] = field(default_factory=lambda: array("b"))  # 1: a scheduled run's task
    runs: list[ScheduledRun] = field(default_factory=list)  # the scheduled runs (pre-warm's schedule and history)

    def __len__(self) -> int:
        return len(self.at)

    @property
    def columns(self) -> tuple[array[int], ...]:
        return (self.at, self.duration, self.retries, self.scheduled)

    def arrivals(self) -> Iterator[Arrival]:
        for at, duration, retries, scheduled in zip(*self.columns, strict=True):
            yield Arrival(at, duration, None if retries < 0 else retries, bool(scheduled))


def scheduled_runs(spec: TriggerSpec, rows: list[RunRow], window: Window) -> list[ScheduledRun]:
    """The scheduled runs (created at `at_epoch`) with their initial demand in the trigger's scope, as
    pre-warm's history counts it, due at seconds from the window's start."""
    start = window.start.timestamp()
    runs: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        run = runs.setdefault((row.dag_id, row.run_id), [math.floor(row.at_epoch - start), 0])
        if row.tasks and in_scope(spec, row.queue, row.executor):
            run[1] += row.tasks
    return sorted(
        (ScheduledRun(dag_id, created, initial) for (dag_id, _), (created, initial) in runs.items()),
        key=lambda run: (run.due, run.dag_id),
    )


class TraceBuilder:
    """Fed the window's pages in order (`add`), then `finish()`: the trace and what was observed."""

    def __init__(
        self,
        spec: TriggerSpec,
        window: Window,
        *,
        sample_every: int,
        target_kind: TargetKind = "Deployment",
        runs: list[RunRow] | None = None,
    ) -> None:
        """`runs`: the window's scheduled runs (the backends' scheduled_runs), for the pre-warm policy."""
        self.spec = spec
        # The rows the sweep holds are in scope already: the decision only has to size them.
        self._counted = replace(spec, queues=None, exclude_queues=EMPTY, exclude_executors=EMPTY)
        self.window = window
        self.sample_every = sample_every
        self.target_kind = target_kind
        self.trace = Trace(runs=scheduled_runs(spec, runs or [], window))
        self._scheduled = {(row.dag_id, row.run_id) for row in runs or ()}
        self.observed = Observed()
        self._next_sample = 0
        self._serial = 0
        # The sweep over time for the observed samples: only what is queued or running at once is held.
        # (leaves the queue, serial, host, ends, whether it starts then)
        self._queued: list[tuple[float, int, str | None, float, bool]] = []
        self._running: list[tuple[float, int, str | None]] = []  # (ends, serial, host)
        self._queued_now = 0
        self._per_host: Counter[str | None] = Counter()

    @property
    def reached(self) -> float:
        """How far into the window the rows have come, 0..1 (for a progress bar)."""
        return min(1.0, self._next_sample / max(1, self.window.seconds))

    def add(self, rows: list[HistoryRow]) -> None:
        for row in rows:
            self._add(row)

    def _add(self, row: HistoryRow) -> None:
        observed = self.observed
        observed.rows += 1
        arrival = row.queued if row.queued is not None else row.started
        if arrival is None:
            return  # the query selects on it: cannot happen
        if not in_scope(self.spec, row.queue, row.executor):
            observed.out_of_scope += 1
            return
        self._sample_until(arrival)
        if row.state in FAILED_STATES or (row.try_number or 0) > 1:
            observed.failed_or_retried += 1
        start, end = row.started, row.ended
        if start is not None and start < arrival:
            observed.bad_dates += 1
            start = arrival
        if start is not None and end is not None and end < start:
            observed.bad_dates += 1
            end = start
        if start is not None and end is not None and end - start > LONGEST_TRY:
            observed.bad_dates += 1
        if end is not None:
            # What happens a day after the window says nothing about it: the replay stops there.
            end = min(end, self.window.seconds + AFTER_THE_WINDOW)
        self._serial += 1
        if start is None:
            observed.never_started += 1
            heapq.heappush(self._queued, (end if end is not None else NEVER, self._serial, None, NEVER, False))
            self._queued_now += 1
            return
        if end is None:
            observed.still_running += 1
        observed.tasks += 1
        if row.queued is not None:
            observed.waits.append(int(start - arrival))
        host = row.hostname
        heapq.heappush(self._queued, (start, self._serial, host, end if end is not None else NEVER, True))
        self._queued_now += 1
        finish = end if end is not None else float(self.window.seconds)
        # A garbage max_tries must not overflow the array: no task retries a thousand times.
        retries = min(row.max_tries, 1000) if row.max_tries is not None and row.max_tries >= 0 else -1
        trace = self.trace
        trace.at.append(int(arrival))
        trace.duration.append(max(0, math.ceil(finish - start)))
        trace.retries.append(retries)
        trace.scheduled.append(1 if (row.dag_id, row.run_id) in self._scheduled else 0)

    def finish(self) -> tuple[Trace, Observed]:
        self._sample_until(NEVER)
        return self.trace, self.observed

    def _sample_until(self, before: float) -> None:
        """Take every sample whose moment is before `before`: every arrival up to it is known."""
        last = self.window.seconds
        while self._next_sample < before and self._next_sample < last:
            self._sample(self._next_sample)
            self._next_sample += max(1, self.sample_every)

    def _sample(self, at: int) -> None:
        while self._queued and self._queued[0][0] <= at:
            _, serial, host, ends, started = heapq.heappop(self._queued)
            self._queued_now -= 1
            if started:
                self._per_host[host] += 1
                heapq.heappush(self._running, (ends, serial, host))
        while self._running and self._running[0][0] <= at:
            _, _, host = heapq.heappop(self._running)
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]
        rows = [SnapshotRow("running", None, None, count, host) for host, count in self._per_host.items()]
        if self._queued_now:
            rows.append(SnapshotRow("queued", None, None, self._queued_now))
        decision = decide(self._counted, Snapshot(tuple(rows), True, 0.0), target_kind=self.target_kind)
        kept = 0
        if self.spec.drain:
            # A task without a hostname has no worker to keep: the rule sees the ones it can name (as live).
            busy = {host: count for host, count in self._per_host.items() if host is not None}
            kept = kept_from_history(
                busy, queued=decision.queued, concurrency=self.spec.concurrency, kind=self.target_kind
            )
        self.observed.samples.append(ObservedSample(at, decision.running, decision.queued, decision.workers, kept))
