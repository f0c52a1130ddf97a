"""The drain rule (scaler.rules.drain): which workers stop consuming, in the order the workload removes them."""

from __future__ import annotations

import pytest

from scaler.rules.drain import DrainWorker, plan_drain

C = 16


def ws(*running: int) -> list[DrainWorker]:
    """Workers w-0, w-1, ... (StatefulSet ordinals), each running the given tasks; older first."""
    return [DrainWorker(f"w-{n}", tasks, age=float(100 - n)) for n, tasks in enumerate(running)]


@pytest.mark.parametrize(
    ("workers", "queued", "kind", "prewarm", "drained"),
    [
        # Nothing to do: no workers, or every one needed.
        ([], 0, "Deployment", 0, ()),
        (ws(16, 16, 15), 0, "Deployment", 0, ()),
        # Idle workers: one is kept consuming (a free slot), the rest drained, newest first on a Deployment.
        (ws(0, 0, 0), 0, "Deployment", 0, ("w-2", "w-1")),
        # A Deployment keeps the busiest and drains the least busy, which empty soonest.
        (ws(1, 9, 2, 0), 0, "Deployment", 0, ("w-3", "w-0", "w-2")),
        # A StatefulSet keeps its lowest ordinals and drains the top ones, busy or not, highest first.
        (ws(1, 9, 2, 0), 0, "StatefulSet", 0, ("w-3", "w-2", "w-1")),
        # Tasks on drained workers need no consumer: 3 tasks, 3 workers, one kept.
        (ws(1, 1, 1), 0, "StatefulSet", 0, ("w-2", "w-1")),
        # The kept workers must leave a free slot: w-0 is full, so w-1 is kept too.
        (ws(16, 0, 0), 0, "StatefulSet", 0, ("w-2",)),
        # Queued tasks count: 31 fit two workers with a slot to spare, 32 need a third.
        (ws(0, 0, 0, 0), 20, "StatefulSet", 0, ("w-3", "w-2")),
        (ws(0, 0, 0, 0), 31, "StatefulSet", 0, ("w-3", "w-2")),
        (ws(0, 0, 0, 0), 32, "StatefulSet", 0, ("w-3",)),
        # Pre-warm asks for consumers before the tasks exist.
        (ws(0, 0, 0, 0), 0, "StatefulSet", 3, ("w-3",)),
        # A pod without an ordinal in a StatefulSet's list is not the set's: it goes first.
        ([*ws(0, 0), DrainWorker("stray", 0)], 0, "StatefulSet", 0, ("stray", "w-1")),
    ],
)
def test_plan_drain(workers: list[DrainWorker], queued: int, kind: str, prewarm: int, drained: tuple[str, ...]) -> None:
    plan = plan_drain(workers, queued=queued, concurrency=C, kind=kind, prewarm_workers=prewarm)  # type: ignore[arg-type]
    assert plan.drain == drained
    assert sorted(plan.keep + plan.drain) == sorted(w.name for w in workers)


def test_the_kept_workers_always_have_a_free_slot_unless_all_are_kept() -> None:
    import random

    rng = random.Random(7)
    for _ in range(2000):
        workers = ws(*(rng.randint(0, C) for _ in range(rng.randint(0, 12))))
        queued = rng.randint(0, 80)
        for kind in ("Deployment", "StatefulSet"):
            plan = plan_drain(workers, queued=queued, concurrency=C, kind=kind)
            if plan.drain:
                kept = {w.name: w.running for w in workers if w.name in plan.keep}
                assert queued + sum(kept.values()) < len(kept) * C
                # And one fewer would not do: the rule keeps no more than it needs.
                fewer = plan.keep[:-1]
                assert queued + sum(kept[n] for n in fewer) >= len(fewer) * C
