"""`replay --plot FILE`: what really happened, then each policy: demand, workers asked for, pods, replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaler.commands import plot_files
from scaler.commands.replay.report import Replayed


def write_plot(path: Path, replayed: Replayed) -> None:
    pyplot = plot_files.pyplot()
    panels = 1 + len(replayed.results)
    figure, axes = pyplot.subplots(panels, 1, figsize=(11, 2.6 * panels), sharex=True, squeeze=False)
    axes = [row[0] for row in axes]
    hours = 3600.0
    observed = replayed.observed.samples
    axis = axes[0]
    times = [s.at / hours for s in observed]
    axis.fill_between(times, [s.running + s.queued for s in observed], step="post", alpha=0.25, label="demand")
    axis.step(times, [s.running for s in observed], where="post", linewidth=1, label="running")
    axis.set_ylabel("task instances")
    workers = axis.twinx()
    workers.step(times, [s.workers for s in observed], where="post", color="C3", label="scaler's answer")
    workers.set_ylabel("workers")
    axis.set_title(f"observed in {replayed.database}: demand, and what the scaler would have answered")
    _legend(axis, workers)
    for axis, result in zip(axes[1:], replayed.results, strict=True):
        samples = result.samples
        times = [s.at / hours for s in samples]
        axis.fill_between(times, [s.running + s.queued for s in samples], step="post", alpha=0.25, label="demand")
        axis.set_ylabel("task instances")
        workers = axis.twinx()
        workers.step(times, [s.asked for s in samples], where="post", color="C3", label="workers asked for")
        workers.step(times, [s.pods for s in samples], where="post", color="C1", linewidth=0.8, label="pods")
        workers.step(times, [s.replicas for s in samples], where="post", color="C2", linestyle="--", label="replicas")
        held = [s.at / hours for s in samples if s.floor > -(-(s.running + s.queued) // replayed.settings.concurrency)]
        if held:
            workers.plot(
                held, [0] * len(held), "|", color="C4", markersize=4, alpha=0.5, label="busy-worker floor held"
            )
        workers.set_ylabel("workers")
        axis.set_title(
            f"{result.policy.name}: {result.killed:,} tasks killed, {result.worker_seconds / hours:,.1f} worker-hours"
        )
        _legend(axis, workers)
    axes[-1].set_xlabel(f"hours from {replayed.window.start:%Y-%m-%d %H:%M} UTC")
    figure.tight_layout()
    plot_files.save(figure, path, f"airflow-keda-scaler replay of {replayed.database}")
    pyplot.close(figure)


def _legend(axis: Any, twin: Any) -> None:
    handles = axis.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    axis.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize="x-small")
