"""Pure: the API server's timestamps (RFC 3339, `2026-12-05T09:00:00Z`, MicroTime with microseconds) in seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(value: object) -> float | None:
    """Seconds since the epoch, or None when absent or not a timestamp.

    >>> parse_time("1970-01-01T00:01:00Z"), parse_time("1970-01-01T00:01:00.500000Z"), parse_time(None)
    (60.0, 60.5, None)
    """
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_time(seconds: float) -> str:
    """A MicroTime as the API server writes it.

    >>> format_time(60.5)
    '1970-01-01T00:01:00.500000Z'
    """
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
