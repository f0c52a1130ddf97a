"""The demo's KEDA and HPA, as the facts describe them: a table of named cases."""

from __future__ import annotations

import pytest

from scaler.simulation.keda import ScaledObjectSettings, SimulatedScaledObject, hpa_desired

SETTINGS = ScaledObjectSettings(cooldown_period=30, min_replicas=0, max_replicas=10)


@pytest.mark.parametrize(
    ("case", "replicas", "last_active", "now", "workers", "active", "settings", "expected"),
    [
        ("idle at zero stays at zero", 0, None, 100, 0, False, SETTINGS, 0),
        ("activation takes zero to one, not to the metric", 0, None, 100, 7, True, SETTINGS, 1),
        ("activation honours minReplicaCount", 0, None, 100, 7, True, ScaledObjectSettings(min_replicas=2), 2),
        ("the HPA follows the metric", 1, 90, 100, 7, True, SETTINGS, 7),
        ("the HPA stays within its 10% tolerance", 4, 90, 100, 4.3, True, SETTINGS, 4),
        ("the HPA is capped at maxReplicaCount", 4, 90, 100, 50, True, SETTINGS, 10),
        ("inactive before the cooldown: the HPA keeps one", 3, 90, 100, 0, False, SETTINGS, 1),
        ("inactive after the cooldown: zero", 3, 60, 100, 0, False, SETTINGS, 0),
        (
            "minReplicaCount 1 never goes to zero",
            3,
            0,
            100,
            0,
            False,
            ScaledObjectSettings(cooldown_period=30, min_replicas=1),
            1,
        ),
    ],
)
def test_one_poll(
    case: str,
    replicas: int,
    last_active: float | None,
    now: float,
    workers: float,
    active: bool,
    settings: ScaledObjectSettings,
    expected: int,
) -> None:
    scaled_object = SimulatedScaledObject(settings, replicas=replicas, last_active=last_active)
    assert scaled_object.step(now, workers=workers, active=active) == expected, case


def test_activity_refreshes_the_cooldown() -> None:
    scaled_object = SimulatedScaledObject(SETTINGS, replicas=2, last_active=0)
    scaled_object.step(25, workers=1, active=True)  # active again at 25
    assert scaled_object.step(50, workers=0, active=False) == 1  # 25 s since: not cooled yet
    assert scaled_object.step(56, workers=0, active=False) == 0


def test_hpa_desired_never_goes_below_one() -> None:
    assert hpa_desired(3, 0.0, SETTINGS) == 1
