"""`airflow-keda-scaler replay`: read a window of task instances, replay each policy, report.

Read-only: one read-only cursor over task_instance (the backends' history
query), a page at a time; the rows become compact arrays (trace.py). The
policies then run through the package's model, one process each when the trace
is big (they are independent and the machine has cores), and the report says
what each would have cost beside what really happened.

Exit codes as `check`: 1 with one line when the database cannot be read, 2 for
wrong input.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from scaler.adapters.databases.pool import PoolSettings
from scaler.commands import plot_files
from scaler.commands.replay.policies import policies_for, prewarm_policy, replay_policies
from scaler.commands.replay.report import Replayed, as_json, as_text
from scaler.commands.replay.settings import LONGEST_WINDOW, ReplaySettings
from scaler.commands.replay.trace import TraceBuilder, Window
from scaler.errors import DatabaseUnavailable, InvalidMetadata, NotPermitted
from scaler.rules.admission import ConnectionPolicy
from scaler.rules.database_urls import ConnectionTarget
from scaler.service.database_caches import reader_for

DEFAULT_SINCE = 7 * 86400
# Points per policy in the plot (and in the observed series): enough for a week at 5-minute steps.
SAMPLES = 2000


# Failures of the scheduled runs' read that leave task_instance readable (no dag_run, no grant on it).
TABLE_PROBLEMS = ("no_table", "permission", "schema_changed", "query")


class BadInput(Exception):
    """Wrong arguments: exit 2."""


async def run_replay(
    *,
    connection: str | None,
    filters: Mapping[str, str],
    databases: Mapping[str, ConnectionTarget],
    pool: PoolSettings,
    settings: ReplaySettings,
    policy: ConnectionPolicy | None = None,
    now: datetime.datetime | None = None,
    progress: TextIO | None = None,
) -> int:
    """Replay one trigger's scope of one database; `progress` gets a progress bar (a terminal's stderr)."""
    try:
        metadata, label = _metadata(connection, filters, databases)
        spec = (policy or ConnectionPolicy()).parse(metadata)
        window = window_of(settings, now or datetime.datetime.now(datetime.UTC))
        _check_plot(settings.plot)
    except (InvalidMetadata, NotPermitted, BadInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(spec.database, ConnectionTarget):
        target, label = spec.database, spec.database.label
    else:
        target = databases[label]
    cluster = settings.cluster(spec.concurrency, spec.activation_threshold)
    bar = Progress(progress)
    reader = reader_for(target, label=label, settings=pool)
    prewarm = None
    try:
        runs = None
        bar.show("reading scheduled DAG runs", 0.0, "")
        try:
            runs = await reader.scheduled_runs(window.start, window.end, cluster.prewarm.window)
            prewarm = prewarm_policy(spec.prewarm_lead, spec.prewarm_max_workers)
        except DatabaseUnavailable as error:
            if error.kind not in TABLE_PROBLEMS:
                raise  # the database itself cannot be read: the history could not either
            # The pre-warm policy needs dag_run; the others do not: replay them and say why it is missing.
            bar.done()
            print(f"note: no pre-warm policy: cannot read the scheduled runs: {error.reason}", file=sys.stderr)
        builder = TraceBuilder(
            spec, window, sample_every=max(1, window.seconds // SAMPLES), target_kind=settings.kind, runs=runs
        )
        async for page in reader.history(window.start, window.end):
            builder.add(page)
            bar.show("reading task instances", builder.reached, f"{builder.observed.rows:,} rows")
    except DatabaseUnavailable as error:
        bar.done()
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        await reader.close()
    trace, observed = builder.finish()
    policies = policies_for(trace, cluster, prewarm)
    bar.show(f"replaying {len(policies)} policies over {len(trace):,} tasks", 1.0, "")
    results = await asyncio.to_thread(replay_policies, policies, cluster, trace, window, builder.sample_every)
    bar.done()
    scope = {key: value for key, value in filters.items() if value is not None}
    replayed = Replayed(label, window, scope, cluster, results, observed, len(trace))
    print(as_json(replayed) if settings.output == "json" else as_text(replayed), end="", flush=True)
    if settings.plot:
        from scaler.commands.replay.plot import write_plot

        try:
            write_plot(Path(settings.plot), replayed)
        except OSError as error:
            print(f"error: cannot write --plot {settings.plot}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"wrote {settings.plot}", file=sys.stderr)
    return 0


def _check_plot(plot: str | None) -> None:
    """Before the replay, not after: a plot that cannot be written is known at once."""
    if plot and not plot_files.available():
        raise BadInput(plot_files.MISSING)
    if plot and not Path(plot).resolve().parent.is_dir():
        raise BadInput(f"--plot {plot}: no such folder")


def _metadata(
    connection: str | None, filters: Mapping[str, str], databases: Mapping[str, ConnectionTarget]
) -> tuple[dict[str, str], str]:
    """The trigger metadata to replay under, as check builds it, and the database's name if configured."""
    if connection:
        return {"connectionFromEnv": connection, **filters}, ""
    if len(databases) == 1:
        name = next(iter(databases))
        return {"database": name, **filters}, name
    if not databases:
        raise BadInput(
            "nothing to replay: give --connection URL (or AIRFLOW_KEDA_SCALER_CONNECTION), or --database NAME=URL"
        )
    raise BadInput(f"replay reads one database: give --connection URL or one --database, not {len(databases)}")


def window_of(settings: ReplaySettings, now: datetime.datetime) -> Window:
    """The window from --since, or --from/--to; BadInput for a window that cannot be."""
    if settings.start is None:
        if settings.end is not None:
            raise BadInput("--to needs --from (or give --since alone)")
        return Window(now - datetime.timedelta(seconds=settings.since or DEFAULT_SINCE), now)
    if settings.since is not None:
        raise BadInput("give --since or --from/--to, not both")
    end = settings.end or now
    if end <= settings.start:
        raise BadInput(f"--from {settings.start.isoformat()} is not before --to {end.isoformat()}")
    if (end - settings.start).total_seconds() > LONGEST_WINDOW:
        raise BadInput("the window is longer than 366 days")
    return Window(settings.start, end)


class Progress:
    """A one-line progress bar on a terminal; nothing elsewhere (logs and pipes get the result only)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._shown = ""

    def show(self, what: str, fraction: float, detail: str) -> None:
        if self._stream is None:
            return
        done = int(fraction * 30)
        line = f"\r{what} {'█' * done}{'░' * (30 - done)} {fraction:4.0%} {detail}"
        if line != self._shown:
            self._stream.write(line.ljust(len(self._shown)))
            self._stream.flush()
            self._shown = line

    def done(self) -> None:
        if self._stream is not None and self._shown:
            self._stream.write("\r" + " " * len(self._shown) + "\r")
            self._stream.flush()
            self._shown = ""
