"""The Prometheus instruments, built on a registry passed in.

Metrics observe decisions and database reads; nothing here feeds back into
scaling. Names follow Prometheus conventions: one `airflow_keda_scaler_`
namespace, base units (seconds), `_total` counters. Cardinality is bounded:
ScaledObject series are read from scaled_objects.py at scrape time, so they
go when the ScaledObject is forgotten (it stopped calling) and cost no
Prometheus objects per ScaledObject; database series go when its pool is
closed for idleness (database_caches.py); error kinds are a fixed set
(errors.FailureKind).
No label ever holds a URL or a password: databases are labelled by their
configured name or by host:port/database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scaler.errors import DatabaseUnavailable
from scaler.rules.memory_budget import KINDS, MemoryBudget

# The client would add a `_created` gauge beside every counter and histogram: twice the
# series, and nothing reads them. (A process-wide switch of the client library.)
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

NAMESPACE = "airflow_keda_scaler"
SCALED_OBJECT_LABELS = ("namespace", "scaled_object")
# Snapshot queries are small grouped reads: most take milliseconds; the query timeout defaults to 2 s.
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# KEDA's HPA path gives each call 3 s.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0)
# Shown for task instances whose queue is NULL (counted only when a trigger sets no `queues`).
NO_QUEUE = "(none)"


@dataclass(frozen=True)
class DatabaseState:
    """What the registry knows of one database at scrape time."""

    database: str
    snapshot_age_seconds: float
    connections_in_use: int
    watched_streams: int = 0
    held_streams: int = 0


@dataclass(frozen=True)
class PrewarmSample:
    """A pre-warming ScaledObject's pre-warm series."""

    workers: int  # its pre-warm now (0: none on)
    predicted_tasks: int  # summed over pre-warmed runs whose actual initial demand is known
    actual_tasks: int
    outcomes: tuple[tuple[str, int], ...]  # (arrived | expired | cancelled, pre-warms that ended so)


