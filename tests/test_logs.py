"""Log lines: one per decision change and per database state change; JSON on request; never a password."""

from __future__ import annotations

import json
import logging
import sys

import grpc
import pytest

from scaler.commands.logs import JsonFormatter, TextFormatter
from scaler.redaction import redact
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.tcp_proxy import TcpProxy


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("scaler.test", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://airflow:s3cret@db:5432/airflow", "postgresql://airflow:***@db:5432/airflow"),
        ("postgresql+psycopg2://u:p%40ss@h/db?sslmode=require", "postgresql+psycopg2://u:***@h/db?sslmode=require"),
        ("host=db password=s3cret user=airflow", "host=db password=*** user=airflow"),
        ("host=db password='two words' user=a", "host=db password=*** user=a"),
        ("postgresql://airflow@db/airflow", "postgresql://airflow@db/airflow"),  # nothing to hide
        ("demand 3 -> 1 workers", "demand 3 -> 1 workers"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_json_line_carries_the_fields_and_stays_json_when_redacted() -> None:
    line = JsonFormatter().format(
        record("connect to %s failed", "postgresql://a:s3cret@h/db", scaled_object="celery", workers=3, active=True)
    )
    entry = json.loads(line)
    assert entry["message"] == "connect to postgresql://a:***@h/db failed"
    assert entry["scaled_object"] == "celery"
    assert entry["workers"] == 3
    assert entry["active"] is True
    assert entry["level"] == "info"
    assert entry["logger"] == "scaler.test"
    assert "s3cret" not in line


def test_exceptions_are_redacted_in_both_formats() -> None:
    try:
        raise ValueError("bad url postgresql://a:s3cret@h/db")
    except ValueError:
        failed = logging.LogRecord("scaler.test", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(failed)
        assert "ValueError" in line
        assert "s3cret" not in line


async def test_one_line_per_decision_change_not_per_poll(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    metadata = {"database": "airflow", "concurrency": "10"}
    for _ in range(3):
        await scaler.keda.poll(metadata)
    await airflow3_db.add_many(25, "queued")
    for _ in range(3):
        await scaler.keda.poll(metadata)

    decisions = [r for r in caplog.records if r.name == "scaler.service.scaled_objects"]
    assert [r.__dict__["workers"] for r in decisions] == [0, 3]
    last = decisions[-1]
    assert last.__dict__["scaled_object"] == "celery-worker"
    assert last.__dict__["previous_workers"] == 0
    assert last.__dict__["demand"] == 25
    assert last.__dict__["reason"] == (
        "demand 25 (running 0 + queued 25) / concurrency 10 -> 3 workers; active: 25 > activationThreshold 0"
    )
    assert "airflow/celery-worker: 3 workers, active True (was 0 workers, active False)" in last.getMessage()


async def test_one_line_per_database_state_change(
    proxied: tuple[TcpProxy, str], start_scaler: StartScaler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    proxy, url = proxied
    scaler = await start_scaler(airflow=url)
    metadata = {"database": "airflow"}
    await scaler.keda.poll(metadata)
    await proxy.cut()
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scaler.keda.poll(metadata)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await proxy.start()
    for _ in range(3):
        await scaler.keda.poll(metadata)

    states = [r.__dict__["database_state"] for r in caplog.records if "database_state" in r.__dict__]
    assert states == ["reachable", "failing", "recovered"]
    failing = next(r for r in caplog.records if r.__dict__.get("database_state") == "failing")
    assert failing.levelno == logging.WARNING
    assert failing.__dict__["database"] == "airflow"
    assert "connection" in failing.__dict__["reason"]  # refused, or lost mid-connection
