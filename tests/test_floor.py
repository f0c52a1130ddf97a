"""The busy-worker floor: never ask for fewer workers than are running this trigger's tasks.

The rules on hand-made snapshots first, then over gRPC on every real Airflow
schema, with running task instances on several hosts, for both target kinds,
with short and FQDN hostnames.
"""

from __future__ import annotations

import pytest

from scaler.errors import InvalidMetadata
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.rules.decision import decide, explain
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import parse_metadata
from tests.conftest import AirflowDatabase, StartScaler

FQDN = "{pod}.airflow-worker.airflow.svc.cluster.local"


def running(*hosts: str | None, queue: str = "default", executor: str | None = None) -> tuple[SnapshotRow, ...]:
    return tuple(SnapshotRow("running", queue, executor, 1, host) for host in hosts)


def snapshot(*rows: SnapshotRow) -> Snapshot:
    return Snapshot(rows, has_executor_column=True, taken_at=0.0)


def test_spread_tasks_keep_every_busy_deployment_worker() -> None:
    # The case: 5 workers each running one long task, concurrency 16, nothing queued.
    spec = parse_metadata({"database": "a", "concurrency": "16"})
    decision = decide(spec, snapshot(*running("w-a", "w-b", "w-c", "w-d", "w-e")))
    assert (decision.demand, decision.floor, decision.workers) == (5, 5, 5)
    assert "-> 1 workers, busy-worker floor 5 (Deployment) -> 5 workers" in explain(spec, decision)


def test_floor_never_lowers_the_packed_figure() -> None:
    spec = parse_metadata({"database": "a", "concurrency": "2"})
    rows = (*running("w-a", "w-a"), SnapshotRow("queued", "default", None, 9))
    decision = decide(spec, snapshot(*rows))
    assert (decision.floor, decision.workers) == (1, 6)


def test_short_and_fqdn_names_of_one_pod_are_one_worker() -> None:
    spec = parse_metadata({"database": "a", "concurrency": "16"})
    rows = running("worker-7d9c-x2k4q", "Worker-7d9c-x2k4q.", FQDN.format(pod="worker-7d9c-x2k4q"), "worker-7d9c-zzzzz")
    assert decide(spec, snapshot(*rows)).floor == 2


def test_statefulset_keeps_every_ordinal_up_to_the_highest_busy_one() -> None:
    rows = running("airflow-worker-0", FQDN.format(pod="airflow-worker-6"))
    metadata = {"database": "a", "concurrency": "16", "scaleTargetKind": "StatefulSet"}
    assert decide(parse_metadata(metadata), snapshot(*rows)).workers == 7
    # The kind read from the ScaledObject applies when the metadata names none; the metadata's wins.
    plain = parse_metadata({"database": "a", "concurrency": "16"})
    assert decide(plain, snapshot(*rows), target_kind="StatefulSet").workers == 7
    assert decide(plain, snapshot(*rows), target_kind=None).workers == 2
    as_deployment = parse_metadata({**metadata, "scaleTargetKind": "deployment"})
    assert decide(as_deployment, snapshot(*rows), target_kind="StatefulSet").workers == 2


def test_only_this_triggers_tasks_make_a_worker_busy() -> None:
    rows = (
        *running("w-a", queue="default"),
        *running("w-b", queue="ml"),
        *running("w-c", executor="KubernetesExecutor"),
        *running(None, "", "  "),  # running without a recorded host yet: demand, but no worker to keep
        SnapshotRow("queued", "default", None, 1, None),
    )
    spec = parse_metadata({"database": "a", "concurrency": "16", "queues": "default", "excludeExecutors": "Kubernetes"})
    assert decide(spec, snapshot(*rows)).floor == 2  # w-a and w-c; the k8s row's executor name does not match
    spec = parse_metadata({"database": "a", "concurrency": "16", "excludeExecutors": "KubernetesExecutor"})
    assert decide(spec, snapshot(*rows)).floor == 2  # w-a and w-b


def test_ip_addresses_are_workers_too() -> None:
    spec = parse_metadata({"database": "a", "concurrency": "16"})
    assert decide(spec, snapshot(*running("10.1.2.3", "10.1.2.4", "10.1.2.3"))).floor == 2


def test_opt_out_turns_the_floor_off() -> None:
    spec = parse_metadata({"database": "a", "concurrency": "16", "scaleDownProtection": "false"})
    decision = decide(spec, snapshot(*running("w-a", "w-b", "w-c")))
    assert (decision.floor, decision.workers) == (0, 1)


@pytest.mark.parametrize(
    ("key", "value"), [("scaleDownProtection", "no"), ("scaleDownProtection", "1"), ("scaleTargetKind", "Rollout")]
)
def test_bad_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        parse_metadata({"database": "a", key: value})
    assert caught.value.key == key
    assert value in str(caught.value)


CASES = [
    # (kind, hostname form, hosts running one task each, expected workers at concurrency 16)
    (
        "Deployment",
        "short",
        ["airflow-worker-5d8f9-a1b2c", "airflow-worker-5d8f9-d3e4f", "airflow-worker-5d8f9-g5h6i"],
        3,
    ),
    (
        "Deployment",
        "fqdn",
        ["airflow-worker-5d8f9-a1b2c", "airflow-worker-5d8f9-d3e4f", "airflow-worker-5d8f9-g5h6i"],
        3,
    ),
    ("StatefulSet", "short", ["airflow-worker-0", "airflow-worker-3"], 4),
    ("StatefulSet", "fqdn", ["airflow-worker-1", "airflow-worker-4"], 5),
]


@pytest.mark.parametrize(("kind", "form", "hosts", "workers"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_floor_on_real_schema(
    airflow_db: AirflowDatabase, start_scaler: StartScaler, kind: str, form: str, hosts: list[str], workers: int
) -> None:
    for n, host in enumerate(hosts):
        hostname = FQDN.format(pod=host) if form == "fqdn" else host
        # Two tasks on the first host: one worker, whatever it runs.
        for i in range(2 if n == 0 else 1):
            await airflow_db.add(TaskInstance(f"long_{n}_{i}", "running", hostname=hostname))
    # A queued retry remembers its last host: that worker is not busy with it.
    await airflow_db.add(TaskInstance("retry", "queued", hostname="airflow-worker-9"))
    # Another queue's busy worker is another worker set's.
    await airflow_db.add(TaskInstance("other", "running", queue="ml", hostname="airflow-worker-ml-8"))
    scaler = await start_scaler(airflow=airflow_db.dsn)
    metadata = {"database": "airflow", "concurrency": "16", "queues": "default", "scaleTargetKind": kind}
    assert await scaler.keda.workers(metadata) == workers
    assert await scaler.keda.workers({**metadata, "scaleDownProtection": "false"}) == 1  # ceil(5 / 16)
