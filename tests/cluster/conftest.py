"""What the cluster tests share: a control plane with KEDA's ScaledObject CRD (bare, or with the base's RBAC),
workloads shaped like the official chart's Celery workers, the scaler running as the base's (and the chart's)
ServiceAccount, the test's Celery and node beside KEDA, and a way to run the docs' commands against it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.adapters.kubernetes.api import DELETION_COST
from scaler.rules.database_urls import ConnectionTarget, parse_url
from scaler.rules.prewarm import PrewarmSettings
from tests.conftest import AirflowDatabase, Running, StartScaler, fast_settings
from tests.support.control_plane import ROOT, ControlPlane, build_tools, control_plane, start_keda
from tests.support.docs import run_shown
from tests.support.fake_node import FakeNode
from tests.support.helm import tools
from tests.support.kustomize import build, kubectl

KEDA_CRDS = ROOT.parent / "shared" / "schemas" / "keda"
NS = "airflow"
WORKER = {"component": "worker", "release": "airflow"}
METADATA = {"database": "airflow", "concurrency": "16"}
SETTLE_DEADLINE = 120.0  # far above what a pass needs; reaching it is a finding
KEDA_DEADLINE = 180.0  # far above KEDA's polling and the HPA's 2 s sync; reaching it is a finding
VERSIONS: set[str] = set()  # of the built control plane, for the summary
FIGURES: list[str] = []  # what the tests measured, for the summary


def report(figure: str) -> None:
    """A figure of the run, printed in the summary at the end of `make cluster-e2e`."""
    FIGURES.append(figure)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not VERSIONS and not FIGURES:
        return
    terminalreporter.section("cluster-e2e: what ran and what it measured")
    for versions in sorted(VERSIONS):
        # The cache folder's name is the build's key: kubernetes-vX.etcd-vY.keda-vZ.
        terminalreporter.line(
            "built from the Go module proxy: " + versions.replace(".etcd-", ", etcd-").replace(".keda-", ", keda-")
        )
    for figure in FIGURES:
        terminalreporter.line(figure)


@pytest.fixture
async def bare_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane with the namespaces keda and airflow and KEDA's ScaledObject CRD, nothing of ours."""
    if not (KEDA_CRDS / "keda.sh_scaledobjects.yaml").exists():
        pytest.skip("KEDA's CRD schemas are not here (../shared/schemas/keda)")
    tools = await asyncio.to_thread(build_tools)
    VERSIONS.add(tools.name)
    async with control_plane(tmp_path / "control-plane", tools) as started:
        for namespace in ("keda", NS):
            await started.kubectl("create", "namespace", namespace)
        await started.kubectl("apply", "-f", str(KEDA_CRDS / "keda.sh_scaledobjects.yaml"))
        await started.kubectl("wait", "--for=condition=established", "crd/scaledobjects.keda.sh", "--timeout=60s")
        yield started


@pytest.fixture
async def plane(bare_plane: ControlPlane) -> ControlPlane:
    """The bare plane with the base's identity and permissions, unchanged: its ServiceAccount, Role and
    RoleBinding."""
    rbac = [r for r in build(ROOT / "manifests" / "base") if r["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert {r["kind"] for r in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
    await bare_plane.apply(rbac)
    return bare_plane


@pytest.fixture
async def node(plane: ControlPlane) -> FakeNode:
    """The one node of the cluster, registered, acting for the workers' namespace."""
    registered = FakeNode(plane, NS)
    await registered.register()
    return registered


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "airflow-worker", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": WORKER},
            "template": {
                "metadata": {"labels": WORKER},
                "spec": {
                    "terminationGracePeriodSeconds": 600,
                    "containers": [{"name": "worker", "image": "apache/airflow:3.3.2", "args": ["celery", "worker"]}],
                },
            },
        },
    }


def stateful_set(replicas: int) -> dict[str, Any]:
    """The official chart's worker is a StatefulSet (workers.persistence.enabled, its default)."""
    workload = deployment(replicas)
    workload["kind"] = "StatefulSet"
    workload["spec"] |= {"serviceName": "airflow-worker", "podManagementPolicy": "Parallel"}
    return workload


def scaled_object() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "airflow-worker", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "airflow-worker"},
            "minReplicaCount": 0,
            "maxReplicaCount": 10,
            "triggers": [
                {"type": "external", "metadata": {"scalerAddress": "airflow-keda-scaler.keda:6000", **METADATA}}
            ],
        },
    }


async def running_pods(node: FakeNode, count: int) -> list[dict[str, Any]]:
    """Settle the node until exactly `count` pods are Running and none is being deleted; them, by name."""
    deadline = asyncio.get_running_loop().time() + SETTLE_DEADLINE
    while True:
        await node.settle()
        pods = await node.pods()
        alive = [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        if len(pods) == count and len(alive) == count:
            return sorted(alive, key=lambda p: p["metadata"]["name"])
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {count} running pods, have {[p['metadata']['name'] for p in pods]}")
        await asyncio.sleep(0.1)


def costs(pods: list[dict[str, Any]]) -> dict[str, str | None]:
    return {p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST) for p in pods}


