"""Celery's remote control on one broker: inspect active_queues, cancel_consumer, add_consumer.

Celery's client is blocking, so every call runs on this broker's own thread
(one, so a broker that hangs holds up only itself, never the event loop or
another broker) and is bounded twice: the broker's socket and reply timeouts,
and a wait on the thread a little longer than those. A failure is a
BrokerUnavailable naming the broker by its label and the command, never its
URL; the driver's own message is redacted and cut short.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from scaler.errors import shown
from scaler.rules.broker_urls import REDIS_SCHEMES, BrokerTarget

log = logging.getLogger(__name__)

T = TypeVar("T")

# Kept on top of the broker's own timeouts when waiting on the thread: a call that has not returned by then
# is reported as timed out (the thread may still finish it; the next call waits its turn behind it).
_SLACK = 2.0


class BrokerUnavailable(Exception):
    """A command to the broker failed or timed out; the message is safe to show."""

    def __init__(self, label: str, command: str, reason: str) -> None:
        self.label = label
        self.command = command
        self.reason = reason
        super().__init__(f"Celery broker {label}: {command}: {reason}")


class CeleryControl:
    """Celery's control API for one broker. `timeout`: how long a command waits for a worker's reply."""

    def __init__(self, target: BrokerTarget, *, timeout: float = 2.0) -> None:
        self.target = target
        self.timeout = timeout
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-broker")
        self._app: Any = None  # made on the thread at first use: importing Celery costs a second

    def _control(self) -> Any:
        if self._app is None:
            from celery import Celery  # type: ignore[import-untyped]  # here: only a scaler with a broker pays for it

            options: dict[str, object] = {}
            if self.target.scheme in REDIS_SCHEMES:
                options = {
                    "socket_timeout": self.timeout,
                    "socket_connect_timeout": self.timeout,
                    "max_connections": 4,
                    "retry_on_timeout": False,
                }
            app = Celery("airflow-keda-scaler", broker=self.target.url, set_as_current=False)
            app.conf.update(
                broker_connection_retry=False,
                broker_connection_retry_on_startup=False,
                broker_connection_max_retries=0,
                broker_connection_timeout=self.timeout,
                broker_transport_options=options,
                accept_content=["json"],
                task_serializer="json",
                result_serializer="json",
            )
            self._app = app
        return self._app.control

    async def _call(self, command: str, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._thread, work)
        try:
            return await asyncio.wait_for(future, self.timeout * 2 + _SLACK)
        except TimeoutError:
            raise BrokerUnavailable(
                self.target.label, command, f"no answer within {self.timeout * 2 + _SLACK:g} s"
            ) from None
        except BrokerUnavailable:
            raise
        except Exception as error:  # the driver's: connection refused, authentication, protocol
            reason = str(error).strip().splitlines()
            text = f"{type(error).__name__}: {reason[0]}" if reason else type(error).__name__
            raise BrokerUnavailable(self.target.label, command, shown(text, 200)) from None

    async def consumers(self, workers: list[str] | None = None) -> dict[str, frozenset[str]]:
        """The queues each worker (`celery@<host>`) consumes; `workers` None asks every worker on the broker.

        A worker that does not answer within the timeout is missing from the result.
        """

        def inspect() -> dict[str, frozenset[str]]:
            control = self._control()
            answer = control.inspect(destination=workers, timeout=self.timeout).active_queues() or {}
            return {node: _queue_names(queues) for node, queues in _mapping(answer).items()}

        return await self._call("inspect active_queues", inspect)

    async def cancel_consumer(self, worker: str, queue: str) -> None:
        """Tell `worker` to stop consuming `queue`; raises BrokerUnavailable without a reply saying ok.

        The worker answers ok and then makes the change on its loop (Celery's call_soon): an inspect sent at once
        may still show the queue, and a task handed to it in that moment it runs (a busy worker, kept as such).
        """
        await self._command("cancel_consumer", worker, queue)

    async def add_consumer(self, worker: str, queue: str) -> None:
        """Tell `worker` to consume `queue` again (its own declaration of the queue is used)."""
        await self._command("add_consumer", worker, queue)

    async def _command(self, command: str, worker: str, queue: str) -> None:
        def send() -> list[Any]:
            method = getattr(self._control(), command)
            replies: list[Any] = method(queue, destination=[worker], reply=True, timeout=self.timeout) or []
            return replies

        replies = await self._call(command, send)
        for reply in replies:
            answer = _mapping(reply).get(worker)
            if isinstance(answer, Mapping) and "ok" in answer:
                return
            if isinstance(answer, Mapping) and "error" in answer:
                raise BrokerUnavailable(
                    self.target.label, command, f"{shown(worker)} answered: {shown(str(answer['error']), 120)}"
                )
        raise BrokerUnavailable(self.target.label, command, f"no reply from {shown(worker)} within {self.timeout:g} s")

    async def close(self) -> None:
        def close() -> None:
            if self._app is not None:
                self._app.close()

        try:
            await self._call("close", close)
        except BrokerUnavailable as error:
            log.warning("%s", error)
        self._thread.shutdown(wait=False, cancel_futures=True)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _queue_names(queues: object) -> frozenset[str]:
    """The names in a worker's active_queues reply (a list of queue declarations)."""
    if not isinstance(queues, list):
        return frozenset()
    return frozenset(q["name"] for q in queues if isinstance(q, Mapping) and isinstance(q.get("name"), str))
