"""The per-database snapshot of demand and the cache that shares it.

One snapshot query serves every ScaledObject and every call on a database:
a snapshot younger than the refresh interval is answered from memory, and
callers that arrive while a refresh is running wait for that one query
(single-flight) instead of starting their own. A failed refresh is remembered
for the same interval, so a database that is down is not hammered by every
caller either. No answer is older than the refresh interval plus one query.
"""

from __future__ import annotations

import asyncio
import logging
import time

from scaler.errors import DatabaseUnavailable
from scaler.rules.snapshot import Clock, RefreshObserver, Snapshot, SnapshotReader

log = logging.getLogger(__name__)


class SnapshotCache:
    """Shares one database's snapshot among all callers; see the module docstring."""

    def __init__(
        self,
        reader: SnapshotReader,
        *,
        refresh_interval: float,
        clock: Clock = time.monotonic,
        observer: RefreshObserver | None = None,
    ) -> None:
        self.reader = reader
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.observer = observer
        self.created_at = self.last_used = clock()
        self.refreshes = 0
        self._snapshot: Snapshot | None = None
        self._failure: DatabaseUnavailable | None = None
        self._outcome_at = float("-inf")
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._healthy: bool | None = None

    @property
    def label(self) -> str:
        return self.reader.label

    def fresh(self) -> Snapshot | None:
        """The snapshot if get() would answer it from memory now, else None (a refresh, or a failure, is due)."""
        return self._snapshot if self._remembered(self.refresh_interval) and self._failure is None else None

    async def get(self, *, max_age: float | None = None) -> Snapshot:
        """The current snapshot, refreshing it when it is older than `max_age` (default: the refresh interval).

        The push watcher asks for fresher snapshots than pollers need; whatever it
        reads, pollers share too.
        """
        if self._remembered(self.refresh_interval if max_age is None else min(self.refresh_interval, max_age)):
            if self._failure is not None:
                raise self._failure
            assert self._snapshot is not None
            return self._snapshot
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh(), name=f"snapshot {self.label}")
        # shield: a caller whose own deadline passes must not cancel the query others wait for.
        return await asyncio.shield(self._inflight)

    def _remembered(self, limit: float) -> bool:
        """Whether the last outcome (snapshot or failure) is younger than `limit`; marks the cache used."""
        now = self.last_used = self.clock()
        return now - self._outcome_at < limit

    def age(self) -> float:
        """Seconds since the last successful snapshot, or since first use when there is none yet."""
        since = self._snapshot.taken_at if self._snapshot is not None else self.created_at
        return self.clock() - since

    async def _refresh(self) -> Snapshot:
        self.refreshes += 1
        # Real elapsed time even when tests pass a fake clock: this is the query's cost.
        started = time.perf_counter()
        try:
            rows, has_executor = await self.reader.read()
        except DatabaseUnavailable as error:
            self._failure, self._outcome_at = error, self.clock()
            self._observe(started, error)
            self._note_health(False, error.reason)
            raise
        finally:
            self._inflight = None
        self._observe(started, None)
        snapshot = Snapshot(rows=rows, has_executor_column=has_executor, taken_at=self.clock())
        self._snapshot, self._failure, self._outcome_at = snapshot, None, snapshot.taken_at
        self._note_health(True, "")
        return snapshot

    def _observe(self, started: float, failure: DatabaseUnavailable | None) -> None:
        if self.observer is not None:
            self.observer.refreshed(self.label, time.perf_counter() - started, failure)

    def _note_health(self, healthy: bool, reason: str) -> None:
        """Log changes of state only, never every poll."""
        before, self._healthy = self._healthy, healthy
        if healthy and before is None:
            state = "reachable"
        elif healthy and before is False:
            state = "recovered"
        elif not healthy and before is not False:
            state = "failing"
        else:
            return
        extra = {"database": self.label, "database_state": state}
        if healthy:
            log.info("database %s %s", self.label, state, extra=extra)
        else:
            log.warning("database %s failing: %s", self.label, reason, extra={**extra, "reason": reason})

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.reader.close()
