"""Pure: what the model is told: the worker set's settings (ClusterSettings) and the policy that scales it.

Seconds throughout. CHART (the chart's formula as shipped), safe_chart (the same
with a grace period no task outlasts) and OURS are what every comparison has;
`replay` adds its own list (scaler.commands.replay.policies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scaler.rules.prewarm import PrewarmSettings
from scaler.rules.trigger_metadata import TargetKind


@dataclass(frozen=True)
class ClusterSettings:
    """A ScaledObject, its HPA, its worker pods and Airflow's retries. Seconds throughout."""

    concurrency: int = 16  # Celery worker_concurrency (the trigger's `concurrency`)
    polling_interval: int = 30  # KEDA's default
    cooldown: int = 300  # KEDA's default cooldownPeriod
    min_replicas: int = 0
    max_replicas: int = 100  # KEDA's default maxReplicaCount
    hpa_sync: int = 15  # the controller manager's --horizontal-pod-autoscaler-sync-period
    stabilization: int = 300  # the HPA's default scale-down stabilizationWindowSeconds
    pod_start: int = 60  # from creation to a Celery worker taking tasks
    grace: int = 600  # terminationGracePeriodSeconds (the Airflow chart's default for workers)
    retry_delay: int = 300  # Airflow's default retry_delay
    retries: int = 2  # for tasks whose history does not say
    reconcile: int = 5  # the scaler's --deletion-cost-interval
    kind: TargetKind = "Deployment"
    activation_threshold: float = 0.0  # the trigger's activationThreshold
    workload: str = "airflow-worker"  # the Deployment's or StatefulSet's name: its pods' names start with it
    # serve's pre-warm settings (the runs, window and grace; the model reads no database on intervals).
    prewarm: PrewarmSettings = field(default_factory=PrewarmSettings)


@dataclass(frozen=True)
class Policy:
    """How the worker set is scaled: the chart's formula or the scaler's, and the HPA's window."""

    name: str
    protection: bool  # the scaler's busy-worker floor and pod-deletion-cost; False is the chart's formula
    drain: bool = False  # the trigger's `drain: "true"`: surplus workers stop taking tasks (rules/drain.py)
    stabilization: int | None = None  # the HPA's scale-down window; None: the settings'
    kind: TargetKind | None = None  # None: the settings'
    prewarm_lead: int | None = None  # the trigger's prewarmLeadSeconds with `prewarm: "true"`; None: off
    prewarm_max_workers: int = 10  # its prewarmMaxWorkers
    grace: int | None = None  # the workers' terminationGracePeriodSeconds; None: the settings'

    def grace_in(self, settings: ClusterSettings) -> int:
        """The terminationGracePeriodSeconds the worker pods get under this policy."""
        return settings.grace if self.grace is None else self.grace


CHART = Policy("chart formula", protection=False)
OURS = Policy("airflow-keda-scaler", protection=True)


def safe_chart(longest: int, settings: ClusterSettings, kind: TargetKind | None = None) -> Policy:
    """The chart's formula made safe as its users make it: terminationGracePeriodSeconds at least the longest
    task (`longest` seconds), so a removed worker finishes its tasks before it goes and none is killed.

    >>> safe_chart(5400, ClusterSettings()).name, safe_chart(60, ClusterSettings()).grace
    ('chart formula, no kills (grace 5,400 s)', 600)
    """
    grace = max(longest, settings.grace)
    return Policy(f"chart formula, no kills (grace {grace:,} s)", protection=False, kind=kind, grace=grace)
