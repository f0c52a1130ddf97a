"""Each policy's run over a replay's trace: in processes of their own when the trace is big.

Apart from command.py so that those processes import only the model and the
trace (a few MB), not the database drivers and the server.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scaler.commands.replay.trace import Trace, Window
from scaler.simulation.control import Replay, ScheduledRun
from scaler.simulation.results import Summary
from scaler.simulation.settings import CHART, OURS, ClusterSettings, Policy, safe_chart

OURS_60S = Policy("airflow-keda-scaler, 60 s window", protection=True, stabilization=60)
OURS_DRAIN = Policy("airflow-keda-scaler + drain", protection=True, drain=True)


def policies_for(trace: Trace, cluster: ClusterSettings, prewarm: Policy | None = None) -> list[Policy]:
    """What `replay` compares: the chart's formula as shipped, and made safe (a grace period no task of the
    trace outlasts); ours, whose floor already protects running tasks, so a short window only saves
    worker-hours; ours with `drain` (rules/drain.py); and ours with pre-warm (the trigger's lead and cap) when
    the schedule could be read."""
    longest = max(trace.duration, default=0)
    policies = [CHART, safe_chart(longest, cluster), OURS, OURS_60S, OURS_DRAIN]
    return [*policies, *([prewarm] if prewarm is not None else [])]


def prewarm_policy(lead: int, max_workers: int) -> Policy:
    return Policy(
        f"airflow-keda-scaler + pre-warm ({lead} s)",
        protection=True,
        prewarm_lead=lead,
        prewarm_max_workers=max_workers,
    )


# Below this many tasks a process per policy costs more than it saves.
PROCESSES_FROM = 50_000
SEED = 1  # Celery's choices of worker: the same in every run, so a replay repeats exactly


def replay_policies(
    policies: Sequence[Policy],
    cluster: ClusterSettings,
    trace: Trace,
    window: Window,
    sample_every: int,
    *,
    processes_from: int = PROCESSES_FROM,
) -> list[Summary]:
    """Each policy's run over the trace; in parallel processes when the trace is big enough to pay for them."""
    if len(trace) < processes_from or (os.cpu_count() or 1) < 2:
        return [_replay(policy, cluster, trace, window.seconds, sample_every) for policy in policies]
    with tempfile.TemporaryDirectory(prefix="airflow-keda-scaler-replay-") as folder:
        # The processes read the trace from a file: no pickled copy of it per process in this one.
        path = Path(folder) / "trace"
        with path.open("wb") as file:
            for column in trace.columns:
                column.tofile(file)
        jobs = [
            (policy, cluster, str(path), len(trace), trace.runs, window.seconds, sample_every) for policy in policies
        ]
        # One process per policy even with fewer cores: they share the cores to the end instead of one
        # policy running alone on one core at the end. spawn, not fork: the parent has an event loop and
        # driver threads a fork would copy half-way.
        with ProcessPoolExecutor(len(policies), mp_context=multiprocessing.get_context("spawn")) as executor:
            return list(executor.map(_replay_from_file, *zip(*jobs, strict=True)))


def _replay_from_file(
    policy: Policy,
    cluster: ClusterSettings,
    path: str,
    count: int,
    runs: list[ScheduledRun],
    until: int,
    sample_every: int,
) -> Summary:
    trace = Trace(runs=runs)
    with open(path, "rb") as file:
        for column in trace.columns:
            column.fromfile(file, count)
    return _replay(policy, cluster, trace, until, sample_every)


def _replay(policy: Policy, cluster: ClusterSettings, trace: Trace, until: int, sample_every: int) -> Summary:
    replay = Replay(policy, cluster, trace.arrivals(), seed=SEED, sample_every=sample_every, scheduled=trace.runs)
    return replay.run(until=until).summary()
