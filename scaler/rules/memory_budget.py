"""The memory budget: what the scaler may admit (streams, ScaledObjects, databases) within its pod's limit.

The scaler is one shared service: a replica that is OOM-killed stops scaling for
every Airflow installation it serves, and KEDA's calls then move to the other
replica, which the same input kills next. So memory is admitted, not hoped for:
each stream, ScaledObject and database is charged what it can cost at most
(COSTS, measured by `make bench`, sections 5 to 5c), against the budget

    limit x (1 - HEADROOM) - what the process held when it started

and one more past it is refused (RESOURCE_EXHAUSTED naming the limit) while
everything admitted keeps its answers. HEADROOM is what the charges do not
count: calls in flight, database reads, metric scrapes, the allocator's slack.
As a second guard, nothing new is admitted while the process's resident memory
(read by the caller, /proc) is already past GUARD of the limit, whatever the
charges say: an input the charges underestimate is refused too, never OOM-killed.

Pure: the limit, the clock-free arithmetic and the refusal; reading the cgroup
and /proc is process_memory.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from scaler.errors import TooMany, shown

Kind = Literal["stream", "scaled_object", "database"]
KINDS: tuple[Kind, ...] = ("stream", "scaled_object", "database")

HEADROOM = 0.2
GUARD = 0.9
MIB = 1024 * 1024


@dataclass(frozen=True)
class Costs:
    """What one of each holds at most, in bytes (sections 5, 5b and 5c of docs/benchmarks.md measure them)."""

    # gRPC's own per-call state (about 24 KiB, measured on a bare grpc.aio server) and the handler's frames.
    stream: int = 28 * 1024
    # A stream's request stays alive in gRPC's frames for the stream's life, raw and parsed.
    stream_per_request_byte: int = 4
    # The ScaledObject's state, key, last decision and spec (names as 8-byte digests, targets shared).
    scaled_object: int = 8 * 1024
    # A pool of connections with their buffers, the snapshot and the pre-warm caches.
    database: int = 1 * MIB


COSTS = Costs()
# An ordinary StreamIsActive request's size (name, namespace, database, queues, KEDA's scalerAddress), about.
_ORDINARY_REQUEST = 128

_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]i?|[kmgt]|B)?", re.ASCII)
_UNITS = {
    None: 1,
    "B": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_bytes(text: str) -> int:
    """A size in bytes, as Kubernetes writes quantities: `268435456`, `256Mi`, `0.5Gi`, `300M`.

    >>> parse_bytes("256Mi"), parse_bytes("1G"), parse_bytes("1048576")
    (268435456, 1000000000, 1048576)
    >>> parse_bytes("lots")
    Traceback (most recent call last):
    ...
    ValueError: 'lots' is not a size in bytes (for example 268435456, 256Mi or 1Gi)
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None or len(text) > 32:
        raise ValueError(f"'{shown(text)}' is not a size in bytes (for example 268435456, 256Mi or 1Gi)")
    unit = match["unit"]
    value = int(float(match["number"]) * _UNITS[unit.capitalize() if unit and len(unit) == 1 else unit])
    if value <= 0:
        raise ValueError(f"'{shown(text)}' must be greater than 0")
    return value


def memory_limit_setting(text: str) -> int | None:
    """--memory-limit's value: `auto` (None: the cgroup's limit, read at start), `off` (0: no budget), or bytes."""
    if text.strip().lower() == "auto":
        return None
    if text.strip().lower() == "off":
        return 0
    return parse_bytes(text)


def mib(value: int) -> str:
    return f"{value / MIB:.0f} MiB"


class MemoryBudget:
    """Charges against a limit; `take` refuses past it (TooMany), `give_back` returns a charge.

    >>> budget = MemoryBudget(limit=100 * MIB, baseline=40 * MIB)
    >>> budget.available, mib(budget.budget)
    (41943040, '40 MiB')
    >>> budget.take("stream", 30 * MIB); budget.take("stream", 20 * MIB)
    Traceback (most recent call last):
    ...
    scaler.errors.TooMany: the scaler's memory budget is used up: a new stream needs 20 MiB, 10 MiB of 40 MiB \
is left (--memory-limit 100 MiB, less 20% headroom and 40 MiB at start); those admitted keep their answers
    """

    def __init__(
        self,
        *,
        limit: int | None,
        baseline: int = 0,
        costs: Costs = COSTS,
        resident: Callable[[], int | None] | None = None,
    ) -> None:
        """`limit` None or 0: no budget (everything is counted, nothing refused by it). `resident`: the
        process's resident memory now, for the second guard (None, or a None answer: the charges alone)."""
        self.limit = limit or None
        self.baseline = baseline
        self.costs = costs
        self.used = 0
        self.held: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._resident = resident
        self.budget = 0 if self.limit is None else max(0, int(self.limit * (1 - HEADROOM)) - baseline)

    @property
    def available(self) -> int:
        return max(0, self.budget - self.used)

    def most_streams(self) -> int | None:
        """How many ScaledObjects with a stream each (ordinary requests) the budget admits; None without a limit."""
        if self.limit is None:
            return None
        return self.budget // (self.costs.scaled_object + self.stream_cost(_ORDINARY_REQUEST))

    def stream_cost(self, request_bytes: int) -> int:
        return self.costs.stream + self.costs.stream_per_request_byte * request_bytes

    def cost_of(self, kind: Kind) -> int:
        """What one of `kind` is charged (a stream: without its request, see stream_cost)."""
        cost: int = getattr(self.costs, kind)  # Costs has a field named after each kind
        return cost

    def take(self, kind: Kind, cost: int | None = None, *, force: bool = False) -> int:
        """Charge `cost` (default: the kind's, cost_of) and return it; TooMany when it does not fit (`force`:
        charge anyway, for the operator's own databases)."""
        cost = self.cost_of(kind) if cost is None else cost
        if self.limit is not None and not force:
            if self.used + cost > self.budget:
                raise TooMany(
                    f"the scaler's memory budget is used up: a new {kind.replace('_', ' ')} needs {mib(cost)}, "
                    f"{mib(self.available)} of {mib(self.budget)} is left ({self._origin()}); those admitted keep "
                    "their answers"
                )
            resident = None if self._resident is None else self._resident()
            if resident is not None and resident > GUARD * self.limit:
                raise TooMany(
                    f"the scaler's resident memory is {mib(resident)}, past {GUARD:.0%} of its limit "
                    f"({self._origin()}): nothing new is admitted until it falls; those admitted keep their answers"
                )
        self.used += cost
        self.held[kind] += 1
        return cost

    def give_back(self, kind: Kind, cost: int | None = None) -> None:
        self.used -= self.cost_of(kind) if cost is None else cost
        self.held[kind] -= 1

    def _origin(self) -> str:
        return f"--memory-limit {mib(self.limit or 0)}, less {HEADROOM:.0%} headroom and {mib(self.baseline)} at start"
