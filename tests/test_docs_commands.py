"""Every shell command the README and docs/ show is run by a test; these run the ones that need no cluster.

The commands run as written, but for the database's address and password (and a port, for the gRPC
example); the cluster's are run by tests/cluster/test_switching_guide.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scaler.fixtures.airflow_schema import TaskInstance
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.docs import (
    BIN,
    GUIDE,
    PAGES,
    ROOT,
    SHELL,
    Block,
    blocks,
    guide_reader,
    replace_url,
    run_shown,
    tagged,
)
from tests.support.helm import tools
from tests.test_prewarm import add_postgres_dags

KNOWN = {"make", "cluster", "manifests", "helm", "replay", "check", "in-pod", "grants", "grpcurl", "values"}


def run(command: str, *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_shown(command, cwd=cwd, env=env)


def test_every_shell_block_is_run_by_a_test() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.language in SHELL:
                assert block.tag in KNOWN, f"{page.name}: a shell block no test runs:\n{block.text}"
            if block.tag:
                assert block.tag in KNOWN, f"{page.name}: unknown tag {block.tag}"


def test_make_blocks_name_targets_the_makefile_has_and_ci_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    shown = tagged("make")
    assert shown
    for block in shown:
        for command in block.commands():
            words = shlex.split(command.split("#")[0])
            assert words[0] == "make", command
            target = words[1]
            assert re.search(rf"(?m)^{re.escape(target)}:", makefile), f"{block.page.name}: no target {target}"
            # test, e2e and cluster-e2e are what CI runs; the demo is run by tests/test_demo.py.
            assert f"make {target}" in ci or target == "demo", command


async def test_the_guides_grants_let_check_and_replay_read_all_three_tables(airflow_db: AirflowDatabase) -> None:
    await add_postgres_dags(airflow_db)
    async with guide_reader(airflow_db) as url:
        checked = run(f"{BIN}/airflow-keda-scaler check", env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
        assert checked.returncode == 0, checked.stderr
        assert "reachable" in checked.stdout
        assert "pre-warm: scheduled runs due" in checked.stdout  # dag and dag_run were read
        assert "cannot read" not in checked.stdout
        replayed = run(f"{BIN}/airflow-keda-scaler replay --since 7d", env={"AIRFLOW_KEDA_SCALER_CONNECTION": url})
        assert replayed.returncode == 0, replayed.stderr
        assert "dag_run" not in replayed.stdout  # no note that the scheduled runs could not be read


async def add_history(database: AirflowDatabase, *days: datetime.datetime) -> None:
    """A few finished tasks on queue default around each moment."""
    tasks = []
    for day in days:
        for n in range(20):
            queued = day + datetime.timedelta(minutes=n)
            tasks.append(
                TaskInstance(
                    f"history_{day:%Y%m%d%H}_{n}",
                    "success",
                    queued_at=queued,
                    started_at=queued + datetime.timedelta(seconds=5),
                    ended_at=queued + datetime.timedelta(minutes=3),
                )
            )
    await database.add(*tasks)


@pytest.mark.parametrize("page", ["switching-from-the-official-chart.md", "reference.md"])
async def test_replay_as_shown(page: str, airflow3_db: AirflowDatabase, tmp_path: Path) -> None:
    (shown,) = tagged("replay", ROOT / "docs" / page)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    await add_history(
        airflow3_db, now - datetime.timedelta(days=1), datetime.datetime(2026, 11, 28, 6, tzinfo=datetime.UTC)
    )
    # The URL is shown in the command, or taken from Airflow's own variable, as a worker's environment has it.
    if "postgresql://" in shown.text:
        result = run(replace_url(shown.text, airflow3_db.dsn), cwd=tmp_path)
    else:
        result = run(shown.text, cwd=tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    # Each shown window (the last 7 days, or a day of 2026-11-28) holds at least one of the two hours of history.
    replayed = re.search(r"Replayed (\d+) task instances", result.stdout)
    assert replayed is not None, result.stdout
    assert int(replayed[1]) >= 20, result.stdout


async def test_check_as_shown(airflow3_db: AirflowDatabase) -> None:
    (shown,) = tagged("check", ROOT / "docs" / "reference.md")
    await airflow3_db.add_many(3, "queued", queue="default")
    result = run(shown.text, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow3_db.dsn})
    assert result.returncode == 0, result.stderr
    assert "demand 3 (running 0 + queued 3) / concurrency 16 -> 1 workers" in result.stdout


async def test_the_in_pod_check_reads_the_secrets_file(airflow3_db: AirflowDatabase, tmp_path: Path) -> None:
    """What `kubectl exec` runs in the scaler's pod, here: the mounted Secret is a file in tmp_path."""
    (shown,) = tagged("in-pod", GUIDE)
    (command,) = shown.commands()
    assert command.startswith("kubectl -n keda exec deploy/airflow-keda-scaler -- ")
    in_pod = command.split(" -- ", 1)[1]
    mounted = tmp_path / "databases"
    mounted.write_text(f"airflow={airflow3_db.dsn}\n")
    await airflow3_db.add_many(2, "running", queue="default", hostname="airflow-worker-0")
    result = run(in_pod.replace("/etc/airflow-keda-scaler/databases", str(mounted)))
    assert result.returncode == 0, result.stderr
    assert "Airflow database airflow: reachable" in result.stdout
    assert "demand 2 (running 2 + queued 0)" in result.stdout


