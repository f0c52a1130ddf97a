"""One snapshot cache (and one small pool) per distinct Airflow database.

Beside it, one pre-warm cache (prewarm_cache.py) on the same pool, which reads
nothing until a trigger with `prewarm` asks it.

ScaledObjects that name the same database, by `database: <name>` or by the
same URL in `connectionFromEnv`, share one cache. Caches are created on first
use and closed after `idle_timeout` without a caller, so a ScaledObject that is
deleted does not keep a pool open on the Airflow database forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.databases.postgres import PostgresReader
from scaler.errors import InvalidMetadata, TooMany, shown
from scaler.options import positive, setting
from scaler.rules.database_urls import ConnectionTarget
from scaler.rules.memory_budget import MemoryBudget
from scaler.rules.prewarm import PrewarmSettings
from scaler.rules.schedule import ScheduleReader
from scaler.rules.snapshot import Clock
from scaler.rules.trigger_metadata import DatabaseSelector, NamedDatabase
from scaler.service.metrics import DatabaseState, ScalerMetrics
from scaler.service.prewarm_cache import PrewarmCache
from scaler.service.snapshot_cache import SnapshotCache
from scaler.service.watcher import DatabaseWatcher

if TYPE_CHECKING:
    from scaler.adapters.databases.mysql import MySQLReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseSettings:
    refresh_interval: float = setting(
        1.0,
        flag="--refresh-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How old a database's shared snapshot may get before the next call refreshes it; "
        "at most one snapshot query per database per interval, whatever the number of ScaledObjects.",
    )
    # How often a database with open StreamIsActive streams is looked at (watcher.py).
    watch_interval: float = setting(
        0.5,
        flag="--watch-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How often a database with open StreamIsActive streams (external-push) is read for changes: one "
        "read per interval for all its streams; a queued task reaches KEDA within about this long.",
    )
    idle_timeout: float = setting(
        300.0,
        flag="--pool-idle-timeout",
        parse=positive(float),
        metavar="SECONDS",
        help="Close a database's pool after this long without a call.",
    )
    pool: PoolSettings = field(default_factory=PoolSettings)
    prewarm: PrewarmSettings = field(default_factory=PrewarmSettings)
    # Distinct connectionFromEnv databases open at once (configured ones do not count): each holds a pool.
    max_databases: int = setting(
        500,
        flag="--max-databases",
        parse=positive(int),
        metavar="N",
        help="Most distinct connectionFromEnv databases open at once (configured databases do not count); one more "
        "is RESOURCE_EXHAUSTED until idle ones close (--pool-idle-timeout).",
    )


def reader_for(target: ConnectionTarget, *, label: str, settings: PoolSettings) -> PostgresReader | MySQLReader:
    """The backend for the target's dialect: a SnapshotReader, and a HistoryReader for `replay`."""
    if target.dialect == "mysql":
        # Imported on first use: a scaler that reads only PostgreSQL never loads the MySQL driver.
        from scaler.adapters.databases.mysql import MySQLReader

        return MySQLReader(target, label=label, settings=settings)
    return PostgresReader(target, label=label, settings=settings)


