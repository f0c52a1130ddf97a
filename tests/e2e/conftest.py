"""Stopping `make e2e` from outside (a CI timeout, `kill`) must still stop what it started.

Python ends on SIGTERM without running `finally` blocks, and the Airflow
processes, PostgreSQL and Redis run in sessions of their own, so they would
outlive the test. SIGTERM is turned into what Ctrl-C does: the running test is
cancelled, its cleanup runs, and pytest stops.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest


@pytest.fixture(autouse=True, scope="session")
def sigterm_cleans_up() -> Iterator[None]:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)
