"""The package's model of KEDA, the HPA, Celery and the worker pods (scaler.simulation).

Pure and deterministic, so these are exact: the chart's formula kills the long
tasks of a burst and ours kills none; skipping the seconds in which nothing can
happen gives exactly what stepping through every second gives.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.prewarm_replay import trace as prewarm_trace
from bench.scale_down import POLICIES, SETTINGS, trace
from scaler.commands.replay.policies import OURS_60S
from scaler.simulation.control import Replay, ScheduledRun
from scaler.simulation.results import Result
from scaler.simulation.settings import CHART, OURS, ClusterSettings, Policy, safe_chart
from scaler.simulation.workers import Arrival

# A burst of short tasks scales out; long tasks that come once the workers are up land on several of them.
BURST = [Arrival(0, 120) for _ in range(100)] + [Arrival(100, 3600) for _ in range(10)]


DEFAULTS = ClusterSettings()


def run(
    policy: Policy,
    arrivals: list[Arrival],
    settings: ClusterSettings = DEFAULTS,
    *,
    until: int = 0,
    sample_every: int = 0,
) -> Result:
    return Replay(policy, settings, arrivals, seed=1, sample_every=sample_every).run(until=until)


def figures(result: Result) -> tuple[object, ...]:
    return (
        result.tasks,
        result.killed,
        result.lost_seconds,
        result.failed,
        result.worker_seconds,
        result.packed_seconds,
        result.held_idle_seconds,
        list(result.waits),
        list(result.first_waits),
        result.finished_at,
        result.samples,
    )


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("shape", ["heavy", "lognormal"])
def test_skipping_quiet_seconds_changes_nothing(policy: Policy, shape: str) -> None:
    arrivals = trace(7, 3.0, shape)
    skipped = Replay(policy, SETTINGS, arrivals, seed=7, sample_every=60).run()
    stepped = Replay(policy, SETTINGS, arrivals, seed=7, sample_every=60, step_every_second=True).run()
    assert figures(skipped) == figures(stepped)
    assert skipped.tasks == len(arrivals)


def test_the_chart_formula_kills_a_long_task_and_ours_does_not() -> None:
    chart, ours = run(CHART, BURST), run(OURS, BURST)
    assert chart.killed >= 1
    assert chart.lost_seconds > 0
    assert ours.killed == 0
    assert ours.lost_seconds == 0
    assert ours.tasks == chart.tasks == len(BURST)
    # Ours keeps the long task's worker until it ends: more worker-hours, never fewer.
    assert ours.worker_seconds > chart.worker_seconds


def test_a_short_stabilisation_window_costs_fewer_worker_hours_and_kills_nothing() -> None:
    arrivals = [Arrival(at, duration) for at, duration in trace(3, 4.0, "heavy")]
    ours, short = run(OURS, arrivals), run(OURS_60S, arrivals)
    assert short.killed == ours.killed == 0
    assert short.worker_seconds < ours.worker_seconds


def test_a_task_without_retries_fails_when_killed() -> None:
    no_retries = [Arrival(a.at, a.duration, retries=0) for a in BURST]
    chart = run(CHART, no_retries)
    assert chart.killed >= 1
    assert chart.failed == chart.killed  # each killed try was the last


def test_a_killed_task_is_retried_after_its_delay() -> None:
    settings = ClusterSettings(retry_delay=300, retries=2)
    chart = run(CHART, BURST, settings)
    assert chart.killed >= 1
    assert chart.failed == 0  # two retries are enough for one kill
    assert len(chart.waits) == len(chart.first_waits) + chart.killed  # every retry waited once more


def test_min_and_max_replicas_hold() -> None:
    settings = ClusterSettings(min_replicas=2, max_replicas=3)
    result = run(OURS, BURST, settings, sample_every=10, until=5000)
    assert all(2 <= s.replicas <= 3 for s in result.samples)
    assert result.samples[-1].replicas == 2  # never to zero with minReplicaCount 2


def test_scales_to_zero_after_the_cooldown() -> None:
    result = run(OURS, [Arrival(0, 60)], ClusterSettings(cooldown=300), sample_every=30, until=1200)
    busy = [s.at for s in result.samples if s.running]
    assert busy
    at_zero = [s.at for s in result.samples if s.replicas == 0 and s.at > busy[-1]]
    assert at_zero
    assert at_zero[0] - busy[-1] >= 300 - 30  # the cooldown runs from the last active poll


def test_a_statefulset_loses_its_top_ordinals() -> None:
    settings = ClusterSettings(kind="StatefulSet")
    chart = run(CHART, BURST, settings)
    ours = run(replace(OURS, kind="StatefulSet"), BURST, settings)
    assert ours.killed == 0
    assert chart.tasks == ours.tasks


def test_idle_pods_below_a_busy_ordinal_are_counted_as_held() -> None:
    """One long task on the top ordinal holds the idle ones below it: the StatefulSet's own cost, which a
    Deployment (its ReplicaSet removes the idle pods) does not have."""
    arrivals = [Arrival(0, 60) for _ in range(40)] + [Arrival(70, 3600)]
    sts = run(replace(OURS, kind="StatefulSet", drain=True), arrivals, ClusterSettings(kind="StatefulSet"))
    deployment = run(replace(OURS, drain=True), arrivals)
    assert deployment.held_idle_seconds == 0
    assert sts.held_idle_seconds > 0
    assert sts.worker_seconds - sts.held_idle_seconds <= deployment.worker_seconds


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_the_chart_made_safe_kills_nothing_and_pays_for_it(kind: str) -> None:
    """A grace period no task outlasts: a removed worker finishes its tasks, whatever the formula asked."""
    settings = ClusterSettings(kind="StatefulSet") if kind == "StatefulSet" else DEFAULTS
    shipped = run(CHART, BURST, settings)
    safe = run(safe_chart(3600, settings), BURST, settings)
    assert shipped.killed > 0
    assert (safe.killed, safe.failed, safe.tasks) == (0, 0, shipped.tasks)
    assert safe.worker_seconds > shipped.worker_seconds  # the terminating pods are paid for until they are done
    short = run(replace(CHART, grace=1800), BURST, settings)
    assert short.killed > 0  # the policy's grace is the one the pods get: half the longest task is not enough


def test_a_live_run_reports_what_happened_to_each_task() -> None:
    """The demo steps the model itself and mirrors its events into task_instance."""
    settings = ClusterSettings(polling_interval=1, hpa_sync=1, pod_start=2, grace=3, retries=1, retry_delay=2)
    model = Replay(CHART, settings, (), seed=1)
    model.events = []
    task = model.arrive(0, 4)
    for second in range(12):
        model.second(second)
    assert [(what, t.id) for what, t in model.events] == [("started", task.id), ("finished", task.id)]
    assert model.result.tasks == 1
    assert model.in_flight == 0


PREWARM = Policy("ours + pre-warm", protection=True, prewarm_lead=120)


def test_skipping_quiet_seconds_changes_nothing_with_prewarm() -> None:
    arrivals, runs = prewarm_trace(7, 6.0)
    skipped = Replay(PREWARM, SETTINGS, arrivals, seed=7, sample_every=60, scheduled=runs).run()
    stepped = Replay(PREWARM, SETTINGS, arrivals, seed=7, sample_every=60, step_every_second=True, scheduled=runs)
    assert figures(skipped) == figures(stepped.run())
    assert list(skipped.scheduled_waits)
    assert list(skipped.unscheduled_waits)


def test_prewarm_has_workers_ready_when_a_scheduled_run_comes() -> None:
    # An hourly DAG of 64 tasks with five runs of history, at zero when its next run comes at 3600 s.
    history = [ScheduledRun("etl", 3600 * k, 64) for k in range(-5, 2)]
    burst = [Arrival(3605, 300, None, True) for _ in range(64)]
    cold = Replay(OURS, DEFAULTS, burst, seed=1, scheduled=history).run()
    warm = Replay(PREWARM, DEFAULTS, burst, seed=1, scheduled=history).run()
    assert max(cold.scheduled_waits) >= 60  # a pod's start, after KEDA's poll and an HPA sync
    assert max(warm.scheduled_waits) == 0  # four workers were ready before the run
    assert warm.killed == cold.killed == 0
    # Without history there is no prediction, so no pre-warm.
    blind = Replay(PREWARM, DEFAULTS, burst, seed=1, scheduled=[ScheduledRun("etl", 3600, 64)]).run()
    assert list(blind.scheduled_waits) == list(cold.scheduled_waits)
