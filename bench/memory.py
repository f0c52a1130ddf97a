"""Benchmark 5: the server's resident memory with 1,000 ScaledObjects known and 1,000 open streams."""

from __future__ import annotations

import asyncio

import grpc

from bench.common import Database, serve
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc


async def run(database: Database, scaled_objects: int) -> tuple[str, float]:
    async with serve({"airflow": database.dsn}) as scaler, grpc.aio.insecure_channel(scaler.address) as channel:
        idle = scaler.rss_bytes()
        stub = pb_grpc.ExternalScalerStub(channel)
        refs = [
            pb.ScaledObjectRef(
                name=f"workers-{i}", namespace="airflow", scalerMetadata={"database": "airflow", "queues": f"q{i % 20}"}
            )
            for i in range(scaled_objects)
        ]
        for start in range(0, scaled_objects, 100):
            await asyncio.gather(*(stub.IsActive(ref, timeout=10) for ref in refs[start : start + 100]))
        known = scaler.rss_bytes()
        streams = [stub.StreamIsActive(ref) for ref in refs]
        await asyncio.gather(*(stream.read() for stream in streams))
        await asyncio.sleep(1.0)
        loaded = scaler.rss_bytes()
        for stream in streams:
            stream.cancel()
    mib = 1024 * 1024
    print(
        f"  memory: idle {idle / mib:.0f} MiB, {scaled_objects} known {known / mib:.0f} MiB, "
        f"+{scaled_objects} streams {loaded / mib:.0f} MiB",
        flush=True,
    )
    met = "met" if loaded < 100 * 1000 * 1000 else "**missed**"
    lines = [
        "## 5. Memory",
        "",
        "Resident memory (`VmRSS` from `/proc`) of the real `serve` process.",
        "",
        "| state | resident memory |",
        "| --- | ---: |",
        f"| started, one database configured | {idle / mib:.1f} MiB |",
        f"| {scaled_objects} ScaledObjects known (each called once) | {known / mib:.1f} MiB |",
        f"| and {scaled_objects} `StreamIsActive` streams open | {loaded / mib:.1f} MiB |",
        "",
        f"Target < 100 MB: {met}.",
    ]
    return "\n".join(lines), loaded
