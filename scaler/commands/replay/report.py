"""replay's output: a table for people, one JSON object for tools (pure)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scaler.commands.replay.trace import Observed, Window
from scaler.simulation.results import Summary, percentile
from scaler.simulation.settings import ClusterSettings


@dataclass(frozen=True)
class Replayed:
    """Everything one replay found, for report() and plot."""

    database: str
    window: Window
    scope: dict[str, str]  # the trigger metadata keys given (queues, concurrency, ...)
    settings: ClusterSettings
    results: Sequence[Summary]
    observed: Observed
    replayed_tasks: int


def as_json(replayed: Replayed) -> str:
    observed = replayed.observed
    settings = replayed.settings
    document: dict[str, Any] = {
        "database": replayed.database,
        "window": {"from": replayed.window.start.isoformat(), "to": replayed.window.end.isoformat()},
        "scope": replayed.scope,
        "settings": {
            "concurrency": settings.concurrency,
            "polling_interval_s": settings.polling_interval,
            "cooldown_s": settings.cooldown,
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "hpa_sync_s": settings.hpa_sync,
            "stabilization_window_s": settings.stabilization,
            "pod_start_s": settings.pod_start,
            "grace_s": settings.grace,
            "retry_delay_s": settings.retry_delay,
            "kind": settings.kind,
        },
        "tasks": replayed.replayed_tasks,
        "policies": [
            {
                "policy": result.policy.name,
                "stabilization_window_s": (
                    settings.stabilization if result.policy.stabilization is None else result.policy.stabilization
                ),
                "grace_s": result.policy.grace_in(settings),
                "tasks_killed": result.killed,
                "task_hours_lost": round(result.lost_seconds / 3600, 3),
                "tasks_failed": result.failed,
                "worker_hours": round(result.worker_seconds / 3600, 3),
                "queued_p50_s": result.queued_p50,
                "queued_p95_s": result.queued_p95,
                "scheduled_tasks": result.scheduled_tasks,
                "queued_p95_scheduled_s": result.scheduled_p95,
                "queued_p95_unscheduled_s": result.unscheduled_p95,
            }
            for result in replayed.results
        ],
        "observed": {
            "queued_p50_s": percentile(observed.waits, 0.5),
            "queued_p95_s": percentile(observed.waits, 0.95),
            "failed_or_retried": observed.failed_or_retried,
            "rows_read": observed.rows,
            "out_of_scope": observed.out_of_scope,
            "never_started": observed.never_started,
            "still_running_at_end": observed.still_running,
            "bad_dates": observed.bad_dates,
        },
    }
    return json.dumps(document, indent=2) + "\n"


def as_text(replayed: Replayed) -> str:
    observed, settings, window = replayed.observed, replayed.settings, replayed.window
    scope = ", ".join(f"{key} {value}" for key, value in replayed.scope.items()) or "every queue and executor"
    lines = [
        f"Replayed {replayed.replayed_tasks:,} task instances of {replayed.database}, "
        f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC ({scope}).",
        f"KEDA: pollingInterval {settings.polling_interval} s, cooldownPeriod {settings.cooldown} s, replicas "
        f"{settings.min_replicas}-{settings.max_replicas}, {settings.kind}; HPA: sync {settings.hpa_sync} s, "
        f"scale-down window {settings.stabilization} s; pods start in {settings.pod_start} s, "
        f"terminationGracePeriodSeconds {settings.grace} s; a killed task retries after {settings.retry_delay} s.",
        "",
    ]
    # Scheduled runs' tasks apart, when the window has any: what pre-warm is for.
    scheduled = any(result.scheduled_tasks for result in replayed.results)
    header: tuple[str, ...] = (
        "policy",
        "tasks killed",
        "task-hours lost",
        "failed after retries",
        "worker-hours",
        "queued p50",
        "p95",
    )
    if scheduled:
        header += ("p95 scheduled runs", "p95 others")
    rows: list[tuple[str, ...]] = []
    for result in replayed.results:
        row: tuple[str, ...] = (
            result.policy.name,
            f"{result.killed:,}",
            f"{result.lost_seconds / 3600:,.1f}",
            f"{result.failed:,}",
            f"{result.worker_seconds / 3600:,.1f}",
            f"{result.queued_p50:,.0f} s",
            f"{result.queued_p95:,.0f} s",
        )
        if scheduled:
            row += (f"{result.scheduled_p95:,.0f} s", f"{result.unscheduled_p95:,.0f} s")
        rows.append(row)
    observed_row: tuple[str, ...] = (
        "observed (Airflow's own record)",
        "-",
        "-",
        f"{observed.failed_or_retried:,} failed or retried",
        "-",
        f"{percentile(observed.waits, 0.5):,.0f} s",
        f"{percentile(observed.waits, 0.95):,.0f} s",
    )
    rows.append(observed_row + (("-", "-") if scheduled else ()))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    notes = [
        (observed.out_of_scope, "task instances of other queues or executors left out"),
        (observed.never_started, "queued and never started (not replayed; their queueing counts in the demand)"),
        (observed.still_running, "still running at the window's end (replayed as running up to it)"),
        (
            observed.bad_dates,
            "with dates out of order (an end before the start, a start before queued: clamped) or a try of over a "
            "year (replayed up to a day after the window)",
        ),
    ]
    shown = [f"  {count:,} {text}" for count, text in notes if count]
    if not replayed.replayed_tasks:
        shown.append("  no task instance in scope ran in this window: nothing to replay")
    if shown:
        lines += ["", *shown]
    lines += [
        "",
        "Queued time runs from queued (or a retry's delay ending) to a worker taking the task. \"failed or "
        "retried\" counts every cause: the history does not tell a lost worker from the task's own error."
        + (
            " The scheduled runs' p95 is over their tasks' first attempts (run_type scheduled); pre-warm predicts "
            "each run from its DAG's last runs before it, a week before the window included."
            if scheduled
            else ""
        ),
    ]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
