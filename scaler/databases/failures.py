"""What every backend does with driver failures: retry a dead connection once, quote an error briefly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from scaler.errors import DatabaseUnavailable

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
