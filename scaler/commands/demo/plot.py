"""`demo --plot FILE`: demand against workers asked for and replicas, over time, per ScaledObject."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scaler.commands import plot_files
from scaler.commands.demo.workload import SCALED_OBJECTS, DemoScaledObject, Sample

HEADROOM = 1.15  # above the highest line, so that no line runs along the top edge


def write_plot(path: Path, history: Sequence[Sample]) -> None:
    figure = draw(history)
    plot_files.save(figure, path, "airflow-keda-scaler demo: demand, workers asked for and replicas")
    plot_files.pyplot().close(figure)


def draw(history: Sequence[Sample]) -> Any:
    """The figure: a panel per ScaledObject, and one legend for them all below the panels."""
    figure, axes = plot_files.pyplot().subplots(
        len(SCALED_OBJECTS), 1, figsize=(10, 3.2 * len(SCALED_OBJECTS)), sharex=True
    )
    labelled: dict[str, Any] = {}
    for axis, so in zip(axes, SCALED_OBJECTS, strict=True):
        samples = [s for s in history if s.name == so.name and not s.error]
        _panel(axis, so, samples, labelled)
    axes[-1].set_xlabel("seconds")
    figure.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=4, fontsize="small")
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure


def _panel(axis: Any, so: DemoScaledObject, samples: list[Sample], labelled: dict[str, Any]) -> None:
    times = [s.at for s in samples]
    demand = [s.queued + s.running for s in samples]
    axis.fill_between(times, demand, step="post", alpha=0.25, label="demand (running + queued)")
    axis.step(times, [s.running for s in samples], where="post", label="running", linewidth=1)
    axis.set_ylabel("task instances")
    axis.set_ylim(0, max([1, *demand]) * HEADROOM)
    workers = axis.twinx()
    asked = [s.workers for s in samples]
    replicas = [s.replicas for s in samples]
    chart = [s.chart_replicas for s in samples]
    workers.step(times, asked, where="post", color="C3", label="workers asked for")
    workers.step(times, replicas, where="post", color="C2", linestyle="--", label="replicas")
    workers.step(times, chart, where="post", color="C7", linestyle=":", label="replicas under the chart's formula")
    # The scaler may ask for more than maxReplicaCount (KEDA caps it): the axis holds every line.
    top = max([so.max_replicas, *asked, *replicas, *chart])
    workers.set_ylim(0, (top + 1) * HEADROOM)
    workers.set_ylabel("workers")
    _spans(workers, samples, "floor_held", "C4", "busy-worker floor held")
    _spans(workers, samples, "prewarm_held", "C1", "pre-warm held")
    for due in sorted({round(s.at + s.due_in) for s in samples if s.due_in is not None and s.due_in >= 0}):
        if times and times[0] <= due <= times[-1]:
            workers.axvline(due, color="C1", linestyle="-.", linewidth=1, label="scheduled run due")
    last = samples[-1] if samples else None
    figures = ""
    if last is not None:
        figures = (
            f"\ntasks killed {last.killed} (chart's formula {last.chart_killed}); "
            f"queued p95 {last.queued_p95:.0f} s (chart's formula {last.chart_queued_p95:.0f} s)"
        )
    axis.set_title(f"{so.name} (queue {so.queue}, concurrency {so.concurrency}){figures}", fontsize="medium")
    for handles, labels in (axis.get_legend_handles_labels(), workers.get_legend_handles_labels()):
        for handle, label in zip(handles, labels, strict=True):
            labelled.setdefault(label, handle)


def _spans(axis: Any, samples: list[Sample], flag: str, color: str, label: str) -> None:
    """Shade the stretches of time in which `flag` held, from a sample to the next."""
    for sample, following in itertools.pairwise(samples):
        if getattr(sample, flag):
            axis.axvspan(sample.at, following.at, color=color, alpha=0.15, linewidth=0, label=label)
