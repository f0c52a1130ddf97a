"""The decision rules on hand-made snapshots (the gRPC tests run them on real schemas)."""

from __future__ import annotations

import pytest

from scaler.rules.decision import decide
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import parse_metadata

K8S_PATH = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"


def snapshot(*rows: tuple[str, str | None, str | None, int]) -> Snapshot:
    return Snapshot(tuple(SnapshotRow(*row) for row in rows), has_executor_column=True, taken_at=0.0)


@pytest.mark.parametrize(
    ("demand", "concurrency", "workers"),
    [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2), (33, 16, 3), (5, 1, 5)],
)
def test_workers_are_demand_over_concurrency_rounded_up(demand: int, concurrency: int, workers: int) -> None:
    spec = parse_metadata({"database": "a", "concurrency": str(concurrency)})
    decision = decide(spec, snapshot(("queued", "default", None, demand)))
    assert decision.workers == workers
    assert decision.active == (demand > 0)


def test_activation_threshold_is_strictly_greater() -> None:
    spec = parse_metadata({"database": "a", "activationThreshold": "3"})
    assert not decide(spec, snapshot(("queued", "default", None, 3))).active
    assert decide(spec, snapshot(("queued", "default", None, 4))).active


def test_null_executor_is_counted_and_every_spelling_is_excluded() -> None:
    spec = parse_metadata({"database": "a", "excludeExecutors": "KubernetesExecutor,my_k8s"})
    decision = decide(
        spec,
        snapshot(
            ("running", "default", None, 5),
            ("running", "default", "KubernetesExecutor", 100),
            ("running", "default", K8S_PATH, 100),
            ("queued", "default", "my_k8s", 100),
            ("queued", "default", "CeleryExecutor", 2),
        ),
    )
    assert (decision.running, decision.queued) == (5, 2)


def test_queue_filters() -> None:
    rows = (
        ("running", "default", None, 3),
        ("queued", "ml", None, 4),
        ("queued", "kubernetes", None, 50),
        ("queued", None, None, 1),
    )
    only_ml = decide(parse_metadata({"database": "a", "queues": "ml"}), snapshot(*rows))
    assert only_ml.demand == 4
    no_k8s = decide(parse_metadata({"database": "a", "excludeQueues": "kubernetes"}), snapshot(*rows))
    assert no_k8s.demand == 3 + 4 + 1
    assert [q.queue for q in no_k8s.by_queue] == ["default", "ml", None]
