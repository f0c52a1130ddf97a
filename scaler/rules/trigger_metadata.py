"""ScaledObject trigger metadata -> TriggerSpec, or an error naming the key.

Pure: no I/O. This module owns the metadata keys, their defaults and their
meaning; docs/reference.md is checked against METADATA_KEYS by a test.

A ScaledObject author chooses *what to count* here (queues, executors) and
never *what to run*: nothing from the metadata reaches SQL.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from scaler.errors import InvalidMetadata, shown
from scaler.rules.database_urls import ACCEPTED_FORMS, ConnectionTarget, UrlError, parse_url
from scaler.rules.name_filters import EMPTY, NameFilter

DEFAULT_CONCURRENCY = 16
DEFAULT_ACTIVATION_THRESHOLD = 0.0
DEFAULT_PREWARM_LEAD = 120  # a pod start plus an HPA sync plus a margin
MAX_PREWARM_LEAD = 900  # the schedule read looks this far ahead (plus its intervals)
DEFAULT_PREWARM_MAX_WORKERS = 10
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue: what drain cancels when `queues` is not set

# key -> what it means; the order is docs/reference.md's.
METADATA_KEYS: dict[str, str] = {
    "connectionFromEnv": (
        "Name of an environment variable of the scale target's container holding the Airflow "
        "database URL (KEDA sends its value). Either this or `database`."
    ),
    "database": (
        "Name of a database configured on the scaler (--database NAME=URL). Either this or `connectionFromEnv`."
    ),
    "queues": (
        "Comma-separated Celery queues to count. Default: every queue. With `excludeQueues` and `excludeExecutors`, "
        "at most `--max-trigger-names` (64) names."
    ),
    "excludeQueues": "Comma-separated queues never counted, for example `kubernetes` under CeleryKubernetesExecutor.",
    "excludeExecutors": (
        "Comma-separated executors whose tasks are not this worker set's, for example `KubernetesExecutor`; "
        "alias, class name and module path all match. Rows with no executor are always counted."
    ),
    "concurrency": f"Celery worker_concurrency, an integer >= 1. Default {DEFAULT_CONCURRENCY}.",
    "activationThreshold": "Active when demand is greater than this number (>= 0). Default 0.",
    "scaleDownProtection": (
        "`true` (default) or `false`. When true, the workers asked for never drop below the workers running "
        "this trigger's tasks (the busy-worker floor), and the scaler keeps each worker pod's "
        "`controller.kubernetes.io/pod-deletion-cost` at the number of tasks it runs, so idle workers go first."
    ),
    "scaleTargetKind": (
        "`Deployment` or `StatefulSet`: how the busy-worker floor is counted (busy workers, or highest busy "
        "ordinal + 1). Default: the kind in the ScaledObject's scaleTargetRef when the scaler can read it, "
        "else Deployment."
    ),
    "prewarm": (
        "`true` or `false` (default). When true, workers are started before scheduled DAG runs: from "
        "`prewarmLeadSeconds` before a run is due, the workers asked for are at least the run's predicted initial "
        "demand (the median over its DAG's last scheduled runs) / concurrency, until its tasks are there to count."
    ),
    "prewarmLeadSeconds": (
        f"How long before a scheduled run is due its pre-warm starts, 1 to {MAX_PREWARM_LEAD}. "
        f"Default {DEFAULT_PREWARM_LEAD} (a pod start plus an HPA sync plus a margin)."
    ),
    "prewarmMaxWorkers": f"Most workers a pre-warm asks for, an integer >= 0. Default {DEFAULT_PREWARM_MAX_WORKERS}.",
    "drain": (
        "`true` or `false` (default). When true, surplus workers stop consuming the trigger's queues (`queues`, "
        f"else `{DEFAULT_QUEUE}`) through the Celery broker configured for its database (--broker NAME=URL), so "
        "they empty and are removed first, and get them back as soon as they are needed. Needs `database` and "
        "scaleDownProtection on."
    ),
}

TargetKind = Literal["Deployment", "StatefulSet"]
TARGET_KINDS: tuple[TargetKind, ...] = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class NamedDatabase:
    """`database: <name>`: credentials stay on the scaler's side."""

    name: str


DatabaseSelector = NamedDatabase | ConnectionTarget


# The keys that list names; how many one trigger may list in all is a limit of the edge (admission.Limits).
NAME_KEYS = ("queues", "excludeQueues", "excludeExecutors")


@dataclass(frozen=True, slots=True, weakref_slot=True)
class TriggerSpec:
    """What one trigger asks the scaler to count and how to size workers for it.

    Kept for as long as its ScaledObject is known, so it is small whatever the metadata: names are
    NameFilters (8 bytes a name), and identical specs are one object (parse_metadata shares them).
    """

    database: DatabaseSelector
    queues: NameFilter | None
    exclude_queues: NameFilter
    exclude_executors: NameFilter
    concurrency: int
    activation_threshold: float
    scale_down_protection: bool = True
    target_kind: TargetKind | None = None  # None: as the ScaledObject's scaleTargetRef says
    prewarm: bool = False
    prewarm_lead: int = DEFAULT_PREWARM_LEAD  # seconds
    prewarm_max_workers: int = DEFAULT_PREWARM_MAX_WORKERS
    # With `drain: "true"`, the queues drain cancels and restores, by name (a NameFilter cannot list them).
    drain_queues: tuple[str, ...] = ()

    @property
    def drain(self) -> bool:
        return bool(self.drain_queues)


