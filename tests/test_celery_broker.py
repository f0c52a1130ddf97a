"""The Celery-broker adapter against a real Redis and a real RabbitMQ, and real `celery worker` processes.

What drain relies on: a worker told cancel_consumer stops taking the queue's new
tasks (the others take them) while it finishes what it runs; add_consumer brings
it back; inspect active_queues shows both; and a broker that is down, refuses the
password or has no such worker is a short error naming the broker's label, never
its password, within the command's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from scaler.adapters.celery_broker.control import BrokerUnavailable, CeleryControl
from scaler.rules.broker_urls import parse_broker_url
from tests.conftest import free_port, until
from tests.support.celery_workers import CeleryWorkers, until_consumers
from tests.support.servers import RabbitMQ, Redis, ServerUnavailable

PASSWORD = "broker-secret-5d1e"


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Redis | RabbitMQ]:
    """The two brokers the official Airflow chart offers, each with a password."""
    try:
        server: Redis | RabbitMQ = Redis(password=PASSWORD) if request.param == "redis" else RabbitMQ(password=PASSWORD)
    except ServerUnavailable as error:
        pytest.skip(str(error))
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def control(broker: Redis | RabbitMQ) -> AsyncIterator[CeleryControl]:
    control = CeleryControl(parse_broker_url(broker.url), timeout=1.0)
    yield control
    await control.close()


async def test_a_cancelled_worker_takes_no_new_tasks_and_add_consumer_brings_it_back(
    broker: Redis | RabbitMQ, control: CeleryControl
) -> None:
    with CeleryWorkers(broker.url, ["w1", "w2"]) as workers:
        w1, w2 = workers.nodename("w1"), workers.nodename("w2")
        default = frozenset({"default"})
        await until_consumers(control, {w1: default, w2: default})

        # A worker runs a task while it is told to stop consuming: it finishes that task.
        await asyncio.to_thread(workers.send, "long", 2.0)
        await until(lambda: "long" in workers.running())
        drained = workers.running()["long"]
        other = w2 if drained == w1 else w1
        await control.cancel_consumer(drained, "default")
        # Celery answers "ok" and then makes the change: the next tasks are sent once the worker shows it.
        await until_consumers(control, {drained: frozenset(), other: default})

        for n in range(6):
            await asyncio.to_thread(workers.send, f"after-cancel-{n}")
        await until(lambda: len(workers.ran()) == 7)
        ran = workers.ran()
        assert ran["long"] == drained  # finished where it ran
        assert {ran[f"after-cancel-{n}"] for n in range(6)} == {other}

        await control.add_consumer(drained, "default")
        await until_consumers(control, {w1: default, w2: default})
        # It takes work again: with the other worker's two slots held by long tasks, the next one goes to it.
        await control.cancel_consumer(drained, "default")
        await until_consumers(control, {drained: frozenset(), other: default})
        for n in range(2):
            await asyncio.to_thread(workers.send, f"hold-{n}", 5.0)
        await until(lambda: {"hold-0", "hold-1"} <= set(workers.running()))
        await control.add_consumer(drained, "default")
        await asyncio.to_thread(workers.send, "after-add")
        await until(lambda: "after-add" in workers.ran())
        assert workers.ran()["after-add"] == drained


async def test_a_worker_that_does_not_answer_is_an_error_naming_it(control: CeleryControl) -> None:
    with pytest.raises(BrokerUnavailable, match=r"cancel_consumer: no reply from celery@nobody"):
        await control.cancel_consumer("celery@nobody", "default")
    assert await control.consumers(["celery@nobody"]) == {}


@pytest.mark.parametrize("problem", ["wrong password", "nothing listening"])
async def test_a_broker_that_cannot_be_used_is_a_short_error_without_the_password(
    broker: Redis | RabbitMQ, problem: str
) -> None:
    url = broker.url.replace(PASSWORD, "wrong-" + PASSWORD)
    if problem == "nothing listening":
        url = url.replace(f":{broker.port}/", f":{free_port()}/")
    control = CeleryControl(parse_broker_url(url), timeout=1.0)
    try:
        # Bounded by the command's timeouts, not the driver's retries: a hang fails here.
        with pytest.raises(BrokerUnavailable) as raised:
            async with asyncio.timeout(30):
                await control.consumers()
    finally:
        await control.close()
    message = str(raised.value)
    assert message.startswith(f"Celery broker {url.split(':')[0]}://127.0.0.1:")
    assert PASSWORD not in message
    assert len(message) < 300
