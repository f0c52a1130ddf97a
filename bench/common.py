"""What every benchmark shares: an embedded PostgreSQL, the real `serve` process, percentiles, the machine."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from scaler.fixtures.airflow_schema import LATEST, schema_sql
from scaler.fixtures.embedded_postgres import EmbeddedPostgres

SNAPSHOT_MARKER = "airflow-keda-scaler snapshot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:  # Linux; the benchmarks are run here
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 50) * 1000:.2f} ms, p99 {percentile(values, 99) * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms (n={len(values)}, mean {statistics.fmean(values) * 1000:.2f} ms)"
    )


@dataclass
class Database:
    admin_dsn: str
    dsn: str
    name: str

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)


@asynccontextmanager
async def airflow_database(server: EmbeddedPostgres) -> AsyncIterator[Database]:
    """A fresh database holding Airflow's newest task_instance table."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    connection = await asyncpg.connect(server.dsn_for(name))
    await connection.execute(schema_sql(LATEST))
    await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await connection.close()
    try:
        yield Database(server.dsn, server.dsn_for(name), name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def snapshot_queries(database: Database) -> int:
    """How many snapshot queries the server executed on this database (pg_stat_statements)."""
    connection = await database.connect()
    try:
        value = await connection.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname = current_database() AND s.query LIKE '%{SNAPSHOT_MARKER}%'"
        )
    finally:
        await connection.close()
    return int(value)


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def peak_rss_bytes(self) -> int:
        return rss_bytes(self.process.pid, field="VmHWM")


def rss_bytes(pid: int, *, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS), or its peak so far (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


@asynccontextmanager
async def serve(
    databases: Mapping[str, str], *, log: Path | None = None, **settings: str
) -> AsyncIterator[ServeProcess]:
    """The real `airflow-keda-scaler serve`, in its own process, configured as a Deployment would.

    `log`: where its output goes (else the caller's); on exit it gets SIGTERM, and its exit code is
    the process's returncode afterwards.
    """
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIRFLOW_KEDA_SCALER_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "AIRFLOW_KEDA_SCALER_DATABASE": " ".join(f"{name}={url}" for name, url in databases.items()),
        "AIRFLOW_KEDA_SCALER_LOG_LEVEL": "warning",
        # The load's ScaledObjects exist in no cluster; the Kubernetes side is measured by bench/scale_down.py.
        "AIRFLOW_KEDA_SCALER_KUBERNETES": "off",
        **{f"AIRFLOW_KEDA_SCALER_{key.upper()}": value for key, value in settings.items()},
    }
    command = [sys.executable, "-m", "scaler", "serve"]
    if log is None:
        process = await asyncio.to_thread(subprocess.Popen, command, env=env)
    else:
        with log.open("wb") as sink:
            process = await asyncio.to_thread(subprocess.Popen, command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = ServeProcess(process, f"127.0.0.1:{port}", metrics_port)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), 60)
        except TimeoutError:
            process.kill()
            process.wait()


def widest_trigger(index: int, *, names: int = 64) -> dict[str, str]:
    """The widest trigger the default limits accept: --max-trigger-names long queue names, and a 16 KiB map.

    Each index gets names of its own (so no two ScaledObjects share a spec), and `default` among them (so
    that its ScaledObject counts the benchmarks' and tests' tasks).
    """
    queues = ",".join(["default", *(f"{index}-{n}-" + "q" * 50 for n in range(names - 1))])[:4000].rsplit(",", 1)[0]
    used = len("database") + len("airflow") + len("queues") + len(queues)
    rest = 16384 - used - 8  # KEDA's own keys and anything else fill the map to --max-metadata-bytes
    filler = {f"k{n}": "x" * min(4000, rest - 2 - n * 4002) for n in range(4) if rest - 2 - n * 4002 > 0}
    return {"database": "airflow", "queues": queues, **filler}
