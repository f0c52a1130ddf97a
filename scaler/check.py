"""`airflow-keda-scaler check`: a newcomer's first command.

It goes through exactly the path a KEDA call takes (metadata parsing, the
shared snapshot, the decision), so what it prints is what KEDA would get.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from scaler.admission import ConnectionPolicy
from scaler.airflow_databases import AirflowDatabases, DatabaseSettings
from scaler.databases.pool import PoolSettings
from scaler.databases.urls import ACCEPTED_FORMS, ConnectionTarget
from scaler.decision import DEMAND_STATES, Decision, decide
from scaler.errors import DatabaseUnavailable, InvalidMetadata, NotPermitted
from scaler.options import Option
from scaler.snapshot import Snapshot

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
            decision = decide(spec, snapshot)
            print(_report(cache.label, snapshot, decision, spec.concurrency, spec.activation_threshold))
    finally:
        await databases_in_use.close()
    return worst


def _report(label: str, snapshot: Snapshot, decision: Decision, concurrency: int, threshold: float) -> str:
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
    lines.append(
        f"  demand {decision.demand} = running {decision.running} + queued {decision.queued}; "
        f"concurrency {concurrency} -> workers {decision.workers}; "
        f"active: {'yes' if decision.active else 'no'} (demand > {threshold:g})"
    )
    return "\n".join(lines)