async def start_protected_scaler(
    plane: ControlPlane,
    database: AirflowDatabase,
    start_scaler: StartScaler,
    *,
    prewarm: PrewarmSettings | None = None,
    databases: dict[str, ConnectionTarget] | None = None,
    **settings: Any,
) -> Running:
    """The scaler on `database` as `airflow` (or on `databases`), authenticated as the ServiceAccount
    keda/airflow-keda-scaler (the base's and the chart's); `settings` replace ServerSettings'."""
    token = await plane.service_account_token("keda", "airflow-keda-scaler")
    config = plane.token_kubeconfig(token)
    # An hour between rounds: the test runs its rounds itself.
    kubernetes = KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600, patch_rate=1000)
    configured = fast_settings(databases or {"airflow": parse_url(database.dsn)}, prewarm=prewarm)
    return await start_scaler(dataclasses.replace(configured, kubernetes=kubernetes, **settings))


async def until_ready(plane: ControlPlane, name: str) -> dict[str, Any]:
    """The ScaledObject once KEDA reports it Ready: it built the HPA from the scaler's metric spec."""
    deadline = asyncio.get_running_loop().time() + SETTLE_DEADLINE
    while True:
        so: dict[str, Any] = await plane.api("GET", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/{name}")
        ready = [c for c in so.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        if ready and ready[0]["status"] == "True":
            return so
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"KEDA never made {name} ready: {so.get('status')}")
        await asyncio.sleep(0.2)


async def workload(plane: ControlPlane, kind: str = "deployments") -> dict[str, Any]:
    answer: dict[str, Any] = await plane.api("GET", f"/apis/apps/v1/namespaces/{NS}/{kind}/airflow-worker")
    return answer


async def replicas_reach(plane: ControlPlane, node: FakeNode, wanted: int, kind: str = "deployments") -> None:
    """Settle the node until the workload asks for `wanted` replicas and runs them."""
    deadline = asyncio.get_running_loop().time() + KEDA_DEADLINE
    while True:
        await node.settle()
        replicas = (await workload(plane, kind))["spec"]["replicas"]
        if replicas == wanted:
            await running_pods(node, wanted)
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the {kind} asks for {replicas} replicas, not {wanted}")
        await asyncio.sleep(0.2)


class Celery:
    """The test's Celery: it starts queued tasks on named workers and finishes them, in one transaction a move."""

    def __init__(self, database: AirflowDatabase) -> None:
        self.connection = database.connection

    async def start(self, **on: int) -> None:
        """Start this many queued tasks on each named pod (hostname = pod name, as Celery reports it)."""
        async with self.connection.transaction():
            for hostname, count in on.items():
                await self.connection.execute(
                    "UPDATE task_instance SET state = 'running', hostname = $1 WHERE task_id IN "
                    "(SELECT task_id FROM task_instance WHERE state = 'queued' ORDER BY task_id LIMIT $2)",
                    hostname,
                    count,
                )

    async def finish(self, hostname: str | None, count: int) -> None:
        """End `count` tasks running on `hostname` (None: still queued ones) with success."""
        await self.connection.execute(
            "UPDATE task_instance SET state = 'success' WHERE task_id IN (SELECT task_id FROM task_instance "
            "WHERE ($1::text IS NULL AND state = 'queued') OR (state = 'running' AND hostname = $1) "
            "ORDER BY task_id LIMIT $2)",
            hostname,
            count,
        )

    async def busy(self, hostname: str) -> bool:
        query = "SELECT count(*) FROM task_instance WHERE state = 'running' AND hostname = $1"
        return bool(await self.connection.fetchval(query, hostname))

    async def unfinished(self) -> int:
        query = "SELECT count(*) FROM task_instance WHERE state IN ('queued', 'running')"
        return int(await self.connection.fetchval(query))


async def with_keda(plane: ControlPlane, database: AirflowDatabase) -> tuple[Celery, FakeNode]:
    """KEDA started, and the test's Celery and node on `database` (the node tells which deleted pod was busy)."""
    celery = Celery(database)
    node = FakeNode(plane, NS, busy=celery.busy)
    await node.register()
    await start_keda(plane)
    return celery, node


async def to_zero_deleting_no_busy_pod(plane: ControlPlane, node: FakeNode, what: str, kind: str) -> None:
    await replicas_reach(plane, node, 0, kind)
    assert node.busy_deleted == []
    report(f"{what}: busy pods deleted: {len(node.busy_deleted)} of {len(node.deleted)} deleted")


def shell(command: str, folder: Path, plane: ControlPlane) -> str:
    """A shown command, run from `folder` with the cluster's admin as kubectl's and helm's; its output."""
    result = run_shown(
        command, cwd=folder, tools=(tools(), Path(kubectl()).parent), env={"KUBECONFIG": str(plane.admin)}
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    return result.stdout
