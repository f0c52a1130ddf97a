"""The real `serve` process under hostile load and a restart storm, as a shared scaler meets them.

Both tests talk to `airflow-keda-scaler serve` in its own process over a real socket,
configured through the environment as the Deployment does, on one database (the direct
route: what is measured is the scaler, not the way to the database).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import Database, serve, widest_trigger
from bench.restart_storm import storm
from scaler._proto import externalscaler_pb2 as pb
from tests.conftest import (
    AirflowDatabase,
    free_port,
    replace_login,
)
from tests.support.keda import Keda
from tests.support.scrape import scrape

SECRET = "hostile-secret-5b1e"
# What a hostile call may be answered with: a named refusal, or the database's own failure.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
CALL_DEADLINE = 20.0  # far above what any answer here needs; a call that reaches it is a finding
STREAM_DEADLINE = 5.0
RSS_GROWTH_BOUND = 64 * 1024 * 1024


def hostile_calls(seed: int, count: int, database: AirflowDatabase, closed_port: int) -> Iterator[pb.ScaledObjectRef]:
    """A reproducible mix of ordinary, malformed, oversized and hostile ScaledObject references."""
    rng = random.Random(seed)
    pg = replace_login(database.dsn, password=SECRET)
    alphabet = "abcxyz019-_.,:/@%?=&' \n\t\x00é☃"

    def text(most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, most)))

    def url() -> str:
        return rng.choice(
            [
                f"postgresql://airflow:{SECRET}@127.0.0.1:{closed_port}/airflow",
                pg.replace(f"/{database.name}", f"/missing_{rng.randint(0, 50)}"),
                f"postgresql+psycopg2://u:{SECRET}@evil.example:5432/airflow",
                f"postgresql://u:{SECRET}@10.1.2.3:5432/airflow",
                f"postgresql://u:{SECRET}@127.0.0.1:{closed_port}/airflow?sslrootcert=/etc/passwd",
                f"postgresql://u:{SECRET}@%2Ftmp%2Fx/airflow",
                f"postgresql://u:{SECRET}@127.0.0.1/airflow?sslmode=bogus",
                f"postgresql://u:{SECRET}@127.0.0.1/airflow?target_session_attrs=" + text(30),
                f"mysql://root:{SECRET}@127.0.0.1:{closed_port}/airflow?ssl_ca=/etc/shadow",
                f"postgresql://u:{SECRET}@127.0.0.1:{closed_port}/" + "d" * rng.choice([100, 4000, 100_000]),
                f"postgresql://u:{SECRET}@" + ",".join(f"127.0.0.{i}:{closed_port}" for i in range(1, 40)) + "/a",
                f"redis://:{SECRET}@127.0.0.1:6379/0",
                f"postgresql://u:{SECRET}@[::1]:{closed_port}/airflow",
                text(200),
            ]
        )

    for _ in range(count):
        metadata: dict[str, str] = {"scalerAddress": "scaler.keda:6000"}
        kind = rng.random()
        if kind < 0.25:  # ordinary
            metadata |= {"database": "airflow", "queues": rng.choice(["default", "ml", "default,ml"])}
        elif kind < 0.55:
            metadata["connectionFromEnv"] = url()
        elif kind < 0.7:  # oversized
            metadata |= {
                "database": "airflow",
                rng.choice(["queues", "x", "concurrency"]): "q" * rng.randint(4097, 300_000),
            }
        else:  # garbage everywhere
            for _ in range(rng.randint(0, 6)):
                metadata[
                    rng.choice(
                        [
                            "database",
                            "queues",
                            "concurrency",
                            "activationThreshold",
                            "excludeExecutors",
                            "scaleDownProtection",
                            "scaleTargetKind",
                            text(10),
                        ]
                    )
                ] = text(60)
            if rng.random() < 0.3:
                metadata["concurrency"] = rng.choice(["1" + "0" * 330, "-5", "0", "nan", "1e400", "9" * 5000])
        name, namespace = f"so-{rng.randint(0, 400)}", rng.choice(["airflow", "team-a"])
        if rng.random() < 0.15:  # not a Kubernetes name
            name = rng.choice(["x" * 300, "Bad_Name", text(20)])
        if rng.random() < 0.05:
            namespace = rng.choice(["", "Upper", "n" * 254])
        yield pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=metadata)


async def test_thousands_of_hostile_calls_are_answered_in_bounded_time_and_memory(
    direct_db: AirflowDatabase, tmp_path: Path
) -> None:
    closed_port = free_port()
    await direct_db.add_many(5, "queued", queue="default")
    log = tmp_path / "serve.log"
    codes: Counter[str] = Counter()
    details: list[str] = []

    async def call(keda: Keda, ref: pb.ScaledObjectRef, index: int) -> None:
        try:
            if index % 3 == 0:
                await keda.stub.GetMetricSpec(ref, timeout=CALL_DEADLINE)
            elif index % 3 == 1:
                request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="airflow-celery-workers")
                await keda.stub.GetMetrics(request, timeout=CALL_DEADLINE)
            elif index % 50 == 2:
                # A stream on a failing database stays open and silent (a `false` it does not
                # know to be true would be worse), so its read may run into this deadline.
                stream = keda.stub.StreamIsActive(ref, timeout=STREAM_DEADLINE)
                await stream.read()
                stream.cancel()
            else:
                await keda.stub.IsActive(ref, timeout=CALL_DEADLINE)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            details.append(error.details() or "")
            silent = index % 50 == 2 and "connectionFromEnv" in ref.scalerMetadata
            codes[
                "silent stream" if silent and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED else error.code().name
            ] += 1

    async with (
        serve(
            {"airflow": direct_db.dsn},
            log=log,
            log_level="debug",
            allowed_hosts="127.0.0.0/8,::1/128,localhost",
            connect_timeout="3",
            query_timeout="3",
            max_scaled_objects="300",
            max_databases="40",
        ) as scaler,
        grpc.aio.insecure_channel(scaler.address) as channel,
    ):
        keda, health = Keda(channel), health_pb2_grpc.HealthStub(channel)

        async def serving() -> None:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_DEADLINE)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        refs = list(hostile_calls(13, 3000, direct_db, closed_port))
        # 25 at a time; between batches the health service must answer SERVING.
        for start in range(0, len(refs), 25):
            if start == 500:
                baseline = scaler.rss_bytes()  # after a warm-up: pools, caches and series exist
            await asyncio.gather(
                serving(), *(call(keda, ref, start + i) for i, ref in enumerate(refs[start : start + 25]))
            )
        grown = scaler.rss_bytes() - baseline
    assert scaler.process.returncode == 0
    assert sum(codes.values()) == 3000
    assert set(codes) <= {code.name for code in EXPECTED} | {"silent stream"}, codes
    # The mix reached every part: answers, refusals at the edge, and policy refusals.
    assert codes["OK"] > 300, codes
    assert codes["INVALID_ARGUMENT"] > 300, codes
    assert codes["PERMISSION_DENIED"] > 50, codes
    assert grown < RSS_GROWTH_BOUND, f"RSS grew {grown / 2**20:.0f} MiB over 2,500 hostile calls"
    assert not [text for text in details if SECRET in text]
    assert not [text for text in details if len(text) > 512]
    output = log.read_text(errors="replace")
    assert SECRET not in output
    assert "Traceback" not in output


async def test_a_restart_storm_of_5000_streams_opens_every_one_and_tells_every_one(direct_db: AirflowDatabase) -> None:
    # After a scaler restart KEDA reopens every StreamIsActive at once; with gRPC's default
    # pending-call limits 207 of 2,000 (and 2,200 of 5,000) were CANCELLED before reaching the handler.
    async with serve({"airflow": direct_db.dsn}, watch_interval="0.2") as scaler:
        database = Database(admin_dsn=direct_db.direct_dsn, dsn=direct_db.direct_dsn, name=direct_db.name)
        result = await storm(scaler.address, database, 5000)
    assert scaler.process.returncode == 0
    assert result.failed == {}
    assert result.opened == 5000
    assert result.notified == 5000


def amplifier(index: int) -> dict[str, str]:
    """The landed scaler's worst (e305667): three 4,000-byte lists of short names, some 2,400 names in all."""
    short = ",".join(f"{index}.{n}" for n in range(800))[:4000].rsplit(",", 1)[0]
    return {"database": "airflow", "queues": short, "excludeQueues": short, "excludeExecutors": short}


