"""Pure: a coordination.k8s.io Lease as leader election reads and writes it, so that one replica drains.

A replica may take the Lease when nobody holds it, when it holds it already, or
when the holder has not renewed it within its leaseDurationSeconds (it stopped,
or lost the API server). Writes carry the resourceVersion read, so two replicas
that both see an expired Lease cannot both take it: the API server refuses the
second (409), as client-go's leader election relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaler.rules.timestamps import format_time, parse_time


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    duration: float  # leaseDurationSeconds
    renewed_at: float | None  # renewTime, seconds since the epoch
    acquired_at: float | None
    transitions: int
    resource_version: str


def parse_lease(body: dict[str, Any]) -> LeaseRecord:
    """A Lease object as the API server returns it.

    >>> parse_lease({"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "a",
    ...     "leaseDurationSeconds": 15, "renewTime": "1970-01-01T00:01:00.000000Z"}}).renewed_at
    60.0
    """
    spec = body.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renewed_at=parse_time(spec.get("renewTime")),
        acquired_at=parse_time(spec.get("acquireTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
    )


def may_hold(record: LeaseRecord | None, identity: str, now: float) -> bool:
    """Whether `identity` may take or renew the Lease at `now`.

    >>> held = LeaseRecord("b", 15.0, 100.0, 100.0, 0, "1")
    >>> may_hold(held, "a", 110.0), may_hold(held, "a", 116.0), may_hold(held, "b", 110.0), may_hold(None, "a", 0)
    (False, True, True, True)
    """
    if record is None or record.holder in (None, identity) or record.renewed_at is None:
        return True
    return now > record.renewed_at + record.duration


def lease_spec(record: LeaseRecord | None, identity: str, now: float, duration: float) -> dict[str, Any]:
    """The spec that takes or renews the Lease for `identity`; a new holder counts a transition.

    >>> lease_spec(None, "a", 60.0, 15.0)["renewTime"]
    '1970-01-01T00:01:00.000000Z'
    >>> lease_spec(LeaseRecord("b", 15.0, 0.0, 0.0, 3, "1"), "a", 60.0, 15.0)["leaseTransitions"]
    4
    """
    renewing = record is not None and record.holder == identity
    acquired = record.acquired_at if renewing and record is not None and record.acquired_at is not None else now
    transitions = 0 if record is None else record.transitions + (0 if renewing or record.holder is None else 1)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": format_time(acquired),
        "renewTime": format_time(now),
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord) -> dict[str, Any]:
    """The spec a holder that stops writes, so the next takes over at once (client-go's ReleaseOnCancel)."""
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": None,
        "renewTime": None,
        "leaseTransitions": record.transitions,
    }
