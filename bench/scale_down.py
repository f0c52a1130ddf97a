"""Benchmark 6: a deterministic replay of scale-down, the chart's formula against ours.

Seeded bursty traces of Airflow tasks (durations from minutes to two hours) run
through the package's model of KEDA, the HPA, Celery, the worker pods and
Airflow's retries (scaler.simulation, which `replay` uses too), under eight
policies, on a Deployment and on a StatefulSet: the chart's formula as shipped
(grace 600 s: it kills), the same made safe as its users make it (a grace no task
outlasts), ours, and ours with `drain: "true"`: the scaler's own rule
(scaler/rules/drain.py) tells surplus workers to stop taking new tasks (Celery's
cancel_consumer), so they empty and go first.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from bench import prewarm_replay
from scaler.simulation.control import Replay
from scaler.simulation.results import Result
from scaler.simulation.settings import ClusterSettings, Policy, safe_chart

# The chart's workers: concurrency 16, terminationGracePeriodSeconds 600; KEDA's defaults otherwise.
SETTINGS = ClusterSettings(max_replicas=30)
# The longest task either shape makes (both are clipped to two hours): the grace that makes the chart safe.
LONGEST = 7200
POLICIES = (
    Policy("chart formula, Deployment", protection=False),
    replace(safe_chart(LONGEST, SETTINGS), name="chart formula, no kills, Deployment"),
    Policy("ours, Deployment", protection=True),
    Policy("ours + drain, Deployment", protection=True, drain=True),
    Policy("ours, 60 s window, Deployment", protection=True, stabilization=60),
    Policy("ours + drain, 60 s window, Deployment", protection=True, drain=True, stabilization=60),
    Policy("chart formula, StatefulSet", protection=False, kind="StatefulSet"),
    replace(safe_chart(LONGEST, SETTINGS, "StatefulSet"), name="chart formula, no kills, StatefulSet"),
    Policy("ours, StatefulSet", protection=True, kind="StatefulSet"),
    Policy("ours + drain, StatefulSet", protection=True, kind="StatefulSet", drain=True),
)

# Durations: "heavy" has a fat tail (10% of tasks 45-120 min); "lognormal" a median of 7 min, p99 about 55 min.
SHAPES = ("heavy", "lognormal")


def trace(seed: int, hours: float, shape: str = "heavy") -> list[tuple[int, int]]:
    """(arrival second, duration seconds): bursts of DAG runs and a trickle, with a long tail of durations."""
    rng = random.Random(seed)
    end = int(hours * 3600)
    arrivals: list[tuple[int, int]] = []

    def duration() -> int:
        if shape == "lognormal":
            return int(min(7200, max(120, rng.lognormvariate(math.log(420), 0.9))))
        pick = rng.random()
        if pick < 0.6:
            return rng.randint(120, 600)
        if pick < 0.9:
            return rng.randint(600, 2700)
        return rng.randint(2700, 7200)

    t = 0
    while True:
        t += int(rng.expovariate(1 / 1500))  # a burst every 25 minutes on average
        if t >= end:
            break
        for _ in range(rng.randint(10, 160)):
            arrivals.append((t + rng.randint(0, 60), duration()))
    arrivals += [(minute * 60, duration()) for minute in range(end // 60) if rng.random() < 0.3]
    return sorted(arrivals)


def run_policies(seed: int, hours: float, shape: str) -> list[Result]:
    arrivals = trace(seed, hours, shape)
    results = []
    for policy in POLICIES:
        results.append(Replay(policy, SETTINGS, arrivals, seed=seed).run())
    return results


def totals_for(seeds: list[int], hours: float, shape: str) -> tuple[int, dict[str, Result]]:
    totals: dict[str, Result] = {p.name: Result(p) for p in POLICIES}
    tasks = 0
    for seed in seeds:
        tasks += len(trace(seed, hours, shape))
        for result in run_policies(seed, hours, shape):
            totals[result.policy.name].add(result)
    return tasks, totals


def run(seeds: list[int], hours: float, *, scheduled_hours: float = 24.0) -> tuple[str, dict[str, dict[str, Result]]]:
    lines = [
        "## 6. Safe scale-down: a replay of scale-down decisions",
        "",
        f"{len(seeds)} seeded traces of {hours:g} h per duration shape (bursts of 10-160 tasks every 25 minutes on "
        "average, and a trickle), replayed by the package's model `scaler.simulation` (pure and "
        f"deterministic; `replay` runs the same): KEDA pollingInterval {SETTINGS.polling_interval} s, cooldownPeriod "
        f"{SETTINGS.cooldown} s; HPA sync {SETTINGS.hpa_sync} s, tolerance 0.1, scale-down stabilisation "
        f"{SETTINGS.stabilization} s, max {SETTINGS.max_replicas} replicas; worker_concurrency "
        f"{SETTINGS.concurrency}, Celery giving each task to a random worker with a free slot; pods ready "
        f"{SETTINGS.pod_start} s after creation; warm shutdown within {SETTINGS.grace} s, then SIGKILL; a killed task "
        f"retried from scratch after {SETTINGS.retry_delay} s, {SETTINGS.retries} retries, then failed. The formulas "
        f"(`decide`) and deletion costs (`wanted_costs`, every {SETTINGS.reconcile} s) are the scaler's own "
        "functions. Worker-hours count every pod from creation "
        "to the end of its termination.",
    ]
    every: dict[str, dict[str, Result]] = {}
    for shape in SHAPES:
        tasks, totals = totals_for(seeds, hours, shape)
        every[shape] = totals
        chart, safe, ours = (totals[POLICIES[n].name] for n in range(3))
        safe_of = {policy.kind or SETTINGS.kind: totals[policy.name] for policy in POLICIES if policy.grace}
        print(f"  {shape} tails, {tasks} tasks:", flush=True)
        for total in totals.values():
            print(
                f"    {total.policy.name}: killed {total.killed}, lost {total.lost_seconds / 3600:.1f} task-h, "
                f"worker-h {total.worker_seconds / 3600:.1f}, packed {total.packed_seconds / 3600:.1f}, "
                f"queued p95 {total.queued_p95:.0f} s",
                flush=True,
            )
        described = {
            "heavy": "60% of tasks run 2-10 min, 30% 10-45 min, 10% 45-120 min",
            "lognormal": "lognormal durations, median 7 min, clipped to 2-120 min",
        }[shape]
        lines += [
            "",
            f"### {shape.capitalize()} tails ({described}; {tasks} tasks)",
            "",
            "| policy | tasks killed | task-hours lost | tasks failed | worker-hours | packed bound (h) | "
            "worker-hours / chart's | worker-hours / safe chart's | queued p50 | queued p95 | "
            "queued p95, first attempts |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for total in totals.values():
            lines.append(
                f"| {total.policy.name} | {total.killed} | {total.lost_seconds / 3600:.1f} | {total.failed} | "
                f"{total.worker_seconds / 3600:.1f} | {total.packed_seconds / 3600:.1f} | "
                f"{total.worker_seconds / chart.worker_seconds:.2f} | "
                f"{total.worker_seconds / safe_of[total.policy.kind or SETTINGS.kind].worker_seconds:.2f} | "
                f"{total.queued_p50:.0f} s | "
                f"{total.queued_p95:.0f} s | "
                f"{total.first_queued_p95:.0f} s |"
            )
        ratio = ours.worker_seconds / chart.worker_seconds
        fair = ours.worker_seconds / safe.worker_seconds
        named = {name.removesuffix(", Deployment"): total for name, total in totals.items()}
        drained, ours_60, drained_60 = (
            named["ours + drain"],
            named["ours, 60 s window"],
            named["ours + drain, 60 s window"],
        )
        safe_sts = totals["chart formula, no kills, StatefulSet"]
        ours_sts, drained_sts = totals["ours, StatefulSet"], totals["ours + drain, StatefulSet"]
        checks = [
            ("zero tasks killed by ours", ours.killed == 0, f"{ours.killed} killed"),
            ("zero tasks killed by the chart made safe", safe.killed == 0, f"{safe.killed} killed"),
            ("worker-hours at most the chart made safe's", fair <= 1.0, f"{fair:.2f}x"),
            ("worker-hours at most 20% above the chart formula's as shipped", ratio <= 1.2, f"{ratio:.2f}x"),
            (
                "queued-time p95 no worse",
                ours.queued_p95 <= chart.queued_p95,
                f"{ours.queued_p95:.0f} s against {chart.queued_p95:.0f} s",
            ),
        ]
        lines += ["", "Targets (ours against the chart's formula, made safe and as shipped, all on a Deployment):", ""]
        lines += [f"- {what}: {'met' if ok else '**missed**'} ({figure})." for what, ok, figure in checks]
        drain_checks = [
            (
                "Deployment: + drain at most 0.95x ours at the same HPA window",
                drained.worker_seconds <= 0.95 * ours.worker_seconds
                and drained_60.worker_seconds <= 0.95 * ours_60.worker_seconds,
                f"{drained.worker_seconds / ours.worker_seconds:.2f}x at 300 s, "
                f"{drained_60.worker_seconds / ours_60.worker_seconds:.2f}x at 60 s",
            ),
            (
                "Deployment: + drain at most 0.80x the safe chart",
                drained.worker_seconds <= 0.80 * safe.worker_seconds,
                f"{drained.worker_seconds / safe.worker_seconds:.2f}x",
            ),
            (
                "StatefulSet: + drain at most 1.0x the safe chart",
                drained_sts.worker_seconds <= safe_sts.worker_seconds,
                f"{drained_sts.worker_seconds / safe_sts.worker_seconds:.2f}x; of its "
                f"{drained_sts.worker_seconds / 3600:.1f} worker-hours {drained_sts.held_idle_seconds / 3600:.1f} are "
                "idle ready pods below a busy ordinal, which the set cannot remove first; without them "
                f"{(drained_sts.worker_seconds - drained_sts.held_idle_seconds) / 3600:.1f}, against "
                f"{drained.worker_seconds / 3600:.1f} for + drain on a Deployment",
            ),
            (
                "queued p95 within 5 s of ours, on both kinds",
                abs(drained.queued_p95 - ours.queued_p95) <= 5
                and abs(drained_sts.queued_p95 - ours_sts.queued_p95) <= 5,
                f"{drained.queued_p95:.0f} s against {ours.queued_p95:.0f} s; "
                f"{drained_sts.queued_p95:.0f} s against {ours_sts.queued_p95:.0f} s",
            ),
            (
                "zero tasks killed with drain",
                drained.killed == drained_60.killed == drained_sts.killed == 0,
                f"{drained.killed + drained_60.killed + drained_sts.killed} killed",
            ),
        ]
        if shape == "heavy":
            lines += ["", 'Targets for `drain: "true"` (the scaler\'s own rule in the model):', ""]
            lines += [f"- {what}: {'met' if ok else '**missed**'} ({figure})." for what, ok, figure in drain_checks]
        else:
            lines += ["", 'The same figures for `drain: "true"` (the targets are set on the heavy tails):', ""]
            lines += [f"- {what}: {figure}." for what, _, figure in drain_checks]
    lines += [
        "",
        "Queued time runs from when a task could start (arrival, or the end of its retry delay) to when a worker "
        'takes it; "every attempt" counts the chart\'s retries too, most of which start at once on a worker '
        "left idle, which lowers its percentile. The p95 is set by the 60 s a new pod takes to start plus the "
        "HPA's 15 s sync, so differences of a few seconds there come from where bursts fall between syncs; "
        "the median shows what kept workers give: a task that finds a free slot starts at once.",
        "",
        '"chart formula, no kills" is the chart\'s formula made safe the way its users make it: '
        f"terminationGracePeriodSeconds {LONGEST} s, the longest task, so a removed worker finishes its tasks "
        "before it goes. It is the fair anchor for cost: it kills nothing either. On a StatefulSet it is cheaper "
        "than ours because a terminating pod keeps its ordinal, so new work waits for it (its queued p95); ours "
        "answers at once but keeps every ordinal up to the highest busy one.",
        "",
        'The packed bound is each run\'s own integral of ceil((running + queued) / concurrency). "+ drain" is the '
        'scaler\'s `drain: "true"` with its own rule (`scaler/rules/drain.py`, every 5 s here): the fewest workers '
        "that leave a free slot for the queue and their own tasks keep consuming (the busiest of a Deployment, the "
        "lowest ordinals of a StatefulSet), the rest stop taking new tasks (Celery's `cancel_consumer`), so they "
        "empty and go first. On a StatefulSet it does not reach the safe chart: a burst's long tasks land on its top "
        "ordinals too, and the set can only shrink from the top, so idle ordinals below a busy one stay until it "
        "empties. Those idle pods are the whole difference from + drain on a Deployment (the figures above), and "
        "no consumer command empties them sooner: they run nothing. Only taking a busy ordinal away does, which "
        "the safe chart does with a grace no task outlasts, and pays for in latency: new work waits for its "
        "terminating ordinals (its queued p50 and p95).",
        "",
        "What limits worker-hours: Celery spreads each burst over every worker with a free slot, so a burst's few "
        "long tasks land on most of the workers, and each of those workers holds a slot of 16 for up to two hours. "
        "Without killing, such a worker can only go when its last task ends; the chart's formula removes it "
        "anyway and pays in killed tasks, lost task-hours and retries that run again. Draining lowers the "
        "figure somewhat; packing long tasks on few workers needs knowledge of durations at assignment time "
        "(a queue of their own for long tasks is the user's lever).",
        "",
        prewarm_replay.run(seeds, scheduled_hours),
    ]
    return "\n".join(lines), every
