"""`airflow-keda-scaler serve` as a real process, configured through its environment, for the drain tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc

from tests.support.servers import free_port


async def start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `serve` with `env` on a free port, its output appended to `log`; once it answers, it and its address."""
    port = free_port()
    with log.open("ab") as sink:
        process = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "scaler", "serve"],
            env={**os.environ, **env, "AIRFLOW_KEDA_SCALER_GRPC_ADDRESS": f"127.0.0.1:{port}"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
    return process, address
