"""Pure: what KEDA and the HPA do with the scaler's answers, for the demo.

KEDA owns 0 <-> 1: an active trigger at 0 replicas scales to max(minReplicaCount, 1);
an inactive one goes back to minReplicaCount once cooldownPeriod has passed since
it was last active. The HPA owns 1 <-> N: with an AverageValue target of 1, its
desired replicas are ceil(metric / 1), left unchanged while the ratio is within
its 10% tolerance, and kept between minReplicaCount (at least 1) and
maxReplicaCount. The HPA's scale-down stabilization window (default 300 s) is
left out so that a short demo shows scale-down too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class ScaledObjectSettings:
    polling_interval: float = 10.0
    cooldown_period: float = 30.0
    min_replicas: int = 0
    max_replicas: int = 10


@dataclass
class SimulatedScaledObject:
    settings: ScaledObjectSettings
    replicas: int = 0
    last_active: float | None = None

    def step(self, now: float, *, workers: float, active: bool) -> int:
        """Apply one poll's answer (GetMetrics value, IsActive) at time `now`; return the new replica count.

        >>> so = SimulatedScaledObject(ScaledObjectSettings(cooldown_period=30, max_replicas=10))
        >>> so.step(0, workers=3, active=True), so.step(10, workers=3, active=True)
        (1, 3)
        >>> so.step(20, workers=0, active=False), so.step(45, workers=0, active=False)
        (1, 0)
        """
        settings = self.settings
        if active:
            self.last_active = now
        if self.replicas == 0:
            if active:
                self.replicas = max(settings.min_replicas, 1)
            return self.replicas
        cooled = self.last_active is None or now - self.last_active >= settings.cooldown_period
        if not active and settings.min_replicas == 0 and cooled:
            self.replicas = 0
            return self.replicas
        self.replicas = hpa_desired(self.replicas, workers, settings)
        return self.replicas


def hpa_desired(current: int, metric: float, settings: ScaledObjectSettings) -> int:
    """The HPA's desired replicas for an AverageValue metric with target 1.

    >>> s = ScaledObjectSettings(max_replicas=10)
    >>> hpa_desired(4, 4.3, s), hpa_desired(4, 5, s), hpa_desired(4, 0, s), hpa_desired(4, 50, s)
    (4, 5, 1, 10)
    """
    if current > 0 and abs(1 - metric / current) <= HPA_TOLERANCE:
        return current
    desired = math.ceil(metric)
    return min(max(desired, settings.min_replicas, 1), settings.max_replicas)