async def test_thousands_of_scaled_objects_with_the_widest_metadata_stay_within_a_small_bound(
    direct_db: AirflowDatabase,
) -> None:
    # e305667 kept a frozenset of every name for as long as the ScaledObject was known: 3,000 such
    # ScaledObjects took `serve` from 57 MiB to 552 MiB. Now names are 8-byte digests, at most 64 a trigger.
    count = 2000
    async with (
        serve({"airflow": direct_db.dsn}, memory_limit="off") as scaler,
        grpc.aio.insecure_channel(scaler.address) as channel,
    ):
        keda = Keda(channel)
        await keda.stub.IsActive(Keda.ref({"database": "airflow"}, name="warm-up"), timeout=CALL_DEADLINE)
        baseline = scaler.rss_bytes()
        codes: Counter[str] = Counter()
        for start in range(0, count, 100):

            async def call(index: int) -> None:
                metadata = widest_trigger(index) if index % 2 else amplifier(index)
                ref = pb.ScaledObjectRef(name=f"so-{index}", namespace=f"team-{index % 4}", scalerMetadata=metadata)
                try:
                    await keda.stub.IsActive(ref, timeout=CALL_DEADLINE)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1

            await asyncio.gather(*(call(index) for index in range(start, start + 100)))
        grown = scaler.rss_bytes() - baseline
    # The widest accepted triggers are known; the amplifier lists more names than a trigger may.
    assert codes == {"OK": count // 2, "INVALID_ARGUMENT": count // 2}, codes
    # 1,000 known ScaledObjects at 8 KiB each, and the parse cache's 4 MiB: far below e305667's 165 KiB each.
    bound = 1000 * 8 * 1024 + 4 * 1024 * 1024 + 8 * 1024 * 1024
    assert grown < bound, f"RSS grew {grown / 2**20:.1f} MiB for 1,000 ScaledObjects"


async def test_a_storm_of_wide_streams_under_a_memory_limit_never_passes_it_and_refuses_the_surplus_cleanly(
    direct_db: AirflowDatabase,
) -> None:
    limit = 160 * 1024 * 1024
    async with serve({"airflow": direct_db.dsn}, memory_limit=str(limit), watch_interval="0.2") as scaler:
        database = Database(admin_dsn=direct_db.direct_dsn, dsn=direct_db.direct_dsn, name=direct_db.name)
        result = await storm(scaler.address, database, 2000, metadata=widest_trigger, namespaces=4)
        peak = scaler.peak_rss_bytes()
        scraped = await scrape(scaler.metrics_port)
    assert scaler.process.returncode == 0
    # Every stream was answered or refused by the budget, none cancelled or failed otherwise.
    assert set(result.failed) <= {"RESOURCE_EXHAUSTED"}, result.failed
    assert result.opened + result.failed.get("RESOURCE_EXHAUSTED", 0) == 2000
    assert 100 < result.opened < 2000, result
    # The budget's charges, or its guard on resident memory (a storm's requests in flight take memory too).
    assert "--memory-limit 160 MiB" in result.messages["RESOURCE_EXHAUSTED"]
    assert "those admitted keep their answers" in result.messages["RESOURCE_EXHAUSTED"]
    # Those admitted keep their answers: every one was told of the new demand.
    assert result.notified == result.opened
    assert peak < limit, f"peak RSS {peak / 2**20:.0f} MiB ({result.opened} admitted)"
    used = scraped.value("airflow_keda_scaler_memory_budget_used_bytes")
    budget = scraped.value("airflow_keda_scaler_memory_budget_bytes")
    assert used is not None
    assert budget is not None
    assert 0 < used <= budget
    assert scraped.value("airflow_keda_scaler_memory_limit_bytes") == limit