def parse_metadata(metadata: Mapping[str, str]) -> TriggerSpec:
    """Parse the trigger's metadata; unknown keys (KEDA's own among them) are ignored.

    >>> spec = parse_metadata({"database": "airflow", "queues": "default, ml", "concurrency": "8"})
    >>> "ml" in spec.queues, "etl" in spec.queues
    (True, False)
    >>> spec is parse_metadata({"queues": "ml,default", "database": "airflow", "concurrency": "8", "x": "y"})
    True
    """
    # KEDA sends the same metadata on every call: parse each distinct one once.
    items = tuple(sorted((key, value) for key, value in metadata.items() if key in METADATA_KEYS))
    spec = _CACHE.get(items)
    if spec is None:
        spec = _shared(_parse(items))
        _CACHE.put(items, spec)
    return spec


# Every spec in use, by value: ScaledObjects whose metadata differ only in what does not change the
# spec (the order of names, KEDA's own keys, spaces) share one object, also after the cache let it go.
_SHARED: weakref.WeakValueDictionary[TriggerSpec, TriggerSpec] = weakref.WeakValueDictionary()


_TARGETS: weakref.WeakValueDictionary[ConnectionTarget, ConnectionTarget] = weakref.WeakValueDictionary()


def _shared(spec: TriggerSpec) -> TriggerSpec:
    return _SHARED.setdefault(spec, spec)


class ParseCache:
    """Parsed specs by metadata, least recently used first out, bounded by an estimate of their memory.

    An entry costs its text plus a fixed amount for every name its spec holds.

    >>> cache = ParseCache(budget=1000)
    >>> cache.put((("queues", "a,b"),), parse_metadata({"database": "x"}))
    >>> cache.size, cache.cost
    (1, 521)
    """

    PER_NAME = 8  # a NameFilter's digest
    PER_ENTRY = 512  # the spec, the items' tuples and strings, the dict slot, about

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.cost = 0
        self._entries: OrderedDict[tuple[tuple[str, str], ...], tuple[TriggerSpec, int]] = OrderedDict()

    @property
    def size(self) -> int:
        return len(self._entries)

    def get(self, items: tuple[tuple[str, str], ...]) -> TriggerSpec | None:
        entry = self._entries.get(items)
        if entry is None:
            return None
        self._entries.move_to_end(items)
        return entry[0]

    def put(self, items: tuple[tuple[str, str], ...], spec: TriggerSpec) -> None:
        names = len(spec.queues or ()) + len(spec.exclude_queues) + len(spec.exclude_executors)
        cost = self.PER_ENTRY + sum(len(key) + len(value) for key, value in items) + self.PER_NAME * names
        if cost > self.budget or items in self._entries:
            return
        self._entries[items] = (spec, cost)
        self.cost += cost
        while self.cost > self.budget:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.cost -= evicted


# 4 MiB: room for tens of thousands of ordinary triggers (a few hundred bytes each); hostile maps
# of --max-metadata-bytes each push out only each other, and memory stays bounded.
PARSE_CACHE_BUDGET = 4 * 1024 * 1024
_CACHE = ParseCache(PARSE_CACHE_BUDGET)


def _parse(items: tuple[tuple[str, str], ...]) -> TriggerSpec:
    metadata = dict(items)
    return TriggerSpec(
        database=_database(metadata),
        queues=NameFilter.of(_names(metadata, "queues")) or None,
        exclude_queues=NameFilter.of(_names(metadata, "excludeQueues")) or EMPTY,
        exclude_executors=NameFilter.of(
            spelling for name in _names(metadata, "excludeExecutors") for spelling in executor_spellings(name)
        )
        or EMPTY,
        concurrency=_concurrency(metadata),
        activation_threshold=_activation_threshold(metadata),
        scale_down_protection=_boolean(metadata, "scaleDownProtection", default=True),
        target_kind=_target_kind(metadata),
        prewarm=_boolean(metadata, "prewarm", default=False),
        prewarm_lead=_integer(metadata, "prewarmLeadSeconds", DEFAULT_PREWARM_LEAD, 1, MAX_PREWARM_LEAD),
        prewarm_max_workers=_integer(metadata, "prewarmMaxWorkers", DEFAULT_PREWARM_MAX_WORKERS, 0, None),
        drain_queues=_drain_queues(metadata),
    )


def _drain_queues(metadata: Mapping[str, str]) -> tuple[str, ...]:
    if not _boolean(metadata, "drain", default=False):
        return ()
    accepted = 'database naming a database configured on the scaler, and scaleDownProtection "true"'
    if not metadata.get("database", "").strip():
        raise InvalidMetadata("drain", "drain needs `database`: the broker is configured per database", accepted)
    if not _boolean(metadata, "scaleDownProtection", default=True):
        raise InvalidMetadata("drain", "drain needs scaleDownProtection: drained workers go once idle", accepted)
    return tuple(sorted(_names(metadata, "queues"))) or (DEFAULT_QUEUE,)


