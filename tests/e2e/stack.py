"""A real Airflow installation with CeleryExecutor, run from a cached virtualenv for one test.

The stack is what a small Airflow deployment runs: the metadata database
(PostgreSQL), a Redis broker, the scheduler, the API (Airflow 2's webserver or
Airflow 3's api-server, which 3.x workers also need for the Execution API),
Airflow 3's dag-processor, and one Celery worker with a small concurrency that
consumes the DAG's queues. Every process runs in its own session with
AIRFLOW_HOME set to the stack's folder; `stop` ends each process group (TERM,
then KILL) and then makes sure no process that carries that AIRFLOW_HOME or
works in that folder is left, whatever happened before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.databases.postgres import PostgresReader
from scaler.commands.replay.trace import TraceBuilder, Window
from scaler.fixtures.embedded_postgres import EmbeddedPostgres
from scaler.rules.database_urls import parse_url
from tests.support.servers import free_port

DAG_ID = "keda_fanout"
QUEUES = {"alpha": 6, "beta": 4}  # tasks per queue: more than the worker's slots
# Multiple executors (2.10+): tasks on queue alpha that LocalExecutor runs in the scheduler,
# which the alpha ScaledObject leaves out with excludeExecutors.
LOCAL_TASKS = 3
LOCAL_PREFIX = "local_"
CONCURRENCY = 2
TASK_SECONDS = 8

# What every DAG file of the stack starts with (Airflow 2 and 3 name PythonOperator's module differently).
DAG_HEADER = """
import time
from datetime import datetime

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # Airflow 2
    from airflow.operators.python import PythonOperator
"""

# Written into the stack's dags folder (not a module of ours: it imports Airflow).
DAG_SOURCE = (
    DAG_HEADER
    + f'''

def work():
    time.sleep({TASK_SECONDS})


with DAG("{DAG_ID}", start_date=datetime(2024, 1, 1), schedule=None, catchup=False, max_active_tasks=32):
    for queue, count in {QUEUES!r}.items():
        for index in range(count):
            PythonOperator(task_id=f"{{queue}}_{{index}}", python_callable=work, queue=queue, retries=0)
    for index in range({LOCAL_TASKS}):
        PythonOperator(
            task_id=f"{LOCAL_PREFIX}{{index}}", python_callable=work, queue="alpha", executor="LocalExecutor", retries=0
        )
'''
)

# The pre-warm test's DAG: scheduled every two minutes, each run puts SCHEDULED_TASKS short tasks on its queue.
SCHEDULED_DAG_ID = "keda_every_2m"
SCHEDULED_QUEUE = "gamma"
SCHEDULED_TASKS = 4
SCHEDULED_DAG_SOURCE = (
    DAG_HEADER
    + f'''

def work():
    time.sleep(3)


with DAG("{SCHEDULED_DAG_ID}", start_date=datetime(2024, 1, 1), schedule="*/2 * * * *", catchup=False):
    for index in range({SCHEDULED_TASKS}):
        PythonOperator(task_id=f"t{{index}}", python_callable=work, queue="{SCHEDULED_QUEUE}", retries=0)
'''
)


# The warm-shutdown test's DAG: one task that runs for a while, on its own queue.
WARM_DAG_ID = "keda_long_task"
WARM_QUEUE = "delta"
WARM_TASK_SECONDS = 25
WARM_DAG_SOURCE = (
    DAG_HEADER
    + f'''

def work():
    time.sleep({WARM_TASK_SECONDS})


with DAG("{WARM_DAG_ID}", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):
    PythonOperator(task_id="long", python_callable=work, queue="{WARM_QUEUE}", retries=0)
'''
)


DRAIN_QUEUE = "drain"
DRAIN_TASK_SECONDS = 20
# Each worker records its own name as task_instance.hostname (all the stack's workers share one machine's):
# Airflow's [core] hostname_callable, pointed at this module (on the workers' PYTHONPATH).
HOSTNAME_MODULE = """
import os


def hostname():
    return os.environ["E2E_WORKER_HOSTNAME"]
