"""Benchmark 5c: the memory budget. What one ScaledObject costs at the widest metadata the limits accept, a storm of
wide streams under the base manifests' memory limit, and the sizing table (ScaledObjects with a stream -> memory).

Every figure is the real `serve` process's, read from /proc: VmRSS (now) and VmHWM (the peak since it started).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from bench.common import Database, serve, widest_trigger
from bench.restart_storm import StormResult, storm
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.rules.memory_budget import COSTS, HEADROOM, parse_bytes

MIB = 1024 * 1024
PER_SCALED_OBJECT_TARGET = 8 * 1024
DEPLOYMENT = Path(__file__).resolve().parent.parent / "manifests" / "base" / "scaler" / "deployment.yaml"
ORDINARY = {"database": "airflow", "queues": "default", "scalerAddress": "airflow-keda-scaler.keda:6000"}


def manifest_memory() -> tuple[int, int]:
    """The base Deployment's memory request and limit, in bytes."""
    resources = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"][0]["resources"]
    return parse_bytes(resources["requests"]["memory"]), parse_bytes(resources["limits"]["memory"])


async def per_scaled_object(database: Database, count: int) -> tuple[float, int]:
    """Resident bytes per known ScaledObject, each with its own widest trigger; and the idle RSS."""
    async with (
        serve({"airflow": database.dsn}, memory_limit="off") as scaler,
        grpc.aio.insecure_channel(scaler.address) as channel,
    ):
        stub = pb_grpc.ExternalScalerStub(channel)
        await stub.IsActive(pb.ScaledObjectRef(name="warm-up", namespace="a", scalerMetadata=ORDINARY), timeout=10)
        idle = scaler.rss_bytes()
        namespaces = max(1, count // 500)
        for start in range(0, count, 100):
            await asyncio.gather(
                *(
                    stub.IsActive(
                        pb.ScaledObjectRef(
                            name=f"so-{i}", namespace=f"team-{i % namespaces}", scalerMetadata=widest_trigger(i)
                        ),
                        timeout=20,
                    )
                    for i in range(start, min(count, start + 100))
                )
            )
        return (scaler.rss_bytes() - idle) / count, idle


@dataclass(frozen=True)
class WideStorm:
    result: StormResult
    peak: int
    limit: int


async def wide_storm(database: Database, streams: int, limit: int) -> WideStorm:
    """`streams` streams with the widest metadata at once, under --memory-limit `limit`."""
    async with serve({"airflow": database.dsn}, memory_limit=str(limit), watch_interval="0.2") as scaler:
        result = await storm(
            scaler.address, database, streams, metadata=widest_trigger, namespaces=max(1, streams // 500)
        )
        return WideStorm(result, scaler.peak_rss_bytes(), limit)


async def sized(database: Database, scaled_objects: int) -> tuple[int, int, int]:
    """(idle RSS, RSS with `scaled_objects` ordinary ScaledObjects each with a stream open, peak RSS), no limit."""
    async with serve({"airflow": database.dsn}, memory_limit="off") as scaler:
        idle = scaler.rss_bytes()
        result = await storm(
            scaler.address,
            database,
            scaled_objects,
            rss=scaler.rss_bytes,
            metadata=lambda index: ORDINARY,
            namespaces=max(1, scaled_objects // 500),
        )
        if result.failed:
            raise RuntimeError(f"streams refused with no memory limit: {result.failed}")
        return idle, result.loaded_bytes, scaler.peak_rss_bytes()


def limit_for(scaled_objects: int, idle: int) -> int:
    """The memory limit whose budget admits `scaled_objects` ordinary ScaledObjects with a stream each, in
    whole 64 MiB."""
    request_bytes = pb.ScaledObjectRef(name="workers-00000", namespace="team-00", scalerMetadata=ORDINARY).ByteSize()
    charged = scaled_objects * (COSTS.scaled_object + COSTS.stream + COSTS.stream_per_request_byte * request_bytes)
    needed = (charged + idle) / (1 - HEADROOM)
    return math.ceil(needed / (64 * MIB)) * 64 * MIB


async def run(database: Database, *, wide: int, storm_streams: int, sizes: list[int]) -> tuple[str, int]:
    request, limit = manifest_memory()
    per_object, idle = await per_scaled_object(database, wide)
    print(f"  widest trigger: {per_object / 1024:.1f} KiB per known ScaledObject ({wide})", flush=True)
    storm_run = await wide_storm(database, storm_streams, limit)
    refused = storm_run.result.failed.get("RESOURCE_EXHAUSTED", 0)
    others = {code: n for code, n in storm_run.result.failed.items() if code != "RESOURCE_EXHAUSTED"}
    print(
        f"  wide storm under {limit // MIB} MiB: {storm_run.result.opened} admitted, {refused} refused, "
        f"other {others or 'none'}, peak {storm_run.peak / MIB:.0f} MiB",
        flush=True,
    )
    rows = []
    for size in sizes:
        idle_now, loaded, peak = await sized(database, size)
        rows.append((size, loaded, peak, limit_for(size, idle_now)))
        print(f"  {size} ScaledObjects with a stream: {loaded / MIB:.0f} MiB (peak {peak / MIB:.0f})", flush=True)
    base_admits = max(size for size, *_ in rows if limit_for(size, idle) <= limit) if rows else 0

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    result = storm_run.result
    answered = result.opened + refused == storm_streams and not others
    lines = [
        "## 5c. Memory budget",
        "",
        f"The base Deployment (`manifests/base`) asks for {request // MIB} MiB and is limited to {limit // MIB} MiB. "
        "The scaler charges what each stream, ScaledObject and database can hold at most "
        f"(a stream {COSTS.stream // 1024} KiB plus {COSTS.stream_per_request_byte} bytes per byte of its request, "
        f"a ScaledObject {COSTS.scaled_object // 1024} KiB, a database {COSTS.database // MIB} MiB: "
        "`scaler/rules/memory_budget.py`) against the limit less a fifth and what it held at start, and refuses the "
        "next one past it (RESOURCE_EXHAUSTED).",
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| resident memory per known ScaledObject, {wide:,} of them, each with its own widest trigger "
        f"({COSTS.scaled_object // 1024} KiB charged) | {per_object / 1024:.1f} KiB | "
        f"<= {PER_SCALED_OBJECT_TARGET // 1024} KiB: {met(per_object <= PER_SCALED_OBJECT_TARGET)} |",
        f"| {storm_streams:,} streams with the widest metadata at once, `--memory-limit {limit // MIB}Mi`: admitted "
        f"| {result.opened:,} | |",
        f"| ... refused RESOURCE_EXHAUSTED (the budget) | {refused:,} | every stream answered or refused: "
        f"{met(answered)} |",
        f"| ... cancelled or failed otherwise | {sum(others.values()):,} | none |",
        f"| ... admitted streams told of new demand | {result.notified:,} | all admitted: "
        f"{met(result.notified == result.opened)} |",
        f"| ... peak resident memory (VmHWM) | {storm_run.peak / MIB:.1f} MiB | < {limit // MIB} MiB: "
        f"{met(storm_run.peak < limit)} |",
        "",
        "The widest trigger: 63 queue names of about 60 characters (within `--max-trigger-names` 64) and other keys "
        "filling the map to `--max-metadata-bytes` (16 KiB); each ScaledObject's names differ, so no spec is "
        "shared. The per-ScaledObject figure includes the parse cache filling to its 4 MiB.",
        "",
        "### Sizing: ScaledObjects, each with a `StreamIsActive` stream, and the memory limit to set",
        "",
        "Ordinary metadata (`database`, `queues`, KEDA's `scalerAddress`), no memory limit while measuring. "
        "The limit to set is the one whose budget admits them all (charges, not measurements, decide admission, "
        "so the limit is above what they use).",
        "",
        "| ScaledObjects with a stream | resident memory | peak | memory limit to set |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {size:,} | {loaded / MIB:.0f} MiB | {peak / MIB:.0f} MiB | {needed // MIB} Mi |"
            for size, loaded, peak, needed in rows
        ),
        "",
        f"The base limit ({limit // MIB} Mi) admits the {base_admits:,} row.",
    ]
    return "\n".join(lines), storm_run.peak