async def test_the_grpcurl_example(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    """The README's grpcurl call, against a scaler with the demo's database name (grpcurl from the Go proxy)."""
    (shown,) = tagged("grpcurl")
    await airflow3_db.add_many(20, "queued", queue="default")
    scaler = await start_scaler(airflow=airflow3_db.dsn)
    grpcurl = tools() / "grpcurl"
    command = shown.text.replace("127.0.0.1:6000", f"127.0.0.1:{scaler.server.port}")
    # In a thread: the scaler answers on this event loop.
    result = await asyncio.to_thread(run, re.sub(r"^grpcurl ", f"{grpcurl} ", command, flags=re.M))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["metricValues"][0]["metricName"] == "airflow-celery-workers"
    assert answer["metricValues"][0]["metricValueFloat"] == 2


def rendered_install(install: str, values: Block, folder: Path) -> list[dict[str, Any]]:
    """A shown `helm install ... -f FILE`, with `helm template` for `helm install`, run from `folder` (beside the
    chart) with the shown values written to FILE; the objects it renders (make cluster-e2e installs them)."""
    assert install.startswith("helm install ")
    (folder / values.argument).write_text(values.text)
    (folder / "charts").symlink_to(ROOT / "charts")
    command = re.sub(r"-f \S+\.yaml", f"-f {values.argument}", install)
    result = run(command.replace("helm install ", f"{tools() / 'helm'} template ", 1), cwd=folder)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_readmes_helm_install_renders_its_values_into_a_scaled_object(tmp_path: Path) -> None:
    """The README's values and command, with `helm template` for `helm install` (make cluster-e2e installs)."""
    readme = ROOT / "README.md"
    (values,) = tagged("values", readme)
    (shown,) = tagged("helm", readme)
    (command,) = shown.commands()
    rendered = rendered_install(command, values, tmp_path)
    (scaled_object,) = [d for d in rendered if d["kind"] == "ScaledObject"]
    assert scaled_object["metadata"]["namespace"] == "airflow"
    assert scaled_object["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "airflow-worker",
    }
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    assert deployment["metadata"]["namespace"] == "keda"
    image = yaml.safe_load(values.text)["image"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{image['repository']}:{image['tag']}"


@pytest.mark.parametrize("values", tagged("values", GUIDE), ids=lambda block: block.argument)
def test_each_of_the_guides_values_renders_a_scaled_object_per_worker_set_named_as_the_official_chart_names_them(
    values: Block, tmp_path: Path
) -> None:
    (install,) = [c for b in tagged("cluster", GUIDE) for c in b.commands() if c.startswith("helm install ")]
    given = yaml.safe_load(values.text)
    rendered = [d for d in rendered_install(install, values, tmp_path) if d["kind"] == "ScaledObject"]
    release = given["airflow"]["release"]
    # The official chart names its workers <release>-worker, and a set's <release>-worker-<set>.
    assert [d["spec"]["scaleTargetRef"]["name"] for d in rendered] == [
        f"{release}-{s['name']}" for s in given["workerSets"]
    ]
    for scaled_object, worker_set in zip(rendered, given["workerSets"], strict=True):
        assert scaled_object["spec"]["scaleTargetRef"]["kind"] == worker_set["kind"]
        assert scaled_object["spec"]["triggers"][0]["metadata"]["queues"] == ",".join(worker_set["queues"])


def test_blocks_parse_their_tags() -> None:
    block = Block(ROOT, "values", "x.yaml", "yaml", "a: 1")
    assert block.commands() == ["a: 1"]
    assert tagged("values", GUIDE)[0].argument == "airflow-keda-scaler-values.yaml"