"""


def drain_dag(dag_id: str, tasks: int, seconds: tuple[int, ...] = ()) -> str:
    """A DAG of `tasks` parallel tasks on DRAIN_QUEUE, each of DRAIN_TASK_SECONDS, or task n of seconds[n]."""
    durations = seconds or (DRAIN_TASK_SECONDS,) * tasks
    assert len(durations) == tasks
    return (
        DAG_HEADER
        + f'''

def work(seconds):
    time.sleep(seconds)


with DAG("{dag_id}", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):
    for n, seconds in enumerate({list(durations)!r}):
        PythonOperator(
            task_id=f"t{{n}}", python_callable=work, op_args=[seconds], queue="{DRAIN_QUEUE}", retries=0
        )
'''
    )


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class AirflowStack:
    version: str
    venv: Path
    database_url: str  # SQLAlchemy form, postgresql+psycopg2://
    broker_url: str
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="airflow-keda-scaler-e2e-")))
    api_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    # The DAG files (dag id -> source) and the queues the Celery worker consumes.
    dags: dict[str, str] = field(default_factory=lambda: {DAG_ID: DAG_SOURCE})
    queues: tuple[str, ...] = tuple(QUEUES)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor,LocalExecutor",  # the first is the default
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database_url.replace("+psycopg2", ""),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CONCURRENCY),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
        if self.major >= 3:
            env |= {
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-only-not-a-secret",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            }
        else:
            env |= {
                "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(self.api_port),
                "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__WEBSERVER__WORKERS": "1",
                "AIRFLOW__WEBSERVER__SECRET_KEY": "e2e-only-not-a-secret",
                "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth",
                "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
            }
        return env

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """Run an airflow CLI command to completion; its output, or an error with the output's end."""
        result = subprocess.run(
            [str(self.venv / "bin" / "airflow"), *args],
            env=self.env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
        return result.stdout

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = self.home / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [str(self.venv / "bin" / "airflow"), *args],
                env={**self.env(), **(env or {})},
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends its children too
            )
        self.processes.append(Process(name, popen, log))

    def start(self) -> None:
        (self.home / "dags").mkdir(parents=True, exist_ok=True)
        for dag_id, source in self.dags.items():
            (self.home / "dags" / f"{dag_id}.py").write_text(source)
        self.airflow("db", "migrate")
        queues = ",".join(self.queues)
        if self.major >= 3:
            self.spawn("api-server", "api-server")
            self.spawn("dag-processor", "dag-processor")
        else:
            self.airflow(
                "users", "create", "--username", "admin", "--password", "admin", "--role", "Admin",
                "--email", "admin@example.com", "--firstname", "e2e", "--lastname", "admin",
            )  # fmt: skip
            self.spawn("webserver", "webserver")
        self.spawn("scheduler", "scheduler")
        self.spawn("worker", "celery", "worker", "--queues", queues, "--concurrency", str(CONCURRENCY))

    def spawn_named_worker(self, name: str, queues: str, concurrency: int) -> None:
        """A Celery worker whose node is celery@<name> and whose tasks record <name> as their hostname, as a
        pod named <name> would."""
        module_dir = self.home / "hostname"
        module_dir.mkdir(exist_ok=True)
        (module_dir / "e2e_hostname.py").write_text(HOSTNAME_MODULE)
        env = {
            "PYTHONPATH": str(module_dir),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "e2e_hostname.hostname",
            "E2E_WORKER_HOSTNAME": name,
        }
        args = ("celery", "worker", "--queues", queues, "--concurrency", str(concurrency), "--celery-hostname", name)
        self.spawn(name, *args, env=env)

    def check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"airflow {process.name} exited with {process.popen.returncode}:\n{self.log_tail(process)}"
                )

    def log_tail(self, process: Process, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(process.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.name} ---\n{self.log_tail(p)}" for p in self.processes)

    def stop(self, grace: float = 30.0) -> list[str]:
        """End every process (TERM, `grace` seconds, KILL); return what had escaped its group (killed now)."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        # Children that left their group (daemonised, setsid) are found by what they inherited.
        time.sleep(0.5)
        leftovers = processes_of(self.home)
        for pid, _ in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.home, ignore_errors=True)
        return [f"{pid} {command}" for pid, command in leftovers]


def processes_of(home: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process that belongs to the stack living in `home`.

    A process belongs to it when its environment has AIRFLOW_HOME=home or its working
    folder is inside home (every process starts there). Both, because setproctitle,
    which gunicorn, Celery and Airflow's own processes use, writes over the environment.
    """
    wanted = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            environ = (entry / "environ").read_bytes().split(b"\0")
            if wanted in environ or Path(cwd).is_relative_to(home):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), command.strip()))
        except OSError:
            continue
    return found


