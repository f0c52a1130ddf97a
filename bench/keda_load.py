"""Benchmarks 1 and 3b: ScaledObjects called in KEDA's pattern; database queries per second; call latency.

Each ScaledObject makes KEDA's three calls (GetMetricSpec, GetMetrics, IsActive,
in sequence, 3 s deadline) every pollingInterval, and the same three every 15 s
for the HPA, each loop with its own random phase: a paced, open-loop load, not
calls as fast as possible.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from bench.common import Database, percentile, serve, snapshot_queries, summary_ms
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc

KEDA_DEADLINE = 3.0
HPA_SYNC = 15.0


@dataclass
class LoadResult:
    scaled_objects: int
    seconds: float
    calls: int = 0
    reading_calls: int = 0  # GetMetrics and IsActive: each runs a query under KEDA's postgresql trigger
    errors: int = 0
    queries: int = 0
    latencies: list[float] = field(default_factory=list)
    spec_latencies: list[float] = field(default_factory=list)  # GetMetricSpec: reads no database

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds

    @property
    def per_call_baseline_per_second(self) -> float:
        return self.reading_calls / self.seconds


async def keda_pattern(
    address: str, scaled_objects: int, seconds: float, *, polling_interval: float, result: LoadResult
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        deadline = time.monotonic() + seconds

        async def round_of_three(ref: pb.ScaledObjectRef) -> None:
            metrics = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="airflow-celery-workers")
            calls: tuple[tuple[Callable[[], Awaitable[object]], bool], ...] = (
                (lambda: stub.GetMetricSpec(ref, timeout=KEDA_DEADLINE), False),
                (lambda: stub.GetMetrics(metrics, timeout=KEDA_DEADLINE), True),
                (lambda: stub.IsActive(ref, timeout=KEDA_DEADLINE), True),
            )
            for call, reads_database in calls:
                started = time.perf_counter()
                try:
                    await call()
                except grpc.aio.AioRpcError:
                    result.errors += 1
                result.latencies.append(time.perf_counter() - started)
                if not reads_database:
                    result.spec_latencies.append(result.latencies[-1])
                result.calls += 1
                result.reading_calls += reads_database

        async def loop(ref: pb.ScaledObjectRef, period: float) -> None:
            next_at = time.monotonic() + random.uniform(0, period)
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if time.monotonic() >= deadline:
                    return
                await round_of_three(ref)
                next_at += period

        refs = [
            pb.ScaledObjectRef(
                name=f"workers-{i}", namespace="airflow", scalerMetadata={"database": "airflow", "queues": f"q{i % 20}"}
            )
            for i in range(scaled_objects)
        ]
        await asyncio.gather(*(loop(ref, polling_interval) for ref in refs), *(loop(ref, HPA_SYNC) for ref in refs))


async def run(database: Database, sizes: list[int], seconds: float, polling_interval: float) -> tuple[str, LoadResult]:
    random.seed(1)
    results = []
    async with serve({"airflow": database.dsn}) as scaler:
        for size in sizes:
            result = LoadResult(size, seconds)
            before = await snapshot_queries(database)
            await keda_pattern(scaler.address, size, seconds, polling_interval=polling_interval, result=result)
            result.queries = await snapshot_queries(database) - before
            results.append(result)
            print(
                f"  {size:>5} ScaledObjects: {result.calls} calls ({result.errors} errors) in {seconds:g}s; "
                f"{result.queries_per_second:.2f} snapshot queries/s vs {result.per_call_baseline_per_second:.1f}/s "
                "for one query per call",
                flush=True,
            )
    lines = [
        "## 1. Database load against the number of ScaledObjects",
        "",
        f"Each ScaledObject in KEDA's pattern: three calls every pollingInterval ({polling_interval:g} s) and three "
        f"every {HPA_SYNC:g} s for the HPA, random phases, one gRPC connection (as KEDA keeps), for {seconds:g} s per "
        "size, against the real `serve` process with default settings (`--refresh-interval 1`). Queries are what "
        "PostgreSQL executed (`pg_stat_statements`, the snapshot query's marker). The baseline is measured in the "
        "same run: the GetMetrics and IsActive calls made, each of which runs one query under KEDA's `postgresql` "
        "trigger.",
        "",
        "| ScaledObjects | calls | errors | snapshot queries/s | one query per call (baseline)/s | ratio | target |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ratio = r.per_call_baseline_per_second / r.queries_per_second if r.queries else float("inf")
        met = "met" if r.queries_per_second <= 1.0 + 1.0 / r.seconds else "**missed**"
        lines.append(
            f"| {r.scaled_objects} | {r.calls} | {r.errors} | {r.queries_per_second:.2f} | "
            f"{r.per_call_baseline_per_second:.1f} | {ratio:.0f}x fewer | <= 1 per refresh interval: {met} |"
        )
    biggest = results[-1]
    latency = [
        "",
        "## 3b. Call latency under a realistic load",
        "",
        f"The same run's largest size: {biggest.scaled_objects} ScaledObjects, "
        f"{biggest.calls / biggest.seconds:.0f} calls/s paced. Latency per call as the client saw it "
        "(client in one Python process, server in another, same 2 cores).",
        "",
        f"- {summary_ms(biggest.latencies)}",
        f"- target p99 < 5 ms: {'met' if percentile(biggest.latencies, 99) < 0.005 else '**missed**'}",
        f"- GetMetricSpec alone (reads no database, no snapshot): {summary_ms(biggest.spec_latencies)}",
    ]
    overall, spec_only = percentile(biggest.latencies, 99), percentile(biggest.spec_latencies, 99)
    if overall >= 0.005:
        cause = (
            "the tail is there even for GetMetricSpec, which touches no database, so it is not the query: the "
            "paced client (2,000 coroutines) and the server share two cores and each waits for the other's turn"
            if spec_only >= 0.8 * overall
            else "the tail is in the calls that read: about one per refresh interval per database waits for the "
            "snapshot query, and the client and server share two cores"
        )
        latency += ["", f"What limits it: {cause}."]
    return "\n".join(lines + latency), biggest
