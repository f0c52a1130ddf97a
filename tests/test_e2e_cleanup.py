"""The end-to-end stack's cleanup, without Airflow: nothing it started may outlive it.

Airflow's scheduler, gunicorn and Celery start children of their own; a child
that left the process group (setsid, daemonising) escapes a group kill. stop()
must find such processes by the AIRFLOW_HOME they carry and kill them too.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.e2e.stack import AirflowStack, Process, processes_of


def test_stop_ends_the_group_and_the_children_that_left_it(tmp_path: Path) -> None:
    stack = AirflowStack("2.10.5", venv=tmp_path, database_url="postgresql+psycopg2://unused", broker_url="redis://x")
    stack.home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AIRFLOW_HOME": str(stack.home)}
    log = stack.home / "fake.log"
    with open(log, "ab") as out:
        # One process ignoring TERM in the group; two that escaped it with setsid, one of them
        # with its environment gone (as setproctitle leaves it), known only by its working folder.
        popen = subprocess.Popen(
            ["bash", "-c", "setsid sleep 300 & setsid env -i sleep 301 & trap '' TERM; sleep 302 & wait"],
            env=env,
            cwd=stack.home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.processes.append(Process("fake", popen, log))
    # Wait until all three run `sleep`: setsid(1) calls setsid() before it execs, so a process seen as
    # `sleep 300` has left the group. Counting four processes was not enough: a forked child not yet
    # past setsid() is still in the group, and the group kill took it (run 9 of a 10-run stress-timing).
    final = {"sleep 300", "sleep 301", "sleep 302"}
    deadline = time.monotonic() + 60
    while not final <= commands(stack.home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert final <= commands(stack.home)
    assert len(processes_of(stack.home)) == 4

    leftovers = stack.stop(grace=1.0)

    assert sorted(command.split(" ", 1)[1] for command in leftovers) == ["sleep 300", "sleep 301"]
    # Killed: gone from /proc once reaped, which takes a moment on a busy machine (a condition, bounded).
    deadline = time.monotonic() + 60
    while processes_of(stack.home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(stack.home) == []
    assert not stack.home.exists()


def commands(home: Path) -> set[str]:
    return {command for _, command in processes_of(home)}
