"""Pure: the busy-worker floor, the workers that must stay so that a scale-down removes no busy one.

Which pods a workload removes first decides the floor: a ReplicaSet can be
told (pod-deletion-cost), a StatefulSet always removes its highest ordinals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ORDINAL = re.compile(r"-(\d+)$")


def ordinal(key: str) -> int | None:
    """A StatefulSet pod's ordinal (`<statefulset>-<ordinal>`), or None when the name has none.

    >>> ordinal("airflow-worker-12"), ordinal("airflow-worker-7d9c-x2k4q")
    (12, None)
    """
    match = _ORDINAL.search(key)
    return int(match.group(1)) if match else None


def busy_worker_floor(busy: Iterable[str], *, stateful: bool) -> int:
    """Workers that must stay so that no busy one is removed.

    A ReplicaSet can be told which pods to remove (pod-deletion-cost), so it
    needs one worker per busy worker. A StatefulSet removes the highest ordinal
    first, so every ordinal up to the highest busy one must stay. A busy worker
    whose name carries no ordinal still counts as one.

    >>> busy_worker_floor({"w-0", "w-4"}, stateful=False), busy_worker_floor({"w-0", "w-4"}, stateful=True)
    (2, 5)
    """
    keys = set(busy)
    if not stateful:
        return len(keys)
    ordinals = [n for n in map(ordinal, keys) if n is not None]
    return max(len(keys), max(ordinals, default=-1) + 1)
