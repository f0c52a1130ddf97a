"""Scrape the scaler's HTTP port as Prometheus and the kubelet do."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scaler.rules.database_urls import parse_url
from scaler.rules.trigger_metadata import NamedDatabase
from tests.conftest import AirflowDatabase, Running, closed_port_dsn

PROMTOOL = shutil.which("promtool")


@dataclass(frozen=True)
class Scrape:
    text: str

    def samples(self, name: str, **labels: str) -> list[float]:
        """Values of the samples named `name` whose labels include `labels`."""
        return [
            sample.value
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample with exactly these labels, or None when there is none."""
        found = [
            sample.value
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        ]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def labels_by_sample(self) -> dict[str, set[str]]:
        """Every sample name with the label names it carries."""
        found: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)
        return found

    def family_names(self) -> set[str]:
        return {family.name for family in text_string_to_metric_families(self.text)}


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def scrape(port: int) -> Scrape:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return Scrape(text)


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says of an exposition; '' when it accepts it."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    return "" if result.returncode == 0 else (result.stdout + result.stderr)


async def scrape_with_every_series(scaler: Running, database: AirflowDatabase) -> Scrape:
    """Scrape after exercising every instrument once: a decision, a failed read, a pushed stream."""
    await database.add_many(3, "queued", queue="default")
    await scaler.keda.poll({"database": "airflow"})
    # Pre-warm: a trigger that pre-warms (its series), a schedule read, and a failed one.
    await scaler.keda.poll({"database": "airflow", "prewarm": "true"}, name="prewarming")
    await scaler.server.databases.prewarm_for(NamedDatabase("airflow")).settled()
    with pytest.raises(grpc.aio.AioRpcError):
        await scaler.keda.poll({"connectionFromEnv": closed_port_dsn(database)})
    await scaler.server.databases.prewarm_for(parse_url(closed_port_dsn(database))).refresh()
    stream = scaler.keda.stream({"database": "airflow"})
    try:
        await stream.next()
        return await scrape(scaler.server.http.port)
    finally:
        stream.cancel()
