"""Pure: the HPA's desired replicas for the scaler's metric (cluster.py applies KEDA's and the HPA's rules).

KEDA owns 0 <-> 1: an active trigger at 0 replicas scales to max(minReplicaCount, 1);
an inactive one goes back to minReplicaCount once cooldownPeriod has passed since
it was last active. The HPA owns 1 <-> N: with an AverageValue target of 1, its
desired replicas are ceil(metric / 1), left unchanged while the ratio is within
its 10% tolerance, and kept between minReplicaCount (at least 1) and
maxReplicaCount.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class ScaledObjectSettings:
    """The ScaledObject's replica bounds, which the HPA keeps."""

    min_replicas: int = 0
    max_replicas: int = 10


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
