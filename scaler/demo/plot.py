"""`demo --plot FILE`: demand against workers asked for and replicas, over time, per ScaledObject."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scaler import plotting
from scaler.demo.workload import SCALED_OBJECTS, Sample


def write_plot(path: Path, history: Sequence[Sample]) -> None:
    pyplot = plotting.pyplot()
    figure, axes = pyplot.subplots(len(SCALED_OBJECTS), 1, figsize=(10, 3.2 * len(SCALED_OBJECTS)), sharex=True)
    for axis, so in zip(axes, SCALED_OBJECTS, strict=True):
        samples = [s for s in history if s.name == so.name and not s.error]
        times = [s.at for s in samples]
        axis.fill_between(times, [s.queued + s.running for s in samples], step="post", alpha=0.25, label="demand")
        axis.step(times, [s.running for s in samples], where="post", label="running", linewidth=1)
        axis.set_ylabel("task instances")
        workers = axis.twinx()
        workers.step(times, [s.workers for s in samples], where="post", color="C3", label="workers asked for")
        workers.step(times, [s.replicas for s in samples], where="post", color="C2", linestyle="--", label="replicas")
        workers.step(
            times,
            [s.chart_replicas for s in samples],
            where="post",
            color="C7",
            linestyle=":",
            label="replicas under the chart's formula",
        )
        held = [s.at for s in samples if s.floor_held]
        if held:
            workers.plot(held, [0.15] * len(held), "|", color="C4", markersize=10, label="busy-worker floor held")
        workers.set_ylabel("workers")
        workers.set_ylim(0, so.max_replicas + 1)
        last = samples[-1] if samples else None
        killed = (
            f"; tasks killed: {last.killed}, under the chart's formula {last.chart_killed}" if last is not None else ""
        )
        axis.set_title(f"{so.name} (queue {so.queue}, concurrency {so.concurrency}){killed}")
        handles = axis.get_legend_handles_labels()[0] + workers.get_legend_handles_labels()[0]
        axis.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize="small")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    plotting.save(figure, path, "airflow-keda-scaler demo: demand, workers asked for and replicas")
    pyplot.close(figure)
