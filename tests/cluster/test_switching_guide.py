"""docs/switching-from-the-official-chart.md, followed on a real control plane: its commands, as written, create
the Secret and install the chart beside an Airflow-shaped worker StatefulSet; KEDA and the HPA then scale it
through the scaler, from zero by push and back to zero, deleting no busy worker.

What the test adds is only what a cluster would have and this one has not: the scaler runs as a process
(there is no kubelet), so the release is upgraded once with `scalerAddress` pointing at it, and the
ScaledObject's intervals are shortened so the test takes a minute, not ten.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from scaler.commands.files import load_databases
from scaler.commands.parser import build_parser
from tests.cluster.conftest import (
    NS,
    replicas_reach,
    report,
    running_pods,
    shell,
    start_protected_scaler,
    stateful_set,
    to_zero_deleting_no_busy_pod,
    until_ready,
    with_keda,
)
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.control_plane import ControlPlane
from tests.support.docs import GUIDE, ROOT, guide_reader, replace_url, tagged

pytestmark = pytest.mark.cluster


@pytest.fixture
async def keda_reader(direct_db: AirflowDatabase) -> AsyncIterator[str]:
    """Step 2's role; dropped after the scaler that uses it has stopped (requested before start_scaler)."""
    async with guide_reader(direct_db) as url:
        yield url


async def test_the_guide_installs_the_chart_and_keda_scales_the_workers_through_it(
    bare_plane: ControlPlane, direct_db: AirflowDatabase, keda_reader: str, start_scaler: StartScaler, tmp_path: Path
) -> None:
    plane = bare_plane
    celery, node = await with_keda(plane, direct_db)
    await plane.apply([stateful_set(0)])  # the official chart's worker, airflow-worker, at rest
    folder = tmp_path / "guide"
    folder.mkdir()
    (folder / "charts").symlink_to(ROOT / "charts")

    for block in tagged("values", GUIDE)[:1]:
        (folder / block.argument).write_text(block.text)
    commands = [command for block in tagged("cluster", GUIDE) for command in block.commands()]
    install = next(i for i, command in enumerate(commands) if command.startswith("helm install "))
    for command in commands[: install + 1]:
        await asyncio.to_thread(
            shell, replace_url(command, keda_reader) if "postgresql://" in command else command, folder, plane
        )

    # What the chart made: the scaler in keda, the RoleBinding to it in airflow, the ScaledObject.
    binding = await plane.api(
        "GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/airflow-keda-scaler"
    )
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-keda-scaler", "namespace": "keda"}]
    so = await plane.api("GET", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/airflow-worker")
    assert so["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"

    # The scaler, as the chart's ServiceAccount, on the database the guide's Secret names: the Secret's key, as the
    # chart mounts it, read by serve's own --database-file.
    secret = await plane.api("GET", "/api/v1/namespaces/keda/secrets/airflow-keda-scaler-databases")
    mounted = tmp_path / "databases"
    mounted.write_bytes(base64.b64decode(secret["data"]["databases"]))
    databases = load_databases(build_parser().parse_args(["serve", "--database-file", str(mounted)]))
    assert list(databases) == ["airflow"]
    scaler = await start_protected_scaler(plane, direct_db, start_scaler, databases=databases)

    # The release, upgraded to reach it, with the intervals shortened.
    values = yaml.safe_load((folder / "airflow-keda-scaler-values.yaml").read_text())
    (worker_set,) = values["workerSets"]
    worker_set |= {"pollingInterval": 600, "cooldownPeriod": 5, "scaleDownWindowSeconds": 0}
    overrides = {"scalerAddress": f"127.0.0.1:{scaler.server.port}", "workerSets": [worker_set]}
    (folder / "test-overrides.yaml").write_text(yaml.safe_dump(overrides))
    upgrade = commands[install].replace("helm install ", "helm upgrade ", 1) + " -f test-overrides.yaml"
    await asyncio.to_thread(shell, upgrade, folder, plane)
    await until_ready(plane, "airflow-worker")
    for command in commands[install + 1 :]:  # step 5: the ScaledObject is there, READY True
        shown = await asyncio.to_thread(shell, command, folder, plane)
        assert re.search(r"airflow-worker\s+apps/v1\.StatefulSet\s+airflow-worker.*\bTrue\b", shown), shown

    # From zero by push (KEDA polls every 600 s here), then the HPA to ceil(40 / 16) = 3.
    await direct_db.add_many(40, "queued", queue="default")
    await replicas_reach(plane, node, 3, "statefulsets")
    pods = [p["metadata"]["name"] for p in await running_pods(node, 3)]
    assert pods == ["airflow-worker-0", "airflow-worker-1", "airflow-worker-2"]
    # Celery spreads the work; the top ordinal's ends first: the HPA removes only that idle one.
    await celery.start(**{"airflow-worker-0": 16, "airflow-worker-1": 16, "airflow-worker-2": 8})
    await celery.finish("airflow-worker-2", 8)
    await replicas_reach(plane, node, 2, "statefulsets")
    await celery.finish("airflow-worker-1", 16)
    await celery.finish("airflow-worker-0", 16)
    # KEDA takes a workload to zero on a poll (a pushed `false` is ignored by design): poll every second now.
    worker_set["pollingInterval"] = 1
    (folder / "test-overrides.yaml").write_text(yaml.safe_dump(overrides))
    await asyncio.to_thread(shell, upgrade, folder, plane)
    await to_zero_deleting_no_busy_pod(plane, node, "switching guide, chart-installed StatefulSet", "statefulsets")
    report(f"switching guide: {len(commands)} commands run as written, the chart installed and scaling")
