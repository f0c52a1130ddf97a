"""The errors the scaler reports to its callers.

Each one maps to one gRPC status code in servicer.py. Messages are written for
the person reading `kubectl describe scaledobject`: they name what was wrong and
what is accepted, and never carry a password or a full database URL.
"""

from __future__ import annotations

from typing import Literal

from scaler.redaction import redact

# Why a database could not be read, as a small fixed set: the `kind` label of
# airflow_keda_scaler_snapshot_errors_total, so its cardinality stays bounded.
FailureKind = Literal[
    "timeout",
    "authentication",
    "no_database",
    "no_table",
    "schema_changed",
    "permission",
    "too_many_connections",
    "not_accepting",
    "cancelled",
    "refused",
    "dns",
    "tls",
    "connection_lost",
    "network",
    "query",
    "unexpected",
]


class ConfigError(ValueError):
    """A flag, environment variable or file given to a command is unusable; the message is safe to print.

    Here, not in the CLI, so that the commands (check, demo) can raise it without importing the CLI.
    """


class ScalerError(Exception):
    """Base class: an error whose message is safe to show to the caller."""


class InvalidMetadata(ScalerError):
    """A trigger metadata key has a value the scaler cannot use (INVALID_ARGUMENT)."""

    def __init__(self, key: str, problem: str, accepted: str) -> None:
        self.key = key
        self.problem = problem
        self.accepted = accepted
        super().__init__(f"metadata key '{key}': {problem}; accepted: {accepted}")


class NotPermitted(ScalerError):
    """The operator's policy does not let a ScaledObject do this (PERMISSION_DENIED)."""

    def __init__(self, key: str, problem: str, accepted: str) -> None:
        self.key = key
        super().__init__(f"metadata key '{key}': {problem}; accepted: {accepted}")


class TooMany(ScalerError):
    """A bound of the shared scaler is reached (RESOURCE_EXHAUSTED): more would cost every caller."""


def shown(value: str, limit: int = 64) -> str:
    """A caller's value as it may appear in a message: passwords masked, cut to `limit` characters, control
    characters escaped.

    >>> shown("q" * 100)
    'qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq... (100 characters)'
    >>> shown("postgresql://airflow:" + "p" * 80 + "@db/airflow")  # masked before the cut hides the "@"
    'postgresql://airflow:***@db/airflow'
    """
    # Masked first: cut before its "@", a URL no longer looks like one, and its password would begin to show.
    length = len(value)
    masked = redact(value)
    cut = masked[:limit]
    if not cut.isprintable():
        cut = cut.encode("unicode_escape").decode("ascii")[:limit]
    return cut if len(masked) <= limit else f"{cut}... ({length} characters)"


class DatabaseUnavailable(ScalerError):
    """The Airflow database could not answer the snapshot query (UNAVAILABLE)."""

    def __init__(self, database: str, reason: str, *, kind: FailureKind) -> None:
        self.database = database
        self.reason = reason
        self.kind: FailureKind = kind
        super().__init__(f"Airflow database {database}: {reason}")