async def with_stack(stack: AirflowStack, check: Callable[[AirflowApi], Awaitable[None]]) -> None:
    """Start the stack, run `check` against its API, print its logs if that fails, and stop it whatever
    happened; fail if any of its processes outlived the stop."""
    try:
        await asyncio.to_thread(stack.start)
        async with aiohttp.ClientSession() as session:
            await check(AirflowApi(stack, session))
    except BaseException:
        print(f"\nAirflow {stack.version} logs:\n{stack.logs()}")
        raise
    finally:
        leftovers = await asyncio.to_thread(stack.stop)
    assert not leftovers, f"processes left behind (killed now): {leftovers}"


class AirflowApi:
    """Airflow's own stable REST API: v1 with basic auth on 2.x, v2 on 3.x (all users are admins there)."""

    def __init__(self, stack: AirflowStack, session: aiohttp.ClientSession) -> None:
        self._session = session
        if stack.major >= 3:
            self._base = f"{stack.api_url}/api/v2"
            self._headers: dict[str, str] = {}
        else:
            self._base = f"{stack.api_url}/api/v1"
            self._headers = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
        self._v3 = stack.major >= 3

    async def _call(self, method: str, path: str, body: object = None) -> Any:
        async with self._session.request(
            method, self._base + path, json=body, headers=self._headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {(await response.text())[:500]}")
            return await response.json()

    async def dag_is_loaded(self, dag_id: str = DAG_ID) -> bool:
        try:
            await self._call("GET", f"/dags/{dag_id}")
        except (RuntimeError, aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def pause(self, dag_id: str) -> None:
        await self._call("PATCH", f"/dags/{dag_id}", {"is_paused": True})

    async def trigger(self, dag_id: str = DAG_ID) -> str:
        body: dict[str, object] = {"logical_date": None} if self._v3 else {"conf": {}}
        run = await self._call("POST", f"/dags/{dag_id}/dagRuns", body)
        return str(run["dag_run_id"])

    async def run_state(self, run_id: str) -> str:
        run = await self._call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        return str(run["state"])

    async def demand(self, run_id: str) -> dict[str, tuple[int, int]]:
        """(running, queued) task instances per queue for Celery, and under "local" LocalExecutor's."""
        page = await self._call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
        counts = {queue: [0, 0] for queue in (*QUEUES, "local")}
        for task in page["task_instances"]:
            if task["state"] in ("running", "queued"):
                key = "local" if task["task_id"].startswith(LOCAL_PREFIX) else task["queue"]
                counts[key][0 if task["state"] == "running" else 1] += 1
        return {queue: (running, queued) for queue, (running, queued) in counts.items()}


@contextlib.contextmanager
def stack_on_postgres(
    version: str, venv: Path, broker_url: str, dags: dict[str, str]
) -> Iterator[tuple[AirflowStack, str]]:
    """A throwaway PostgreSQL with an `airflow` database, and a stack on it whose own worker takes nothing of the
    test's (queue `unused`): the test starts the workers it needs. Yields the stack and the database's DSN."""
    with EmbeddedPostgres(stat_statements=False) as postgres:
        postgres.psql("CREATE DATABASE airflow")
        dsn = postgres.dsn_for("airflow")
        database_url = dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
        yield AirflowStack(version, venv, database_url, broker_url, dags=dags, queues=("unused",)), dsn


async def read_history(dsn: str, window: Window, builders: Iterable[TraceBuilder]) -> None:
    """Feed the task instances Airflow wrote in `window` to `builders`, as `replay` reads them (one read-only
    cursor, a page at a time)."""
    builders = list(builders)
    reader = PostgresReader(parse_url(dsn), label="airflow", settings=PoolSettings(max_size=1))
    try:
        async for page in reader.history(window.start, window.end):
            for builder in builders:
                builder.add(page)
    finally:
        await reader.close()
