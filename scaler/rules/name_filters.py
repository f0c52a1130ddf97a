"""Compact sets of queue and executor names: what a trigger's `queues`, `excludeQueues` and `excludeExecutors` keep.

A trigger is kept for as long as its ScaledObject is known, and anyone who can
write a ScaledObject chooses its metadata: a frozenset of the names costs about
100 bytes a name (a 4 KiB value of short names held some 1,300 strings), so
20,000 hostile ScaledObjects could hold gigabytes. A NameFilter keeps 8 bytes a
name, whatever the names' length: a keyed 64-bit BLAKE2b digest of each,
sorted and packed into one bytes object. The key is drawn once per process, so
nobody outside can make two names collide on purpose; by chance, a name
outside the filter matches one of its n names with probability n / 2**64.

The names themselves are not kept: a filter answers "is this name in it",
which is all that deciding needs (decision.in_scope).

Pure: no I/O (the key comes from `secrets`, which reads no file here).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

_KEY = secrets.token_bytes(16)
_DIGEST = 8
# Digests of the names Airflow stores (short, and few of them): asked for on every call, for every row.
_CACHED_LENGTH = 256


def _digest(name: str) -> bytes:
    return _cached_digest(name) if len(name) <= _CACHED_LENGTH else _keyed_digest(name)


def _keyed_digest(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=_DIGEST, key=_KEY).digest()


_cached_digest = functools.lru_cache(maxsize=4096)(_keyed_digest)


@dataclass(frozen=True, slots=True)
class NameFilter:
    """A set of names, 8 bytes each.

    >>> ml = NameFilter.of(["default", "ml"])
    >>> "ml" in ml, "etl" in ml, len(ml)
    (True, False, 2)
    >>> NameFilter.of(["ml", "default", "ml"]) == ml  # the same set, whatever the order or repetition
    True
    """

    digests: bytes = b""

    @classmethod
    def of(cls, names: Iterable[str]) -> NameFilter:
        return cls(b"".join(sorted({_digest(name) for name in names})))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not self.digests:
            return False
        digest = _digest(name)
        at = self.digests.find(digest)
        # A match must start on a digest's boundary (one across two digests is not a name of the set).
        while at != -1 and at % _DIGEST:
            at = self.digests.find(digest, at + 1)
        return at != -1

    def __len__(self) -> int:
        return len(self.digests) // _DIGEST

    def __bool__(self) -> bool:
        return bool(self.digests)

    def isdisjoint(self, names: Iterable[str]) -> bool:
        return not any(name in self for name in names)

    def __repr__(self) -> str:
        return f"NameFilter({len(self)} names)"


EMPTY = NameFilter()
