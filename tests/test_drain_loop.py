"""Drain end to end on one machine: the production server, a Kubernetes API server's endpoints (the fake one the
deletion-cost tests use), a real Airflow database, a real Redis with a password and real `celery worker` processes
named after the pods, as Airflow's workers are (celery@<pod hostname>).

Each test runs drain rounds itself (drain_once) and looks at what the workers consume, as `celery inspect
active_queues` shows it, and at which worker runs the queue's new tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from scaler.adapters.celery_broker.control import CeleryControl
from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.rules.broker_urls import parse_broker_url
from scaler.rules.database_urls import parse_url
from scaler.service.drain_loop import DrainLoop, DrainSettings
from tests.conftest import AirflowDatabase, Running, StartScaler, fast_settings, until
from tests.support.celery_workers import CeleryWorkers, until_consumers
from tests.support.fake_kubernetes import FakeKubernetes, kubeconfig
from tests.support.keda import Keda
from tests.support.scrape import scrape
from tests.support.serve import start_serve
from tests.support.servers import Redis, ServerUnavailable

NS = "airflow"
STS = "airflow-worker"
PODS = [f"{STS}-{n}" for n in range(3)]
NODES = [f"celery@{pod}" for pod in PODS]
PASSWORD = "drain-broker-secret-8e2f"
DEFAULT = frozenset({"default"})
# Concurrency 2, so that a few tasks make a difference; the workers run 2 at a time too.
METADATA = {"database": "airflow", "concurrency": "2", "drain": "true"}


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    try:
        server = Redis(password=PASSWORD)
    except ServerUnavailable as error:
        pytest.skip(str(error))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKubernetes]:
    fake = await FakeKubernetes().start()
    fake.add_scaled_object(NS, STS, STS, kind="StatefulSet")
    fake.add_workload("StatefulSet", NS, STS, {"component": "worker"})
    for name in PODS:
        fake.add_pod(NS, name, {"component": "worker"}, owner=("StatefulSet", STS))
    yield fake
    await fake.stop()


@pytest.fixture
def workers(redis: Redis) -> Iterator[CeleryWorkers]:
    with CeleryWorkers(redis.url, PODS) as started:
        yield started


@pytest.fixture
async def control(redis: Redis, workers: CeleryWorkers) -> AsyncIterator[CeleryControl]:
    control = CeleryControl(parse_broker_url(redis.url), timeout=1.0)
    await until_consumers(control, dict.fromkeys(NODES, DEFAULT))
    yield control
    await control.close()


@pytest.fixture
async def scaler(
    cluster: FakeKubernetes,
    redis: Redis,
    airflow3_db: AirflowDatabase,
    start_scaler: StartScaler,
    tmp_path: Path,
) -> Running:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, "token"))
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    # An hour between rounds: each test runs its rounds itself.
    return await start_scaler(
        dataclasses.replace(
            settings,
            kubernetes=KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600),
            drain=DrainSettings(
                brokers={"airflow": parse_broker_url(redis.url)}, interval=3600, timeout=1.0, lease="off"
            ),
        )
    )


def loop(scaler: Running) -> DrainLoop:
    assert scaler.server.drain is not None
    return scaler.server.drain


async def round_after_poll(scaler: Running, metadata: dict[str, str] = METADATA) -> int:
    workers = (await scaler.keda.poll(metadata, name=STS)).value_int
    await loop(scaler).drain_once()
    return workers


async def test_surplus_top_ordinals_are_drained_and_restored_when_demand_returns(
    scaler: Running,
    control: CeleryControl,
    workers: CeleryWorkers,
    airflow3_db: AirflowDatabase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    # Idle: the lowest ordinal is kept consuming (a free slot), the top two are drained.
    await round_after_poll(scaler)
    await until_consumers(control, {NODES[0]: DEFAULT, NODES[1]: frozenset(), NODES[2]: frozenset()})
    # The queue's new tasks go to the one left consuming.
    for n in range(4):
        await workers.send_async(f"idle-{n}")
    await until(lambda: len(workers.ran()) == 4)
    assert set(workers.ran().values()) == {NODES[0]}

    # Demand: 3 queued need two workers' slots with one to spare (concurrency 2): the next ordinal is restored.
    await airflow3_db.add_many(3, "queued")
    await round_after_poll(scaler)
    await until_consumers(control, {NODES[0]: DEFAULT, NODES[1]: DEFAULT, NODES[2]: frozenset()})

    # A round with nothing new sends nothing.
    metrics = await scrape(scaler.server.http.port)
    sent = {
        command: metrics.value(
            "airflow_keda_scaler_drain_commands_total", namespace=NS, scaled_object=STS, command=command
        )
        for command in ("cancel_consumer", "add_consumer")
    }
    assert sent == {"cancel_consumer": 2, "add_consumer": 1}
    await round_after_poll(scaler)
    again = await scrape(scaler.server.http.port)
    assert (
        again.value(
            "airflow_keda_scaler_drain_commands_total", namespace=NS, scaled_object=STS, command="cancel_consumer"
        )
        == 2
    )
    assert again.value("airflow_keda_scaler_drained_workers", namespace=NS, scaled_object=STS) == 1
    assert again.value("airflow_keda_scaler_drain_restorations_total", namespace=NS, scaled_object=STS) in (None, 0)

    # The decision log says who is drained and why, when it changes; the broker's password is nowhere.
    said = [r.getMessage() for r in caplog.records if r.name == "scaler.service.drain_loop"]
    assert said[0].startswith(f"scaled object {NS}/{STS}: drain 2 of 3 workers ({PODS[2]}, {PODS[1]})")
    assert said[1].startswith(f"scaled object {NS}/{STS}: drain 1 of 3 workers ({PODS[2]})")
    assert len(said) == 2
    assert PASSWORD not in caplog.text
    assert PASSWORD not in (await scrape(scaler.server.http.port)).text


async def test_a_busy_top_ordinal_is_drained_while_it_finishes_and_drain_off_restores_every_worker(
    scaler: Running, control: CeleryControl, workers: CeleryWorkers, airflow3_db: AirflowDatabase
) -> None:
    # The top ordinal runs a task: the floor keeps all three, and drain stops it taking more so it can empty.
    await airflow3_db.add(TaskInstance("long", "running", hostname=PODS[2]))
    await round_after_poll(scaler)  # drain reads the target's kind: a StatefulSet
    assert await round_after_poll(scaler) == 3
    await until_consumers(control, {NODES[0]: DEFAULT, NODES[1]: frozenset(), NODES[2]: frozenset()})

    # Drain turned off: every worker consumes its queues again, at the next round.
    off = {**METADATA, "drain": "false"}
    await round_after_poll(scaler, off)
    await until_consumers(control, dict.fromkeys(NODES, DEFAULT))
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value("airflow_keda_scaler_drained_workers", namespace=NS, scaled_object=STS) is None


async def test_the_workers_minreplicacount_keeps_are_never_drained(
    scaler: Running, cluster: FakeKubernetes, control: CeleryControl
) -> None:
    """minReplicaCount 2: the StatefulSet keeps two pods whatever happens, so drain keeps both consuming (draining
    the second would save nothing and leave it drained for good); only the top one is drained."""
    cluster.add_scaled_object(NS, STS, STS, kind="StatefulSet", min_replicas=2)
    await round_after_poll(scaler)
    await until_consumers(control, {NODES[0]: DEFAULT, NODES[1]: DEFAULT, NODES[2]: frozenset()})


async def test_a_scaler_restores_every_worker_it_did_not_drain_and_does_not_mean_to(
    scaler: Running, control: CeleryControl, airflow3_db: AirflowDatabase
) -> None:
    # A scaler left every worker drained (it was killed between its commands, say).
    for node in NODES:
        await control.cancel_consumer(node, "default")
    await airflow3_db.add_many(5, "queued")  # 5 queued: three workers' slots needed

    # The next one, at its first round, gives them back: none of them is surplus.
    await round_after_poll(scaler)
    await until_consumers(control, dict.fromkeys(NODES, DEFAULT))
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value("airflow_keda_scaler_drain_restorations_total", namespace=NS, scaled_object=STS) == 3


async def test_without_a_broker_for_its_database_drain_says_so_once(
    scaler: Running, control: CeleryControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    # The ScaledObject names a database the scaler knows but no broker serves.
    loop(scaler).brokers = {}
    for _ in range(2):
        await round_after_poll(scaler)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"scaled object {NS}/{STS}: drain cannot act (no_broker): no broker is configured for its database "
        "(--broker NAME=URL); workers are left as they are until it can"
    ]
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value("airflow_keda_scaler_drain_skipped", namespace=NS, scaled_object=STS, reason="no_broker") == 1
    await until_consumers(control, dict.fromkeys(NODES, DEFAULT))


async def poll(address: str, metadata: dict[str, str] = METADATA) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        return (await Keda(channel).poll(metadata, name=STS)).value_int


async def test_a_scaler_killed_mid_drain_is_followed_by_one_that_restores_every_consumer(
    cluster: FakeKubernetes,
    redis: Redis,
    airflow3_db: AirflowDatabase,
    workers: CeleryWorkers,
    control: CeleryControl,
    tmp_path: Path,
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, "token"))
    env = {
        "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": "127.0.0.1:0",
        "AIRFLOW_KEDA_SCALER_DATABASE": f"airflow={airflow3_db.dsn}",
        "AIRFLOW_KEDA_SCALER_BROKER": f"airflow={redis.url}",
        "AIRFLOW_KEDA_SCALER_KUBERNETES": "kubeconfig",
        "AIRFLOW_KEDA_SCALER_KUBECONFIG": str(config),
        "AIRFLOW_KEDA_SCALER_DRAIN_INTERVAL": "0.2",
        "AIRFLOW_KEDA_SCALER_BROKER_TIMEOUT": "1",
        "AIRFLOW_KEDA_SCALER_LOG_LEVEL": "info",
    }
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first, address = await start_serve(env, first_log)
    try:
        await poll(address)
        await until_consumers(control, {NODES[0]: DEFAULT, NODES[1]: frozenset(), NODES[2]: frozenset()})
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # Demand comes while no scaler runs: five queued need three workers' slots (concurrency 2).
    await airflow3_db.add_many(5, "queued")
    second, address = await start_serve(env, second_log)
    try:
        await poll(address)
        await until_consumers(control, dict.fromkeys(NODES, DEFAULT))
    finally:
        second.terminate()
        second.wait()
    said = second_log.read_text()
    # The first one still held drain's Lease when it was killed: the second took it once it expired.
    assert "leads: this replica drains" in said
    for node in NODES[1:]:
        assert f"worker {node} had no consumer for queue default; restored" in said
    for log in (first_log, second_log):
        assert PASSWORD not in log.read_text()
        assert "Traceback" not in log.read_text()


async def test_one_scaled_object_sends_at_most_a_rounds_worth_of_commands(
    scaler: Running, redis: Redis, airflow3_db: AirflowDatabase
) -> None:
    # Workers that consume 40 queues, all of them the trigger's: draining two of them is 80 commands.
    queues = [f"q{n:02d}" for n in range(40)]
    metadata = {**METADATA, "queues": ",".join(queues)}
    with CeleryWorkers(redis.url, PODS, queues=",".join(queues)):
        control = CeleryControl(parse_broker_url(redis.url), timeout=1.0)
        try:
            await until_consumers(control, dict.fromkeys(NODES, frozenset(queues)))
            sent = []
            for _ in range(3):
                await round_after_poll(scaler, metadata)
                metrics = await scrape(scaler.server.http.port)
                sent.append(
                    metrics.value(
                        "airflow_keda_scaler_drain_commands_total",
                        namespace=NS,
                        scaled_object=STS,
                        command="cancel_consumer",
                    )
                )
            # 32 a round (MAX_COMMANDS_PER_ROUND), the rest in the next ones; then nothing is left to send.
            assert sent == [32, 64, 80]
            await until_consumers(control, {NODES[0]: frozenset(queues), NODES[1]: frozenset(), NODES[2]: frozenset()})
        finally:
            await control.close()
