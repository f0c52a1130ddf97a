"""Real Celery workers (`celery worker` processes) on a throwaway broker, for the drain tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from scaler.adapters.celery_broker.control import CeleryControl

REPO = Path(__file__).resolve().parents[2]


class CeleryWorkers:
    """`celery worker` processes named celery@<name>, consuming the given queues; tasks record who ran them."""

    def __init__(self, broker_url: str, names: list[str], *, queues: str = "default", concurrency: int = 2) -> None:
        self.broker_url = broker_url
        self.dir = Path(tempfile.mkdtemp(prefix="airflow-keda-scaler-celery-"))
        self.records = self.dir / "records"
        self.records.mkdir()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.names = names
        self.queues = queues
        self.concurrency = concurrency
        self._client: Any = None

    def nodename(self, name: str) -> str:
        return f"celery@{name}"

    def start(self, name: str) -> None:
        env = {
            **os.environ,
            "DRAIN_TEST_BROKER": self.broker_url,
            "DRAIN_TEST_RECORDS": str(self.records),
            "PYTHONPATH": str(REPO),
        }
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it after Popen
        try:
            self.processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tests.support.celery_tasks",
                    "worker",
                    "-n",
                    self.nodename(name),
                    "-Q",
                    self.queues,
                    "--pool",
                    "threads",
                    "-c",
                    str(self.concurrency),
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "INFO",
                ],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def __enter__(self) -> Self:
        for name in self.names:
            self.start(name)
        return self

    def send(self, tag: str, seconds: float = 0.0, queue: str = "default") -> None:
        """Queue task `tag` as Airflow's executor does (blocking: call it off the event loop)."""
        if self._client is None:
            from celery import Celery  # type: ignore[import-untyped]

            self._client = Celery("drain-tests-client", broker=self.broker_url, set_as_current=False)
            self._client.conf.update(task_default_queue="default", task_default_exchange="default")
        self._client.send_task("record", args=[tag, seconds], queue=queue)

    async def send_async(self, tag: str, seconds: float = 0.0, queue: str = "default") -> None:
        await asyncio.to_thread(self.send, tag, seconds, queue)

    def ran(self) -> dict[str, str]:
        """Task tag -> the nodename of the worker that ran it, for the tasks done."""
        return self._records(done=True)

    def running(self) -> dict[str, str]:
        """Task tag -> the nodename of the worker that runs it, for the tasks started and not done."""
        started, done = self._records(done=False), self._records(done=True)
        return {tag: node for tag, node in started.items() if tag not in done}

    def _records(self, *, done: bool) -> dict[str, str]:
        found = {}
        for path in self.records.iterdir():
            if path.name.endswith(".started") != done and (text := path.read_text()):
                found[path.name.removesuffix(".started")] = text
        return found

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for name in list(self.processes):
            self.kill(name)
        if self._client is not None:
            self._client.close()


async def until_consumers(control: CeleryControl, expected: dict[str, frozenset[str]], limit: float = 60.0) -> None:
    """Wait until `inspect active_queues` shows exactly `expected` (node -> queues): state another process holds.
    Celery answers add_consumer and cancel_consumer "ok" before the worker makes the change (call_soon on its
    loop), so an inspect sent right after a command may be answered before it: a check waits, never asks once.

    `limit` only turns a hang into a failure, naming what was last seen.
    """
    found: dict[str, frozenset[str]] = {}
    try:
        async with asyncio.timeout(limit):
            while (found := await control.consumers(list(expected))) != expected:  # noqa: ASYNC110 - another process holds it
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"consumers {found}, expected {expected}") from None
