"""`airflow-keda-scaler check`: a newcomer's first command.

It goes through exactly the path a KEDA call takes (metadata parsing, the
shared snapshot, the decision), so what it prints is what KEDA would get.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from scaler.admission import ConnectionPolicy
from scaler.databases.postgres import PoolSettings
from scaler.databases.registry import DatabaseRegistry, RegistrySettings
from scaler.databases.urls import ConnectionTarget
from scaler.decision import DEMAND_STATES, Decision, decide
from scaler.errors import DatabaseUnavailable, InvalidMetadata, NotPermitted
from scaler.snapshot import Snapshot

# check flag -> the trigger metadata key it stands for
FLAG_KEYS = {
    "queues": "queues",
    "exclude_queues": "excludeQueues",
    "exclude_executors": "excludeExecutors",
    "concurrency": "concurrency",
    "activation_threshold": "activationThreshold",
}


async def run_check(
    args: argparse.Namespace, *, databases: Mapping[str, ConnectionTarget], policy: ConnectionPolicy | None = None
) -> int:
    policy = policy or ConnectionPolicy()
    filters = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    targets: list[dict[str, str]] = []
    if args.connection:
        targets.append({"connectionFromEnv": args.connection, **filters})
    targets.extend({"database": name, **filters} for name in sorted(databases))
    if not targets:
        print(
            "error: nothing to check: give --connection URL (or AIRFLOW_KEDA_SCALER_CONNECTION), "
            "or --database NAME=URL",
            file=sys.stderr,
        )
        return 2
    registry = DatabaseRegistry(
        configured=databases,
        settings=RegistrySettings(
            pool=PoolSettings(max_size=1, connect_timeout=args.connect_timeout, query_timeout=args.query_timeout)
        ),
    )
    worst = 0
    try:
        for metadata in targets:
            try:
                # The serve command's policy for connectionFromEnv applies to --connection alike.
                spec = policy.parse(metadata)
                cache = registry.cache_for(spec.database)
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
        await registry.close()
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
