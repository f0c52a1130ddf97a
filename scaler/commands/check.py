"""`airflow-keda-scaler check`: a newcomer's first command.

It goes through exactly the path a KEDA call takes (metadata parsing, the
shared snapshot, the decision), so what it prints is what KEDA would get; and
it lists the scheduled runs due soon with the demand pre-warm predicts for them,
as a trigger with `prewarm: "true"` would see them, and which busy workers
`drain: "true"` would keep consuming and drain.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from scaler.adapters.databases.pool import PoolSettings
from scaler.errors import DatabaseUnavailable, InvalidMetadata, NotPermitted
from scaler.options import Option
from scaler.rules.admission import ConnectionPolicy
from scaler.rules.busy_floor import ordinal
from scaler.rules.database_urls import ACCEPTED_FORMS, ConnectionTarget
from scaler.rules.decision import DEMAND_STATES, Decision, decide, explain
from scaler.rules.deletion_costs import tasks_per_worker
from scaler.rules.drain import DrainWorker, plan_drain
from scaler.rules.prewarm import Schedule, predicted_demand, prewarm_for, run_demand
from scaler.rules.snapshot import Snapshot
from scaler.rules.trigger_metadata import TargetKind, TriggerSpec
from scaler.service.database_caches import AirflowDatabases, DatabaseSettings
from scaler.service.prewarm_cache import Read

CONNECTION = Option(
    "--connection",
    f"The Airflow database URL, in any form Airflow uses: {ACCEPTED_FORMS}. Prefer the variable: "
    "a URL on the command line shows in the process list.",
    metavar="URL",
    secret=True,
)

# The trigger metadata key each filter flag stands for; the trigger's parser checks the values.
FILTERS: tuple[tuple[str, Option], ...] = (
    ("queues", Option("--queues", "Count only these Celery queues (metadata `queues`).", metavar="Q1,Q2")),
    (
        "excludeQueues",
        Option("--exclude-queues", "Never count these queues (metadata `excludeQueues`).", metavar="Q1,Q2"),
    ),
    (
        "excludeExecutors",
        Option(
            "--exclude-executors",
            "Never count tasks of these executors (metadata `excludeExecutors`).",
            metavar="E1,E2",
        ),
    ),
    (
        "concurrency",
        Option("--concurrency", "Celery worker_concurrency (metadata `concurrency`); default 16.", metavar="N"),
    ),
    (
        "prewarmLeadSeconds",
        Option(
            "--prewarm-lead",
            "List the scheduled runs due within this many seconds and their predicted demand "
            "(metadata `prewarmLeadSeconds`); default 120.",
            metavar="SECONDS",
        ),
    ),
    (
        "prewarmMaxWorkers",
        Option(
            "--prewarm-max-workers",
            "Most workers a pre-warm asks for (metadata `prewarmMaxWorkers`); default 10.",
            metavar="N",
        ),
    ),
    (
        "activationThreshold",
        Option(
            "--activation-threshold",
            "Active when demand is above this (metadata `activationThreshold`); default 0.",
            metavar="N",
        ),
    ),
)


async def run_check(
    *,
    connection: str | None,
    filters: Mapping[str, str],
    databases: Mapping[str, ConnectionTarget],
    pool: PoolSettings,
    policy: ConnectionPolicy | None = None,
) -> int:
    """Check `connection` and every configured database under the trigger `filters` (metadata keys)."""
    policy = policy or ConnectionPolicy()
    targets: list[dict[str, str]] = []
    # The pre-warms are listed whatever the trigger says: `check` shows what `prewarm: "true"` would do.
    filters = {**filters, "prewarm": "true"}
    if connection:
        targets.append({"connectionFromEnv": connection, **filters})
    targets.extend({"database": name, **filters} for name in sorted(databases))
    if not targets:
        print(
            "error: nothing to check: give --connection URL (or AIRFLOW_KEDA_SCALER_CONNECTION), "
            "or --database NAME=URL",
            file=sys.stderr,
        )
        return 2
    databases_in_use = AirflowDatabases(
        configured=databases,
        settings=DatabaseSettings(pool=pool),
    )
    worst = 0
    try:
        for metadata in targets:
            try:
                # The serve command's policy for connectionFromEnv applies to --connection alike.
                spec = policy.parse(metadata)
                cache = databases_in_use.cache_for(spec.database)
                snapshot = await cache.get()
            except (InvalidMetadata, NotPermitted) as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            except DatabaseUnavailable as error:
                print(f"error: {error}", file=sys.stderr)
                worst = 1
                continue
            prewarm = databases_in_use.prewarm_for(spec.database)
            schedule = await prewarm.refresh()
            decision = decide(spec, snapshot)
            print(_report(cache.label, snapshot, decision, spec))
            print(_prewarm_report(spec, snapshot, schedule, prewarm.clock(), prewarm.failures))
            print(_drain_report(spec, snapshot, decision))
    finally:
        await databases_in_use.close()
    return worst


def _prewarm_report(
    spec: TriggerSpec,
    snapshot: Snapshot,
    schedule: Schedule,
    now: float,
    failures: Mapping[Read, DatabaseUnavailable],
) -> str:
    """The scheduled runs due within the lead time (their pre-warm is on now), with their prediction."""
    lead = spec.prewarm_lead
    if failures:
        reasons = "; ".join(f"{read}: {error.reason}" for read, error in sorted(failures.items()))
        return f"  pre-warm: cannot read the schedule or its history ({reasons}); decisions go on without pre-warm"
    due = list(schedule.in_prewarm(lead, now))
    if not due:
        later = [run for run in schedule.due if run.due_at - lead > now]
        after = f"; next: {later[0].dag_id} due in {round(later[0].due_at - now)} s" if later else ""
        return f"  pre-warm: no scheduled run due within {lead} s (prewarmLeadSeconds){after}"
    lines = [f"  pre-warm: scheduled runs due within {lead} s (prewarmLeadSeconds)"]
    width = max(len(run.dag_id) for run in due)
    for run in due:
        seconds = round(run.due_at - now)
        when = f"due in {seconds} s" if seconds >= 0 else f"due {-seconds} s ago"
        history = schedule.runs.get(run.dag_id, ())
        if history:
            sizes = " ".join(str(run_demand(spec, past)) for past in history)
            predicted = f"predicted {predicted_demand(spec, history)} tasks (last runs, newest first: {sizes})"
        else:
            predicted = "no scheduled run yet: no pre-warm"
        lines.append(f"    {run.dag_id:<{width}}  {when:<14}  {predicted}")
    warm = prewarm_for(spec, schedule, now)
    with_prewarm = decide(spec, snapshot, prewarm=warm)
    active = "yes" if with_prewarm.active else "no"
    lines.append(
        f'  with prewarm: "true": pre-warm {with_prewarm.prewarm_workers} workers (prewarmMaxWorkers '
        f"{spec.prewarm_max_workers}) -> workers {with_prewarm.workers}; active: {active}"
    )
    return "\n".join(lines)


def _drain_report(spec: TriggerSpec, snapshot: Snapshot, decision: Decision) -> str:
    """What `drain: "true"` would do now with the busy workers the database shows (idle ones it cannot see: those
    are drained too, but for one kept when no busy one is)."""
    busy = [DrainWorker(name, tasks) for name, tasks in sorted(tasks_per_worker(snapshot).items())]
    if not busy:
        return (
            '  with drain: "true": no worker runs a task now; every idle worker but one (or minReplicaCount) would '
            "be drained"
        )
    kinds: list[TargetKind] = ["Deployment"]
    if all(ordinal(worker.name) is not None for worker in busy):
        kinds.append("StatefulSet")
    lines = []
    for kind in kinds:
        plan = plan_drain(
            busy,
            queued=decision.queued,
            concurrency=spec.concurrency,
            kind=kind,
            prewarm_workers=decision.prewarm_workers,
        )
        lines.append(
            f'  with drain: "true" on a {kind}, of the busy workers: {plan.explain(decision.queued, spec.concurrency)}'
        )
    return "\n".join(lines)


def _report(label: str, snapshot: Snapshot, decision: Decision, spec: TriggerSpec) -> str:
    executor = "yes (Airflow 2.10+)" if snapshot.has_executor_column else "no (Airflow before 2.10)"
    lines = [f"Airflow database {label}: reachable; task_instance has an executor column: {executor}"]
    width = max([len("queue"), *(len(q.queue or "(none)") for q in decision.by_queue)])
    lines.append(f"  {'queue':<{width}}  running  queued")
    for queue in decision.by_queue:
        lines.append(f"  {queue.queue or '(none)':<{width}}  {queue.running:>7}  {queue.queued:>6}")
    if not decision.by_queue:
        lines.append("  (no running or queued task instances counted)")
    everything = sum(row.count for row in snapshot.rows if row.state in DEMAND_STATES)
    if everything > decision.demand:
        lines.append(f"  not counted (queue or executor filters): {everything - decision.demand}")
    # The words `serve` logs for the same decision, the busy-worker floor included when it raised the count.
    lines.append(f"  {explain(spec, decision)}")
    return "\n".join(lines)
