"""One watcher per database for `external-push`: one read per watch interval, fanned out to every stream.

A watcher runs only while at least one StreamIsActive stream listens to its
database. Every `interval` it asks the shared cache for a snapshot no older
than the interval (so a queued task is seen within about one interval, not one
refresh interval later) and publishes it to the subscribed streams only when
the demand rows or the database's health changed; each stream then applies
its own trigger's filters. 10,000 streams on one database cost one query per
interval, and wake only when something changed.

Airflow does not NOTIFY on task changes, and the Airflow database is not ours to
add triggers to, so watching is polling, at a short interval, shared.

Pre-warm starts at a moment in time, not on a database change: while streams
with `prewarm` listen, every interval the watcher also looks at which scheduled
runs are in pre-warm for each of their leads, and publishes when that changes,
so KEDA hears `true` within one interval of a pre-warm's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from scaler.errors import DatabaseUnavailable
from scaler.rules.snapshot import Snapshot
from scaler.service.prewarm_cache import PrewarmCache
from scaler.service.snapshot_cache import SnapshotCache

log = logging.getLogger(__name__)

Outcome = Snapshot | DatabaseUnavailable


class DatabaseWatcher:
    def __init__(self, cache: SnapshotCache, *, interval: float, prewarm: PrewarmCache | None = None) -> None:
        self.cache = cache
        self.interval = interval
        self.prewarm = prewarm
        # prewarmLeadSeconds of the listening streams that pre-warm -> how many listen with it.
        self.leads: Counter[int] = Counter()
        self._prewarm_state: object = None
        self.subscribers = 0
        self.outcome: Outcome | None = None
        self.version = 0
        # One future for every stream waiting on the next change: a stream holds no task of its own,
        # which is what lets a replica hold tens of thousands of streams (see changed_since).
        self._changed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def failing(self) -> bool:
        return isinstance(self.outcome, DatabaseUnavailable)

    @contextlib.asynccontextmanager
    async def subscription(self, *, prewarm_lead: int | None = None) -> AsyncIterator[DatabaseWatcher]:
        """Listen while inside; the first subscriber starts the watcher, the last one stops it.

        A stream whose trigger pre-warms gives its lead: the watcher then also publishes when one of
        its pre-warms starts or ends.
        """
        self.subscribers += 1
        if prewarm_lead is not None:
            self.leads[prewarm_lead] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name=f"watch {self.cache.label}")
        try:
            yield self
        finally:
            self.subscribers -= 1
            if prewarm_lead is not None:
                self.leads[prewarm_lead] -= 1
                if not self.leads[prewarm_lead]:
                    del self.leads[prewarm_lead]
            if self.subscribers == 0:
                await self.stop()

    def changed_since(self, version: int) -> asyncio.Future[None]:
        """A future done once the published version differs from `version` (done already if it does).

        The future is shared by every stream that waits: await it with asyncio.wait, never cancel it.
        Then read `version` and `outcome`, and call again if `outcome` is still None.
        """
        if self.version != version and self.outcome is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.outcome, self.version = None, self.version + 1
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _watch(self) -> None:
        while True:
            try:
                outcome: Outcome = await self.cache.get(max_age=self.interval)
            except DatabaseUnavailable as error:
                outcome = error
            prewarm, changed = self._prewarms(), self._differs(outcome)
            if changed or prewarm != self._prewarm_state:
                self._prewarm_state = prewarm
                if changed and isinstance(outcome, DatabaseUnavailable):
                    log.warning(
                        "database %s failing: %d open streams send nothing until it recovers (%s)",
                        self.cache.label,
                        self.subscribers,
                        outcome.reason,
                        extra={"database": self.cache.label, "streams": self.subscribers},
                    )
                self._publish(outcome)
            await asyncio.sleep(self.interval)

    def _prewarms(self) -> object:
        """What the pre-warms of every listening lead are now: the runs in pre-warm, and which history."""
        if self.prewarm is None or not self.leads:
            return None
        schedule = self.prewarm.current()
        now = self.prewarm.clock()
        in_prewarm = tuple(
            frozenset((due.dag_id, due.due_epoch) for due in schedule.in_prewarm(lead, now))
            for lead in sorted(self.leads)
        )
        # The runs' mapping is replaced by each history read; the same one compares by identity, not walked.
        return in_prewarm, schedule.runs

    def _differs(self, outcome: Outcome) -> bool:
        """Publish the first outcome, a change of health, or a change in the demand rows."""
        before = self.outcome
        if before is None:
            return True
        if isinstance(outcome, DatabaseUnavailable) or isinstance(before, DatabaseUnavailable):
            return isinstance(outcome, DatabaseUnavailable) != isinstance(before, DatabaseUnavailable)
        return outcome.rows != before.rows

    def _publish(self, outcome: Outcome) -> None:
        self.outcome, self.version = outcome, self.version + 1
        # Wake everyone waiting on the current future; later waiters get a new one.
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