def _database(metadata: Mapping[str, str]) -> DatabaseSelector:
    url = metadata.get("connectionFromEnv", "").strip()
    name = metadata.get("database", "").strip()
    if url and name:
        raise InvalidMetadata(
            "database",
            "both 'database' and 'connectionFromEnv' are set",
            "exactly one of them",
        )
    if name:
        return NamedDatabase(name)
    if url:
        try:
            target = parse_url(url)
        except UrlError as error:
            # The value is the URL itself (KEDA resolved the variable): never echo it.
            raise InvalidMetadata("connectionFromEnv", str(error), ACCEPTED_FORMS) from None
        # Specs that differ elsewhere (queues, concurrency) keep one copy of the same URL's target.
        return _TARGETS.setdefault(target, target)
    raise InvalidMetadata(
        "connectionFromEnv",
        "no database given (KEDA drops connectionFromEnv when the variable it names is missing "
        "or empty in the scale target's container)",
        "connectionFromEnv naming a variable that holds the Airflow database URL, "
        "or database naming a database configured on the scaler",
    )


def _names(metadata: Mapping[str, str], key: str) -> frozenset[str]:
    raw = metadata.get(key, "")
    names = [part.strip() for part in raw.split(",")]
    if raw.strip() and any(not part for part in names):
        raise InvalidMetadata(
            key, f"'{shown(raw)}' has an empty name", 'comma-separated names, for example "default,ml"'
        )
    return frozenset(part for part in names if part)


def _concurrency(metadata: Mapping[str, str]) -> int:
    raw = metadata.get("concurrency", "").strip()
    if not raw:
        return DEFAULT_CONCURRENCY
    accepted = f'an integer >= 1, for example "{DEFAULT_CONCURRENCY}"'
    try:
        value = int(raw)
    except ValueError:
        raise InvalidMetadata("concurrency", f"'{shown(raw)}' is not an integer", accepted) from None
    if value < 1:
        raise InvalidMetadata("concurrency", f"{shown(raw)} is less than 1", accepted)
    return value


def _integer(metadata: Mapping[str, str], key: str, default: int, low: int, high: int | None) -> int:
    raw = metadata.get(key, "").strip()
    if not raw:
        return default
    accepted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    accepted += f', for example "{default}"'
    # Digits only, and few of them: int() of a huge digit string is slow, and no bound needs more.
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise InvalidMetadata(key, f"'{shown(raw)}' is not an integer", accepted)
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise InvalidMetadata(key, f"{shown(raw)} is out of range", accepted)
    return value


def _activation_threshold(metadata: Mapping[str, str]) -> float:
    raw = metadata.get("activationThreshold", "").strip()
    if not raw:
        return DEFAULT_ACTIVATION_THRESHOLD
    accepted = 'a number >= 0, for example "0" or "2"'
    try:
        value = float(raw)
    except ValueError:
        raise InvalidMetadata("activationThreshold", f"'{shown(raw)}' is not a number", accepted) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidMetadata("activationThreshold", f"'{shown(raw)}' is not a finite number >= 0", accepted)
    return value


def _boolean(metadata: Mapping[str, str], key: str, *, default: bool) -> bool:
    raw = metadata.get(key, "").strip()
    if not raw:
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise InvalidMetadata(key, f"'{shown(raw)}' is not a boolean", '"true" or "false"')


def _target_kind(metadata: Mapping[str, str]) -> TargetKind | None:
    raw = metadata.get("scaleTargetKind", "").strip()
    if not raw:
        return None
    for kind in TARGET_KINDS:
        if raw.lower() == kind.lower():
            return kind
    raise InvalidMetadata(
        "scaleTargetKind", f"'{shown(raw)}' is not a kind the scaler sizes", '"Deployment" or "StatefulSet"'
    )


def executor_spellings(name: str) -> frozenset[str]:
    """Every form under which Airflow may store the executor a name refers to.

    task_instance.executor holds what the task's author wrote: an alias, a class
    name or a module path. A configured `alias:module.path.Class` names all three.

    >>> sorted(executor_spellings("airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"))
    ['KubernetesExecutor', 'airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor']
    """
    # Called for every snapshot row on every call: cache the names Airflow stores (short), never a long one.
    if len(name) <= _SPELLINGS_CACHED_LENGTH:
        return _cached_spellings(name)
    return _spellings(name)


_SPELLINGS_CACHED_LENGTH = 256


@functools.lru_cache(maxsize=1024)
def _cached_spellings(name: str) -> frozenset[str]:
    return _spellings(name)


def _spellings(name: str) -> frozenset[str]:
    spellings: set[str] = set()
    for part in name.split(":"):
        part = part.strip()
        if part:
            spellings.add(part)
            spellings.add(part.rsplit(".", 1)[-1])
    return frozenset(spellings)