@dataclass(frozen=True)
class ScaledObjectSample:
    """What one ScaledObject's series show at scrape time: its last decision and its counters."""

    namespace: str
    name: str
    running: int
    queued: int
    # Every queue seen since the ScaledObject first called -> (running, queued) now; 0s when it has none.
    queues: tuple[tuple[str, int, int], ...]
    workers: int
    floor: int
    active: bool
    decided_at: float  # Unix time
    changes: int
    pushed: int
    prewarm: PrewarmSample | None = None  # None: its trigger does not pre-warm


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        so = SCALED_OBJECT_LABELS

        def gauge(name: str, doc: str, labels: tuple[str, ...] = so) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = so) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        # Per ScaledObject, what was decided and from what: read at scrape time (watch_scaled_objects).
        # Safe scale-down on the Kubernetes side.
        self.kubernetes_access = Gauge(
            "kubernetes_access",
            "1 when the scaler has a Kubernetes API to keep pod-deletion-cost with, 0 when it runs without one.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.deletion_cost_patches = counter(
            "pod_deletion_cost_patches", "Worker pods whose pod-deletion-cost annotation was changed."
        )
        self.deletion_cost_skipped = gauge(
            "pod_deletion_cost_skipped",
            "1 while pod-deletion-cost cannot be kept for the ScaledObject, by reason (forbidden, unauthorized, "
            "not_found, unsupported, api_error).",
            (*so, "reason"),
        )
        # Drain (drain_loop.py): surplus workers told to stop consuming through the Celery broker.
        self.drained_workers = gauge("drained_workers", "Workers drained now: not consuming the trigger's queues.")
        self.drained_longest = gauge(
            "drained_longest_seconds", "How long the longest-drained worker drained now has been drained."
        )
        self.drain_commands = counter(
            "drain_commands",
            "Commands sent to workers through the broker (cancel_consumer, add_consumer).",
            (*so, "command"),
        )
        self.drain_command_failures = counter(
            "drain_command_failures", "Commands to workers that failed or had no reply, by command.", (*so, "command")
        )
        self.drain_restorations = counter(
            "drain_restorations",
            "Queues given back to workers that this scaler had not drained (after a restart or a crash).",
        )
        self.drain_skipped = gauge(
            "drain_skipped",
            "1 while drain cannot act for the ScaledObject, by reason (no_broker, broker_unavailable, forbidden, "
            "unauthorized, not_found, unsupported, api_error, no_kubernetes).",
            (*so, "reason"),
        )
        self.drain_leader = Gauge(
            "drain_leader",
            "1 while this replica holds drain's Lease (or runs without election), else 0.",
            namespace=NAMESPACE,
            registry=registry,
        )
        # Push (external-push).
        self.open_streams = Gauge(
            "open_streams", "StreamIsActive streams open now.", namespace=NAMESPACE, registry=registry
        )
        # Per database.
        self.snapshot_query_duration = Histogram(
            "snapshot_query_duration_seconds",
            "Time taken by snapshot queries, failed ones included.",
            ("database",),
            namespace=NAMESPACE,
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.snapshot_errors = counter(
            "snapshot_errors", "Snapshot queries that failed, by kind of failure.", ("database", "kind")
        )
        self.database_up = gauge("database_up", "1 when the last snapshot query succeeded, else 0.", ("database",))
        self.prewarm_query_duration = Histogram(
            "prewarm_query_duration_seconds",
            "Time taken by pre-warm reads (read: schedule or history), failed ones included.",
            ("database", "read"),
            namespace=NAMESPACE,
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.prewarm_errors = counter(
            "prewarm_errors",
            "Pre-warm reads that failed, by read and kind of failure (decisions go on without pre-warm).",
            ("database", "read", "kind"),
        )
        # gRPC.
        self.grpc_calls = counter(
            "grpc_calls", "gRPC calls handled, by method and status code.", ("service", "method", "code")
        )
        self.grpc_call_duration = Histogram(
            "grpc_call_duration_seconds",
            "Time taken by unary gRPC calls (streams are counted, not timed).",
            ("service", "method"),
            namespace=NAMESPACE,
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.tls_reloads = Counter(
            "tls_certificate_reloads",
            "Times the serving certificate files changed on disk and were loaded.",
            namespace=NAMESPACE,
            registry=registry,
        )

    # Database observations (a snapshot.RefreshObserver).
    def refreshed(self, database: str, seconds: float, failure: DatabaseUnavailable | None) -> None:
        self.snapshot_query_duration.labels(database).observe(seconds)
        if failure is not None:
            self.snapshot_errors.labels(database, failure.kind).inc()
        self.database_up.labels(database).set(0 if failure else 1)

    # Pre-warm reads (a prewarm_cache.PrewarmObserver).
    def prewarm_read(self, database: str, read: str, seconds: float, failure: DatabaseUnavailable | None) -> None:
        self.prewarm_query_duration.labels(database, read).observe(seconds)
        if failure is not None:
            self.prewarm_errors.labels(database, read, failure.kind).inc()

    def forget_database(self, database: str) -> None:
        """Drop a closed database's series (its pool was idle)."""
        for metric in (
            self.snapshot_query_duration,
            self.snapshot_errors,
            self.database_up,
            self.prewarm_query_duration,
            self.prewarm_errors,
        ):
            metric.remove_by_labels({"database": database})

    def watch_databases(self, states: Callable[[], Iterable[DatabaseState]]) -> None:
        """Report snapshot age, pool use and streams per database, read from the registry at scrape time."""
        self.registry.register(_DatabaseCollector(states))

    def watch_memory_budget(self, budget: MemoryBudget) -> None:
        """Report the memory limit, the budget it leaves and what is charged against it, at scrape time."""
        self.registry.register(_BudgetCollector(budget))

    def watch_scaled_objects(self, samples: Callable[[], Iterable[ScaledObjectSample]]) -> None:
        """Report each ScaledObject's decision and counters, read from its state at scrape time.

        A collector rather than labelled children: a child per series and ScaledObject cost about
        6 KiB each, 6 MiB for 1,000 ScaledObjects; the state they would copy is there already.
        """
        self.registry.register(_ScaledObjectCollector(samples))


class _ScaledObjectCollector(Collector):
    def __init__(self, samples: Callable[[], Iterable[ScaledObjectSample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        f = _scaled_object_families()
        for sample in self._samples():
            labels = [sample.namespace, sample.name]
            f.demand.add_metric([*labels, "running"], sample.running)
            f.demand.add_metric([*labels, "queued"], sample.queued)
            for queue, running, queued in sample.queues:
                f.by_queue.add_metric([*labels, queue, "running"], running)
                f.by_queue.add_metric([*labels, queue, "queued"], queued)
            f.workers.add_metric(labels, sample.workers)
            f.floor.add_metric(labels, sample.floor)
            f.active.add_metric(labels, int(sample.active))
            f.decided_at.add_metric(labels, sample.decided_at)
            f.changes.add_metric(labels, sample.changes)
            if sample.pushed:
                f.pushed.add_metric(labels, sample.pushed)
            if sample.prewarm is not None:
                f.prewarm_workers.add_metric(labels, sample.prewarm.workers)
                f.prewarm_predicted.add_metric(labels, sample.prewarm.predicted_tasks)
                f.prewarm_actual.add_metric(labels, sample.prewarm.actual_tasks)
                for outcome, count in sample.prewarm.outcomes:
                    f.prewarm_runs.add_metric([*labels, outcome], count)
        yield from f

    def describe(self) -> Iterator[Metric]:
        yield from _scaled_object_families()


class _ScaledObjectFamilies(NamedTuple):
    demand: GaugeMetricFamily
    by_queue: GaugeMetricFamily
    workers: GaugeMetricFamily
    floor: GaugeMetricFamily
    active: GaugeMetricFamily
    decided_at: GaugeMetricFamily
    changes: CounterMetricFamily
    pushed: CounterMetricFamily
    prewarm_workers: GaugeMetricFamily
    prewarm_predicted: CounterMetricFamily
    prewarm_actual: CounterMetricFamily
    prewarm_runs: CounterMetricFamily


def _scaled_object_families() -> _ScaledObjectFamilies:
    so = list(SCALED_OBJECT_LABELS)

    def gauge(name: str, doc: str, labels: list[str] = so) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)

    def counter(name: str, doc: str, labels: list[str] = so) -> CounterMetricFamily:
        return CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)

    return _ScaledObjectFamilies(
        gauge(
            "demand_tasks", "Task instances counted as demand by the ScaledObject's trigger, by state.", [*so, "state"]
        ),
        gauge(
            "queue_demand_tasks",
            "Task instances counted as demand, by Celery queue and state (queues seen since the ScaledObject "
            "first called; 0 when a queue has none).",
            [*so, "queue", "state"],
        ),
        gauge("desired_workers", "Celery workers asked for: the metric value sent to KEDA."),
        gauge(
            "busy_worker_floor",
            "Workers running the ScaledObject's tasks now (Deployment), or highest busy ordinal + 1 (StatefulSet): "
            "the workers asked for never drop below it. 0 when scaleDownProtection is off.",
        ),
        gauge("active", "1 when the ScaledObject is active (demand above activationThreshold), else 0."),
        gauge("last_decision_timestamp_seconds", "Unix time of the ScaledObject's last decision."),
        counter("decision_changes", "How many times the workers asked for or the activity changed."),
        counter("stream_messages", "StreamIsActive messages pushed to KEDA."),
        gauge(
            "prewarm_workers",
            "Workers the ScaledObject's pre-warm asks for now (0: none on); only for triggers with prewarm.",
        ),
        counter(
            "prewarm_predicted_tasks",
            "Initial demand predicted for pre-warmed runs, counted once the run's actual initial demand is known.",
        ),
        counter("prewarm_actual_tasks", "Actual initial demand of those same runs (compare with predicted)."),
        counter(
            "prewarm_runs",
            "Pre-warms that ended, by outcome: arrived (the run came), expired (it did not come within the grace), "
            "cancelled (its DAG was paused or left the schedule).",
            [*so, "outcome"],
        ),
    )


class _BudgetCollector(Collector):
    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        limit, budget, used, admitted = _budget_families()
        # No limit (none set, none in the cgroup): 0, so that a ratio over it reads as "no budget", not NaN.
        limit.add_metric([], self._budget.limit or 0)
        budget.add_metric([], self._budget.budget)
        used.add_metric([], self._budget.used)
        for kind in KINDS:
            admitted.add_metric([kind], self._budget.held[kind])
        yield from (limit, budget, used, admitted)

    def describe(self) -> Iterator[Metric]:
        yield from _budget_families()


def _budget_families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            f"{NAMESPACE}_memory_limit_bytes",
            "The memory limit the budget is taken from (--memory-limit, else the container's cgroup limit); 0: none.",
        ),
        GaugeMetricFamily(
            f"{NAMESPACE}_memory_budget_bytes",
            "What streams, ScaledObjects and databases may be charged in all: the limit less headroom and the "
            "memory held at start.",
        ),
        GaugeMetricFamily(
            f"{NAMESPACE}_memory_budget_used_bytes",
            "What the admitted streams, ScaledObjects and databases are charged now; past the budget new ones are "
            "refused (RESOURCE_EXHAUSTED).",
        ),
        GaugeMetricFamily(
            f"{NAMESPACE}_memory_budget_admitted",
            "Streams, ScaledObjects and databases admitted now, by kind.",
            labels=["kind"],
        ),
    )


class _DatabaseCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[DatabaseState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        age, in_use, watched, held = _database_families()
        # Two URLs can share a label (same host:port/database, other users): merge them
        # so the exposition never holds a duplicate series.
        ages: dict[str, float] = {}
        counts: dict[str, list[int]] = {}
        for state in self._states():
            ages[state.database] = min(ages.get(state.database, state.snapshot_age_seconds), state.snapshot_age_seconds)
            total = counts.setdefault(state.database, [0, 0, 0])
            total[0] += state.connections_in_use
            total[1] += state.watched_streams
            total[2] += state.held_streams
        for database in sorted(ages):
            age.add_metric([database], ages[database])
            for family, value in zip((in_use, watched, held), counts[database], strict=True):
                family.add_metric([database], value)
        yield from (age, in_use, watched, held)

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering checks for clashes without reading the registry.
        yield from _database_families()


def _database_families() -> tuple[GaugeMetricFamily, ...]:
    def family(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=["database"])

    return (
        family(
            "snapshot_age_seconds",
            "Seconds since the database's last successful snapshot (since first use if none yet).",
        ),
        family(
            "pool_connections_in_use", "Connections of the scaler's pool to this database that are running a query now."
        ),
        family("watched_streams", "StreamIsActive streams listening to this database's watcher."),
        family("held_streams", "Streams sending nothing because their database fails (they keep KEDA's last state)."),
    )
