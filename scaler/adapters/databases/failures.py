"""What every backend does with failures: retry a dead connection once, and the reasons they share."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from scaler.errors import DatabaseUnavailable, FailureKind

T = TypeVar("T")


class ConnectionLost(Exception):
    """An established connection went away; worth one retry on a new one."""


async def with_one_retry(label: str, read_once: Callable[[], Awaitable[T]], expire: Callable[[], Awaitable[None]]) -> T:
    """Read; if the connection was lost, drop the pool's connections and read once more.

    A connection the server closed (restart, PgBouncer restart, idle timeout,
    failover) fails on first use; one retry on a fresh connection keeps a
    healthy database from being reported down.
    """
    try:
        return await read_once()
    except ConnectionLost:
        await expire()
        try:
            return await read_once()
        except ConnectionLost as lost:
            raise DatabaseUnavailable(label, f"connection lost: {lost}", kind="connection_lost") from None


def first_line(error: BaseException) -> str:
    """The first line of a driver's message (some carry the whole query or a traceback after it)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


NO_TABLE = (
    "no task_instance table (is this the Airflow metadata database, "
    "with the right schema in search_path, and has `airflow db migrate` run?)"
)


NO_PREWARM_TABLES = "no dag or dag_run table (pre-warm reads them: is this the Airflow metadata database?)"


def timeout_reason(query_timeout: float, connect_timeout: float) -> str:
    return f"no answer within {query_timeout:g}s (query timeout) or {connect_timeout:g}s (connect timeout)"


def network_reason(error: OSError) -> tuple[FailureKind, str]:
    """The kind and reason for a socket-level failure to reach the server."""
    if isinstance(error, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(error, socket.gaierror):
        return "dns", "host name could not be resolved"
    if isinstance(error, ssl.SSLError):
        return "tls", f"TLS failed: {error.reason or type(error).__name__}"
    return "network", f"cannot connect: {error.strerror or type(error).__name__}"
