"""KEDA and the HPA in the package's model, as the facts describe them: a table of named cases.

The scaler's answer is given (as the demo gives the real scaler's); one poll and one HPA sync happen
at second 100, and what matters is the replica count after it.
"""

from __future__ import annotations

import pytest

from scaler.rules.decision import Decision
from scaler.simulation.control import Replay, ScaledObjectSettings, hpa_desired
from scaler.simulation.settings import OURS, ClusterSettings

SETTINGS = ClusterSettings(polling_interval=10, hpa_sync=10, cooldown=30, min_replicas=0, max_replicas=10)


class Answered(Replay):
    answer = Decision(running=0, queued=0, workers=0, active=False, by_queue=())

    def decide(self, t: int) -> Decision:
        return self.answer


def after_one_poll(
    settings: ClusterSettings, replicas: int, last_active: int | None, workers: int, active: bool
) -> int:
    model = Answered(OURS, settings, (), seed=1)
    model.replicas, model.last_active = replicas, last_active
    model.answer = Decision(running=0, queued=0, workers=workers, active=active, by_queue=())
    model.keda(100)
    if model.replicas > 0 and replicas > 0:  # the HPA acts on a running worker set, not on the activation
        model.hpa(100)
    return model.replicas


@pytest.mark.parametrize(
    ("case", "replicas", "last_active", "workers", "active", "settings", "expected"),
    [
        ("idle at zero stays at zero", 0, None, 0, False, SETTINGS, 0),
        ("activation takes zero to one, not to the metric", 0, None, 7, True, SETTINGS, 1),
        (
            "activation honours minReplicaCount",
            0,
            None,
            7,
            True,
            ClusterSettings(min_replicas=2, polling_interval=10, hpa_sync=10),
            2,
        ),
        ("the HPA follows the metric, at most +100% or +4 a sync", 1, 90, 7, True, SETTINGS, 5),
        ("the HPA stays within its 10% tolerance", 10, 90, 9, True, SETTINGS, 10),
        ("the HPA is capped at maxReplicaCount", 8, 90, 50, True, SETTINGS, 10),
        ("inactive before the cooldown: the HPA keeps one", 3, 90, 0, False, ClusterSettings(stabilization=0), 1),
        ("inactive after the cooldown: zero", 3, 60, 0, False, SETTINGS, 0),
        (
            "minReplicaCount 1 never goes to zero",
            3,
            0,
            0,
            False,
            ClusterSettings(cooldown=30, min_replicas=1, stabilization=0),
            1,
        ),
    ],
)
def test_one_poll(
    case: str,
    replicas: int,
    last_active: int | None,
    workers: int,
    active: bool,
    settings: ClusterSettings,
    expected: int,
) -> None:
    assert after_one_poll(settings, replicas, last_active, workers, active) == expected, case


def test_activity_refreshes_the_cooldown() -> None:
    model = Answered(OURS, SETTINGS, (), seed=1)
    model.replicas, model.last_active = 2, 0
    model.answer = Decision(running=1, queued=0, workers=1, active=True, by_queue=())
    model.keda(25)  # active again at 25
    model.answer = Decision(running=0, queued=0, workers=0, active=False, by_queue=())
    model.keda(50)
    assert model.replicas == 2  # 25 s since: not cooled yet
    model.keda(56)
    assert model.replicas == 0


def test_hpa_desired_never_goes_below_one() -> None:
    assert hpa_desired(3, 0.0, ScaledObjectSettings(max_replicas=10)) == 1