class AirflowDatabases:
    def __init__(
        self,
        *,
        configured: Mapping[str, ConnectionTarget],
        settings: DatabaseSettings,
        clock: Clock = time.monotonic,
        metrics: ScalerMetrics | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._configured = dict(configured)
        self._budget = budget or MemoryBudget(limit=None)
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._caches: dict[tuple[object, ...], SnapshotCache] = {}
        self._watchers: dict[tuple[object, ...], DatabaseWatcher] = {}
        self._prewarm: dict[tuple[object, ...], PrewarmCache] = {}
        self._janitor: asyncio.Task[None] | None = None

    @property
    def configured_names(self) -> list[str]:
        return sorted(self._configured)

    def cache_for(self, selector: DatabaseSelector) -> SnapshotCache:
        """The shared cache for a trigger's database; InvalidMetadata for an unknown name."""
        return self._caches[self._key_for(selector)]

    def watcher_for(self, selector: DatabaseSelector) -> DatabaseWatcher:
        """The database's push watcher (one per database, shared by every stream)."""
        key = self._key_for(selector)
        watcher = self._watchers.get(key)
        if watcher is None:
            watcher = self._watchers[key] = DatabaseWatcher(
                self._caches[key], interval=self._settings.watch_interval, prewarm=self._prewarm_cache(key)
            )
        return watcher

    def prewarm_for(self, selector: DatabaseSelector) -> PrewarmCache:
        """The database's pre-warm cache (one per database, on the snapshot's pool)."""
        return self._prewarm_cache(self._key_for(selector))

    def _prewarm_cache(self, key: tuple[object, ...]) -> PrewarmCache:
        prewarm = self._prewarm.get(key)
        if prewarm is None:
            # reader_for's backends read both; the cache only types what it uses.
            reader = cast(ScheduleReader, self._caches[key].reader)
            prewarm = self._prewarm[key] = PrewarmCache(
                reader, settings=self._settings.prewarm, clock=self._clock, observer=self._metrics
            )
        return prewarm

    def _key_for(self, selector: DatabaseSelector) -> tuple[object, ...]:
        """The key of a trigger's database, creating its cache on first use."""
        if isinstance(selector, NamedDatabase):
            target = self._configured.get(selector.name)
            if target is None:
                known = shown(", ".join(self.configured_names) or "none", 200)
                raise InvalidMetadata(
                    "database",
                    f"no database named '{shown(selector.name)}' is configured on the scaler (configured: {known})",
                    "a name given to the scaler with --database NAME=URL",
                )
            # A configured database is shown by its name, which the operator chose.
            key: tuple[object, ...] = ("name", selector.name)
            label = selector.name
        else:
            target = selector
            key = ("url", target.dsn, target.server_settings)
            label = target.label
        cache = self._caches.get(key)
        if cache is None:
            if key[0] == "url" and self._url_databases() >= self._settings.max_databases:
                raise TooMany(
                    f"the scaler has {self._settings.max_databases} databases from connectionFromEnv open, its limit "
                    "(--max-databases); idle ones close after --pool-idle-timeout"
                )
            # The operator's own databases are always opened (and counted); a ScaledObject's URL must fit.
            self._budget.take("database", force=key[0] == "name")
            reader = reader_for(target, label=label, settings=self._settings.pool)
            cache = SnapshotCache(
                reader, refresh_interval=self._settings.refresh_interval, clock=self._clock, observer=self._metrics
            )
            self._caches[key] = cache
            self._start_janitor()
        return key

    def _url_databases(self) -> int:
        return sum(1 for key in self._caches if key[0] == "url")

    def _start_janitor(self) -> None:
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._close_idle_forever(), name="close idle databases")

    async def _close_idle_forever(self) -> None:
        period = max(1.0, self._settings.idle_timeout / 4)
        while self._caches:
            await asyncio.sleep(period)
            await self.close_idle()

    async def close_idle(self) -> None:
        now = self._clock()
        for key, cache in list(self._caches.items()):
            if now - cache.last_used >= self._settings.idle_timeout:
                del self._caches[key]
                self._budget.give_back("database")
                self._watchers.pop(key, None)
                prewarm = self._prewarm.pop(key, None)
                if prewarm is not None:
                    await prewarm.close()
                log.info("closing idle database %s", cache.label, extra={"database": cache.label})
                await cache.close()
                if self._metrics is not None and not any(c.label == cache.label for c in self._caches.values()):
                    self._metrics.forget_database(cache.label)

    def states(self) -> Iterator[DatabaseState]:
        """Each open database's snapshot age and pool use, for the metrics scrape."""
        for key, cache in list(self._caches.items()):
            watcher = self._watchers.get(key)
            streams = watcher.subscribers if watcher is not None else 0
            held = streams if watcher is not None and watcher.failing else 0
            yield DatabaseState(cache.label, cache.age(), cache.reader.connections_in_use(), streams, held)

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        watchers, self._watchers = list(self._watchers.values()), {}
        await asyncio.gather(*(watcher.stop() for watcher in watchers))
        prewarms, self._prewarm = list(self._prewarm.values()), {}
        await asyncio.gather(*(prewarm.close() for prewarm in prewarms))
        caches, self._caches = list(self._caches.values()), {}
        for _ in caches:
            self._budget.give_back("database")
        await asyncio.gather(*(cache.close() for cache in caches))
