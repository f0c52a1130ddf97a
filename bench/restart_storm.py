"""Benchmark 5b: a restart storm. KEDA reopens every StreamIsActive at once after a scaler restarts.

All streams are opened together over one connection (KEDA keeps one per scaler
address), each for its own ScaledObject. Measured: the time until every stream
has its first message, the time until a demand change reaches every stream, how
many were refused or cancelled, and the `serve` process's resident memory.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import grpc

from bench.common import Database, free_port, rss_bytes, serve
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.fixtures.airflow_schema import TaskInstance, insert_task_instances

TARGET_BYTES = 150 * 1024 * 1024  # the target for 5,000 streams, in MiB


def plain_metadata(index: int) -> Mapping[str, str]:
    return {"database": "airflow"}


@dataclass(frozen=True)
class StormResult:
    streams: int
    opened: int
    failed: dict[str, int]  # status code -> streams refused or cancelled with it
    open_seconds: float
    notify_seconds: float
    notified: int
    idle_bytes: int
    loaded_bytes: int
    messages: dict[str, str] = field(default_factory=dict)  # status code -> the first refusal's message


async def storm(
    address: str,
    database: Database,
    streams: int,
    *,
    rss: Callable[[], int] | None = None,
    metadata: Callable[[int], Mapping[str, str]] = plain_metadata,
    namespaces: int = 10,
) -> StormResult:
    """Open `streams` streams at once, wait for every first message, then add work and wait for every `true`.

    Stream i is ScaledObject workers-i in namespace team-(i % namespaces) (a shared scaler's tenants), with
    metadata(i).
    """
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        calls = [
            stub.StreamIsActive(
                pb.ScaledObjectRef(name=f"workers-{i}", namespace=f"team-{i % namespaces}", scalerMetadata=metadata(i))
            )
            for i in range(streams)
        ]
        failed: dict[str, int] = {}
        messages: dict[str, str] = {}

        async def first(call: grpc.aio.UnaryStreamCall[pb.ScaledObjectRef, pb.IsActiveResponse]) -> bool:
            try:
                reply = await call.read()
            except grpc.aio.AioRpcError as error:
                failed[error.code().name] = failed.get(error.code().name, 0) + 1
                messages.setdefault(error.code().name, error.details() or "")
                return False
            return reply is not grpc.aio.EOF  # type: ignore[attr-defined]

        started = time.perf_counter()
        opened = sum(await asyncio.gather(*(first(call) for call in calls)))
        open_seconds = time.perf_counter() - started
        # Demand appears: every stream that opened must be told, and nothing else read meanwhile.
        connection = await database.connect()
        try:
            started = time.perf_counter()
            await insert_task_instances(connection, [TaskInstance("storm", "queued")])
            replies = await asyncio.gather(*(call.read() for call in calls if not call.done()), return_exceptions=True)
            notified = sum(1 for reply in replies if isinstance(reply, pb.IsActiveResponse) and reply.result)
            loaded = rss() if rss is not None else 0
            notify_seconds = time.perf_counter() - started
            await connection.execute("DELETE FROM task_instance")
        finally:
            await connection.close()
        for call in calls:
            call.cancel()
    return StormResult(streams, opened, failed, open_seconds, notify_seconds, notified, 0, loaded, messages)


async def bare_grpc(streams: int) -> tuple[int, int]:
    """RSS of a bare grpc.aio server (bench/bare_grpc.py) idle and with `streams` open: gRPC's own share."""
    port = free_port()
    process = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-m", "bench.bare_grpc", str(port)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            idle = rss_bytes(process.pid)
            stub = pb_grpc.ExternalScalerStub(channel)
            calls = [stub.StreamIsActive(pb.ScaledObjectRef(name=f"w{i}", namespace="a")) for i in range(streams)]
            await asyncio.gather(*(call.read() for call in calls))
            loaded = rss_bytes(process.pid)
            for call in calls:
                call.cancel()
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait)
    return idle, loaded


async def run(database: Database, streams: int) -> tuple[str, StormResult]:
    async with serve({"airflow": database.dsn}) as scaler:
        idle = scaler.rss_bytes()
        result = await storm(scaler.address, database, streams, rss=scaler.rss_bytes)
    result = replace(result, idle_bytes=idle)
    bare_idle, bare_loaded = await bare_grpc(streams)
    mib = 1024 * 1024
    refused = ", ".join(f"{count} {code}" for code, count in sorted(result.failed.items())) or "none"
    print(
        f"  restart storm: {result.opened}/{streams} opened in {result.open_seconds:.2f} s, "
        f"{result.notified} told of new demand in {result.notify_seconds:.2f} s, refused {refused}, "
        f"RSS {result.loaded_bytes / mib:.0f} MiB",
        flush=True,
    )
    met = "met" if result.loaded_bytes < TARGET_BYTES and result.opened == streams else "**missed**"
    lines = [
        "## 5b. Restart storm",
        "",
        f"{streams:,} `StreamIsActive` streams opened at once over one connection (as KEDA reopens them after "
        "a scaler restart), each for its own ScaledObject; then one queued task is added.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| streams that got their first message | {result.opened:,} of {streams:,} |",
        f"| refused or cancelled | {refused} |",
        f"| time until every stream had its first message | {result.open_seconds:.2f} s |",
        f"| time until every stream was told of the new demand | {result.notify_seconds:.2f} s "
        f"({result.notified:,} told) |",
        f"| resident memory, idle | {idle / mib:.1f} MiB |",
        f"| resident memory, {streams:,} streams open | {result.loaded_bytes / mib:.1f} MiB |",
        f"| a bare grpc.aio server (`bench/bare_grpc.py`): idle, then {streams:,} streams open "
        f"| {bare_idle / mib:.1f} MiB, then {bare_loaded / mib:.1f} MiB |",
        "",
        f"Target: every stream opens, < 150 MiB with 5,000 streams: {met}.",
        "",
        f"Per open stream: the scaler {(result.loaded_bytes - idle) / streams / 1024:.1f} KiB, of which gRPC's own "
        f"{(bare_loaded - bare_idle) / streams / 1024:.1f} KiB (the bare server, same grpcio and pending-call "
        "limits, a handler that holds nothing). The rest is what the scaler keeps of each ScaledObject (its spec, "
        "last decision and counters, from which its series are read at scrape time) and the stream handler's "
        "state. A memory target below gRPC's own floor plus the idle process is out of reach "
        "for this process model; the limits (`--max-streams`) bound it instead.",
    ]
    return "\n".join(lines), result


async def _main(streams: int) -> None:
    from bench.common import airflow_database
    from scaler.fixtures.embedded_postgres import EmbeddedPostgres

    with EmbeddedPostgres(stat_statements=True) as postgres:
        async with airflow_database(postgres) as database:
            print((await run(database, streams))[0])


if __name__ == "__main__":
    import sys

    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
