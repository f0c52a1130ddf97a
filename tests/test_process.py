"""`airflow-keda-scaler serve` as a real process: health, reflection, SIGTERM drain, no secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler.service.servicer import METRIC_NAME
from tests.conftest import AirflowDatabase, free_port, replace_login, with_password
from tests.support.keda import Keda


class ServeProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def serve_process(
    airflow3_db: AirflowDatabase, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServeProcess]:
    """`serve` configured through the environment; tests may add variables with indirect parametrization."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        # Configured only through the environment, as the Deployment does.
        "AIRFLOW_KEDA_SCALER_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": "127.0.0.1:0",
        "AIRFLOW_KEDA_SCALER_DATABASE": f"airflow={with_password(airflow3_db.dsn)}",
        "AIRFLOW_KEDA_SCALER_QUERY_TIMEOUT": "20",
        "AIRFLOW_KEDA_SCALER_SHUTDOWN_GRACE": "15",
        "AIRFLOW_KEDA_SCALER_LOG_LEVEL": "debug",
        **getattr(request, "param", {}),
    }
    with log.open("wb") as sink:
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "scaler", "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    running = ServeProcess(process, port, log)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_health_serving_and_reflection(serve_process: ServeProcess) -> None:
    async with grpc.aio.insecure_channel(serve_process.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "externalscaler.ExternalScaler"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name async for reply in replies for service in reply.list_services_response.service}
        assert {"externalscaler.ExternalScaler", "grpc.health.v1.Health"} <= names


async def test_sigterm_mid_request_drains_the_call_and_exits_zero(
    serve_process: ServeProcess, airflow3_db: AirflowDatabase
) -> None:
    await airflow3_db.add_many(20, "queued")
    async with grpc.aio.insecure_channel(serve_process.address) as channel:
        keda = Keda(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="externalscaler.ExternalScaler"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        # Hold the table so the next snapshot query blocks: the call is in flight at SIGTERM.
        async with airflow3_db.locked():
            request = pb.GetMetricsRequest(scaledObjectRef=Keda.ref({"database": "airflow"}), metricName=METRIC_NAME)
            in_flight = asyncio.ensure_future(keda.stub.GetMetrics(request, timeout=60))
            # In flight for certain: its query waits on the lock (not merely sent, and maybe not yet taken up).
            await airflow3_db.until_snapshot_query_waits()
            assert not in_flight.done()

            serve_process.process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(watch.read(), 60)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await asyncio.wait_for(in_flight, 60)
        assert reply.metricValues[0].metricValue == 2  # answered in full, not cut off

    code = await asyncio.to_thread(serve_process.process.wait, 20)
    assert code == 0
    output = serve_process.output()
    assert "shutting down" in output
    assert "stopped" in output


@pytest.mark.parametrize(
    "serve_process", [{}, {"AIRFLOW_KEDA_SCALER_LOG_FORMAT": "json"}], indirect=True, ids=["text", "json"]
)
async def test_logs_never_show_the_password(serve_process: ServeProcess, airflow3_db: AirflowDatabase) -> None:
    dsn = with_password(airflow3_db.dsn)
    password = urlsplit(dsn).password or ""
    assert len(password) >= 8
    async with grpc.aio.insecure_channel(serve_process.address) as channel:
        keda = Keda(channel)
        await keda.poll({"database": "airflow"})
        await keda.poll({"connectionFromEnv": dsn})
        bad = dsn.replace("/" + airflow3_db.name, "/missing_db")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await keda.poll({"connectionFromEnv": bad})
        assert password not in (caught.value.details() or "")
        # A wrong password holding the right one: whatever the server says, neither may show.
        with contextlib.suppress(grpc.aio.AioRpcError):  # a trust-auth server lets it in
            await keda.poll({"connectionFromEnv": replace_login(dsn, password=f"wrong-{password}")})
    serve_process.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve_process.process.wait, 20) == 0
    output = serve_process.output()
    assert "reachable" in output  # the logs did say something about the database
    assert "failing" in output  # ... and about the one that failed
    assert password not in output


@pytest.mark.parametrize("serve_process", [{"AIRFLOW_KEDA_SCALER_LOG_FORMAT": "json"}], indirect=True)
async def test_json_logs_are_one_object_a_line_with_the_decision(
    serve_process: ServeProcess, airflow3_db: AirflowDatabase
) -> None:
    await airflow3_db.add_many(20, "queued", queue="default")
    async with grpc.aio.insecure_channel(serve_process.address) as channel:
        for _ in range(3):
            await Keda(channel).poll({"database": "airflow", "concurrency": "8"})
    serve_process.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve_process.process.wait, 20) == 0
    # gRPC's C core writes its own lines to stderr too; ours are the JSON ones.
    entries = [json.loads(line) for line in serve_process.output().splitlines() if line.startswith("{")]
    assert {"time", "level", "logger", "message"} <= entries[0].keys()
    decisions = [entry for entry in entries if entry.get("scaled_object") == "celery-worker"]
    assert len(decisions) == 1, decisions  # three polls, one decision
    assert decisions[0]["namespace"] == "airflow"
    assert decisions[0]["demand"] == 20
    assert decisions[0]["workers"] == 3
    assert decisions[0]["active"] is True
    assert "concurrency 8" in decisions[0]["reason"]
    states = [
        entry["database_state"] for entry in entries if entry.get("database") == "airflow" and "database_state" in entry
    ]
    assert states == ["reachable"]


def test_bad_configuration_fails_fast_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scaler", "serve", "--database", "airflow=mssql://u:topsecret@h/db"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "database 'airflow': unsupported URL scheme 'mssql://'" in result.stderr
    assert "topsecret" not in result.stderr


def test_port_in_use_fails_with_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "scaler", "serve", "--grpc-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_every_flag_names_its_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scaler", "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    flags = [word.rstrip(",.;:)") for word in result.stdout.split() if word.startswith("--") and word != "--help"]
    help_text = " ".join(result.stdout.split())
    for flag in set(flags):
        env = "AIRFLOW_KEDA_SCALER_" + flag[2:].upper().replace("-", "_")
        assert env in help_text, flag
