"""replay's settings, declared once (scaler.options): the window, the cluster's settings, the output.

Apart from command.py so that the CLI can list the flags without loading the replay.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from scaler.commands.plot_files import plot_file
from scaler.errors import shown
from scaler.options import number, positive, setting
from scaler.rules.trigger_metadata import TARGET_KINDS, TargetKind
from scaler.simulation.settings import ClusterSettings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PERIOD = re.compile(r"(\d+)([smhdw])")
# A year of history is more than any choice of settings needs, and bounds what one run reads.
LONGEST_WINDOW = 366 * 86400


def period(text: str) -> int:
    """'7d', '12h', '90m', '1w', '3600s' -> seconds.

    >>> period("7d"), period("90m"), period("1h30m")
    (604800, 5400, 5400)
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _PERIOD.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"'{shown(text)}' is not a period such as 7d, 12h, 90m or 1w")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= LONGEST_WINDOW:
        raise ValueError(f"'{shown(text)}' must be more than 0 and at most 366 days")
    return seconds


def moment(text: str) -> datetime.datetime:
    """An ISO 8601 date or time; without a zone it is UTC (as Airflow stores its dates).

    >>> moment("2026-11-30T12:00").isoformat(), moment("2026-11-30 12:00+01:00").isoformat()
    ('2026-11-30T12:00:00+00:00', '2026-11-30T11:00:00+00:00')
    """
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{shown(text)}' is not an ISO 8601 time such as 2026-11-30T12:00 or 2026-11-30") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


def seconds(text: str) -> int:
    """Whole seconds, 0 or more."""
    value: int = number(int)(text)
    if value < 0:
        raise ValueError(f"'{shown(text)}' must be 0 or more")
    return value


DEFAULTS = ClusterSettings()


@dataclass(frozen=True)
class ReplaySettings:
    since: int | None = setting(
        None,
        flag="--since",
        parse=period,
        metavar="PERIOD",
        shown="7d",
        help="Replay the task instances that arrived in this last period (7d, 12h, 90m, 1w).",
    )
    start: datetime.datetime | None = setting(
        None,
        flag="--from",
        parse=moment,
        metavar="TIME",
        help="Replay from this time (ISO 8601, UTC unless it says otherwise) instead of --since.",
    )
    end: datetime.datetime | None = setting(
        None,
        flag="--to",
        parse=moment,
        metavar="TIME",
        shown="now",
        help="Replay up to this time (with --from).",
    )
    polling_interval: int = setting(
        DEFAULTS.polling_interval,
        flag="--polling-interval",
        parse=positive(int),
        metavar="SECONDS",
        help="The ScaledObject's pollingInterval.",
    )
    cooldown: int = setting(
        DEFAULTS.cooldown,
        flag="--cooldown",
        parse=seconds,
        metavar="SECONDS",
        help="The ScaledObject's cooldownPeriod.",
    )
    min_replicas: int = setting(
        DEFAULTS.min_replicas,
        flag="--min-replicas",
        parse=seconds,
        metavar="N",
        help="The ScaledObject's minReplicaCount.",
    )
    max_replicas: int = setting(
        DEFAULTS.max_replicas,
        flag="--max-replicas",
        parse=positive(int),
        metavar="N",
        help="The ScaledObject's maxReplicaCount.",
    )
    pod_start: int = setting(
        DEFAULTS.pod_start,
        flag="--pod-start",
        parse=seconds,
        metavar="SECONDS",
        help="From a worker pod's creation to its Celery worker taking tasks.",
    )
    grace: int = setting(
        DEFAULTS.grace,
        flag="--grace",
        parse=seconds,
        metavar="SECONDS",
        help="The workers' terminationGracePeriodSeconds: a warm shutdown's time before SIGKILL.",
    )
    stabilization_window: int = setting(
        DEFAULTS.stabilization,
        flag="--stabilization-window",
        parse=seconds,
        metavar="SECONDS",
        help="The HPA's scale-down stabilizationWindowSeconds (the third policy uses 60).",
    )
    kind: TargetKind = setting(
        DEFAULTS.kind,
        flag="--kind",
        choices=TARGET_KINDS,
        help="The worker set's kind: which pods a scale-down removes.",
    )
    retry_delay: int = setting(
        DEFAULTS.retry_delay,
        flag="--retry-delay",
        parse=seconds,
        metavar="SECONDS",
        help="The delay before a killed task's retry (Airflow's retry_delay); its retries are its own max_tries.",
    )
    output: str = setting("text", flag="--format", choices=("text", "json"), help="text for people, json for tools.")
    plot: str | None = setting(
        None,
        flag="--plot",
        parse=plot_file,
        metavar="FILE",
        help="Also draw demand, workers and replicas over time for each policy to FILE (.png, .svg or .html).",
    )

    def cluster(self, concurrency: int, activation_threshold: float) -> ClusterSettings:
        return ClusterSettings(
            concurrency=concurrency,
            polling_interval=self.polling_interval,
            cooldown=self.cooldown,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            stabilization=self.stabilization_window,
            pod_start=self.pod_start,
            grace=self.grace,
            retry_delay=self.retry_delay,
            retries=0,  # Airflow's default_task_retries, for a row whose max_tries is unknown
            kind=self.kind,
            activation_threshold=activation_threshold,
        )
