"""pod-deletion-cost through kubernetes-asyncio, against a real HTTP server that plays the Kubernetes API.

The production server runs with a kubeconfig pointing at the fake API server;
KEDA's calls go over gRPC; each test runs reconciler rounds itself and asserts
the exact requests: which objects were read, which pods were patched and with
what body, that unchanged costs cost no request, that a 403 degrades once,
and that pods of other workloads are never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from scaler.adapters.kubernetes.access import KubernetesSettings, NoKubernetes, connect
from scaler.adapters.kubernetes.api import DELETION_COST, KubernetesApi
from scaler.fixtures.airflow_schema import TaskInstance
from scaler.rules.database_urls import parse_url
from scaler.service import deletion_cost_reconciler as reconciler_module
from scaler.service.deletion_cost_reconciler import RateLimiter
from tests.conftest import AirflowDatabase, Running, StartScaler, fast_settings
from tests.support.fake_kubernetes import FakeKubernetes, Request, kubeconfig
from tests.support.kustomize import load_documents
from tests.support.scrape import scrape

ROOT = Path(__file__).resolve().parent.parent
NS = "airflow"
WORKER = {"component": "worker", "release": "airflow"}
HASH = "6c9d8f7b5"
TOKEN = "sa-token-never-in-logs-91c2"
METADATA = {"database": "airflow", "concurrency": "16"}


def pod(name: str) -> str:
    return f"airflow-worker-{HASH}-{name}"


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKubernetes]:
    fake = await FakeKubernetes().start()
    fake.add_scaled_object(NS, "airflow-worker", "airflow-worker", kind=None)  # kind defaults to Deployment
    fake.add_workload("Deployment", NS, "airflow-worker", WORKER)
    owner = ("ReplicaSet", f"airflow-worker-{HASH}")
    labels = {**WORKER, "pod-template-hash": HASH}
    fake.add_pod(NS, pod("aaaaa"), labels, owner=owner)
    fake.add_pod(NS, pod("bbbbb"), labels, owner=owner)
    fake.add_pod(NS, pod("ccccc"), labels, owner=owner, pod_ip="10.0.0.3")
    fake.add_pod(NS, pod("ddddd"), labels, owner=owner, terminating=True)
    # Same labels, another workload's pod; a bare pod; a pod of the same name in another namespace.
    fake.add_pod(
        NS, "intruder-77f8c-xxxxx", {**WORKER, "pod-template-hash": "77f8c"}, owner=("ReplicaSet", "intruder-77f8c")
    )
    fake.add_pod(NS, "bare-worker", WORKER, owner=None)
    fake.add_pod("other", pod("aaaaa"), labels, owner=owner)
    # A StatefulSet of workers.
    fake.add_scaled_object(NS, "airflow-worker-sts", "airflow-worker-sts", kind="StatefulSet")
    fake.add_workload("StatefulSet", NS, "airflow-worker-sts", {"component": "worker-sts"})
    for ordinal in range(3):
        sts_owner = ("StatefulSet", "airflow-worker-sts")
        fake.add_pod(NS, f"airflow-worker-sts-{ordinal}", {"component": "worker-sts"}, owner=sts_owner)
    yield fake
    await fake.stop()


@pytest.fixture
async def scaler(
    cluster: FakeKubernetes, airflow3_db: AirflowDatabase, start_scaler: StartScaler, tmp_path: Path
) -> Running:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, TOKEN))
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    # An hour between rounds: each test runs its rounds itself.
    kubernetes = KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600, patch_rate=1000)
    return await start_scaler(dataclasses.replace(settings, kubernetes=kubernetes))


async def run_on(database: AirflowDatabase, host: str, count: int = 1, queue: str = "default") -> None:
    for i in range(count):
        await database.add(TaskInstance(f"{host}_{queue}_{i}", "running", queue=queue, hostname=host))


async def round_after_poll(scaler: Running, metadata: dict[str, str], name: str = "airflow-worker") -> int:
    workers = (await scaler.keda.poll(metadata, name=name)).value_int
    assert scaler.server.reconciler is not None
    await scaler.server.reconciler.reconcile_once()
    return workers


def annotation(cost: int) -> dict[str, object]:
    return {"metadata": {"annotations": {DELETION_COST: str(cost)}}}


async def test_costs_follow_running_tasks_and_only_changes_are_patched(
    cluster: FakeKubernetes, scaler: Running, airflow3_db: AirflowDatabase
) -> None:
    await run_on(airflow3_db, pod("aaaaa"), 2)
    await run_on(airflow3_db, f"{pod('bbbbb')}.airflow-worker.airflow.svc.cluster.local", 1, queue="ml")
    await run_on(airflow3_db, "intruder-77f8c-xxxxx", 3)
    await run_on(airflow3_db, pod("ddddd"), 1)  # terminating: the ReplicaSet is past choosing it
    await run_on(airflow3_db, "bare-worker", 1)
    assert await round_after_poll(scaler, METADATA) == 5  # busy: aaaaa, bbbbb, intruder, ddddd, bare

    base = f"/api/v1/namespaces/{NS}/pods"
    assert [(r.method, r.path, r.query) for r in cluster.requests] == [
        ("GET", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/airflow-worker", {}),
        ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/airflow-worker", {}),
        ("GET", base, {"labelSelector": "component=worker,release=airflow"}),
        ("PATCH", f"{base}/{pod('aaaaa')}", {}),  # the larger raise first
        ("PATCH", f"{base}/{pod('bbbbb')}", {}),
    ]
    assert [r.body for r in cluster.requests if r.method == "PATCH"] == [annotation(2), annotation(1)]
    assert {r.content_type for r in cluster.requests if r.method == "PATCH"} == {
        "application/strategic-merge-patch+json"
    }
    assert {r.authorization for r in cluster.requests} == {f"Bearer {TOKEN}"}
    assert cluster.cost(NS, pod("ccccc")) is None  # idle and unannotated: cost 0 already
    for untouched in ("intruder-77f8c-xxxxx", "bare-worker", pod("ddddd")):
        assert cluster.cost(NS, untouched) is None
    assert cluster.cost("other", pod("aaaaa")) is None

    # Nothing changed: one pod list, no patch (the target is cached).
    cluster.requests.clear()
    await round_after_poll(scaler, METADATA)
    assert [(r.method, r.path) for r in cluster.requests] == [("GET", base)]

    # aaaaa's tasks finish; ccccc starts one, recorded by IP: raise ccccc first, then lower aaaaa.
    await airflow3_db.connection.execute("UPDATE task_instance SET state = 'success' WHERE hostname = $1", pod("aaaaa"))
    await run_on(airflow3_db, "10.0.0.3", 1)
    cluster.requests.clear()
    await round_after_poll(scaler, METADATA)
    assert cluster.patches() == [(f"{base}/{pod('ccccc')}", annotation(1)), (f"{base}/{pod('aaaaa')}", annotation(0))]
    metrics = await scrape(scaler.server.http.port)
    patched = metrics.value(
        "airflow_keda_scaler_pod_deletion_cost_patches_total", namespace=NS, scaled_object="airflow-worker"
    )
    assert patched == 4
    assert metrics.value("airflow_keda_scaler_kubernetes_access") == 1
    assert metrics.value("airflow_keda_scaler_busy_worker_floor", namespace=NS, scaled_object="airflow-worker") == 5


async def test_statefulset_target_sets_the_floor_kind_and_is_never_patched(
    cluster: FakeKubernetes, scaler: Running, airflow3_db: AirflowDatabase
) -> None:
    await run_on(airflow3_db, "airflow-worker-sts-2.airflow-worker-sts.airflow.svc.cluster.local", 1)
    # Before the ScaledObject is read, the floor counts busy workers (the metadata names no kind).
    assert await round_after_poll(scaler, METADATA, name="airflow-worker-sts") == 1
    # Then it keeps ordinals 0..2, because a StatefulSet removes the highest ordinal first.
    assert await round_after_poll(scaler, METADATA, name="airflow-worker-sts") == 3
    assert [(r.method, r.path) for r in cluster.requests] == [
        ("GET", f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/airflow-worker-sts"),
        ("GET", f"/apis/apps/v1/namespaces/{NS}/statefulsets/airflow-worker-sts"),
    ]


async def test_opt_out_makes_no_request(cluster: FakeKubernetes, scaler: Running, airflow3_db: AirflowDatabase) -> None:
    await run_on(airflow3_db, pod("aaaaa"), 1)
    await run_on(airflow3_db, pod("bbbbb"), 1)
    assert await round_after_poll(scaler, {**METADATA, "scaleDownProtection": "false"}) == 1
    assert cluster.requests == []


async def test_forbidden_degrades_once_and_recovers(
    cluster: FakeKubernetes,
    scaler: Running,
    airflow3_db: AirflowDatabase,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    monkeypatch.setattr(reconciler_module, "RETRY_AFTER", 0.0)
    cluster.forbidden.add(("list", "pods"))
    await run_on(airflow3_db, pod("aaaaa"), 1)
    await run_on(airflow3_db, pod("bbbbb"), 1)
    for _ in range(3):
        # Scaling goes on, floor included, while Kubernetes refuses.
        assert await round_after_poll(scaler, METADATA) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "scaler.service.deletion_cost_reconciler"]
    assert warnings == [
        "scaled object airflow/airflow-worker: pod-deletion-cost not kept (forbidden): forbidden to list pods in "
        "airflow (grant the scaler's ServiceAccount the Role in manifests/base/rbac.yaml); "
        "the busy-worker floor still applies"
    ]
    assert not cluster.patches()
    labels = {"namespace": NS, "scaled_object": "airflow-worker"}
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value("airflow_keda_scaler_pod_deletion_cost_skipped", **labels, reason="forbidden") == 1
    assert TOKEN not in caplog.text

    cluster.forbidden.clear()
    caplog.clear()
    await round_after_poll(scaler, METADATA)
    assert [r.getMessage() for r in caplog.records if r.name == "scaler.service.deletion_cost_reconciler"] == [
        "scaled object airflow/airflow-worker: pod-deletion-cost kept again"
    ]
    assert {cluster.cost(NS, pod("aaaaa")), cluster.cost(NS, pod("bbbbb"))} == {"1"}
    metrics = await scrape(scaler.server.http.port)
    assert metrics.samples("airflow_keda_scaler_pod_deletion_cost_skipped") == []


@pytest.mark.parametrize(
    ("setup", "reason", "message"),
    [
        ("missing", "not_found", "cannot get scaledobjects.keda.sh airflow/airflow-worker: not found"),
        ("rollout", "unsupported", "scales argoproj.io/v1alpha1 Rollout airflow-worker"),
        ("no-get", "forbidden", "forbidden to get deployments.apps airflow/airflow-worker"),
    ],
)
async def test_unusable_targets_are_named(
    cluster: FakeKubernetes,
    scaler: Running,
    caplog: pytest.LogCaptureFixture,
    setup: str,
    reason: str,
    message: str,
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    if setup == "missing":
        del cluster.scaled_objects[(NS, "airflow-worker")]
    elif setup == "rollout":
        ref = cluster.scaled_objects[(NS, "airflow-worker")]["spec"]["scaleTargetRef"]
        ref.update(kind="Rollout", apiVersion="argoproj.io/v1alpha1")
    else:
        cluster.forbidden.add(("get", "deployments"))
    await round_after_poll(scaler, METADATA)
    await round_after_poll(scaler, METADATA)  # within RETRY_AFTER: no new request, no new line
    lines = [r.getMessage() for r in caplog.records if r.name == "scaler.service.deletion_cost_reconciler"]
    assert len(lines) == 1
    assert f"pod-deletion-cost not kept ({reason}): " in lines[0]
    assert message in lines[0]
    assert len([r for r in cluster.requests if "scaledobjects" in r.path]) == 1
    assert not cluster.patches()


async def test_without_kubernetes_the_floor_applies_and_the_reason_is_said_once(
    airflow3_db: AirflowDatabase,
    start_scaler: StartScaler,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    kubernetes = KubernetesSettings(mode="auto", kubeconfig=str(tmp_path / "absent"))
    scaler = await start_scaler(dataclasses.replace(settings, kubernetes=kubernetes))
    await run_on(airflow3_db, pod("aaaaa"), 1)
    await run_on(airflow3_db, pod("bbbbb"), 1)
    for _ in range(3):
        assert await round_after_poll(scaler, METADATA) == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "no Kubernetes API: not running in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig at "
        f"{tmp_path / 'absent'}; pod-deletion-cost is not kept (the busy-worker floor still applies)"
    ]
    metrics = await scrape(scaler.server.http.port)
    assert metrics.value("airflow_keda_scaler_kubernetes_access") == 0


async def test_in_cluster_service_account_over_tls(cluster: FakeKubernetes, tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    secure = await FakeKubernetes(scaled_objects=cluster.scaled_objects, workloads=cluster.workloads).start(context)
    try:
        (tmp_path / "token").write_text(TOKEN)
        ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
        port = secure.url.rsplit(":", 1)[1]
        environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        settings = KubernetesSettings(mode="auto", service_account_dir=tmp_path)
        api = KubernetesApi(await connect(settings, environ))
        try:
            target = await api.read_scale_target(NS, "airflow-worker")
        finally:
            await api.close()
        assert (target.kind, target.name, target.selector) == (
            "Deployment",
            "airflow-worker",
            "component=worker,release=airflow",
        )
        assert {r.authorization for r in secure.requests} == {f"Bearer {TOKEN}"}
    finally:
        await secure.stop()


@pytest.mark.parametrize(
    ("written", "read"),
    [(None, 0), (3, 3), (0, 0), (-1, 0), ("3", 0), (True, 0), (2.5, 0), (2**40, 2**31 - 1)],
)
async def test_the_scaled_objects_minreplicacount_is_read_as_keda_takes_it(
    cluster: FakeKubernetes, tmp_path: Path, written: object, read: int
) -> None:
    """Drain keeps minReplicaCount workers consuming; whatever a ScaledObject's author wrote there, the scaler reads
    a number KEDA would accept (an int32 of at least 0), else KEDA's default, 0."""
    cluster.add_scaled_object(NS, "airflow-worker", "airflow-worker", min_replicas=written)
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, TOKEN))
    api = KubernetesApi(await connect(KubernetesSettings(mode="kubeconfig", kubeconfig=str(config)), {}))
    try:
        target = await api.read_scale_target(NS, "airflow-worker")
    finally:
        await api.close()
    assert target.min_replicas == read


async def test_explicit_modes_that_cannot_load_are_errors(tmp_path: Path) -> None:
    with pytest.raises(NoKubernetes, match="in-cluster configuration unusable: Service host/port is not set"):
        await connect(KubernetesSettings(mode="in-cluster", service_account_dir=tmp_path), {})
    with pytest.raises(NoKubernetes, match="no kubeconfig at"):
        await connect(KubernetesSettings(mode="kubeconfig", kubeconfig=str(tmp_path / "none")), {})
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scaler", "serve", "--kubernetes", "in-cluster", "--grpc-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": "127.0.0.1:0"},
    )
    assert result.returncode == 2, result.stderr
    assert "error: --kubernetes in-cluster: in-cluster configuration unusable" in result.stderr


async def test_patches_are_paced_by_one_rate_limit() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        await limiter.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    now[0] += 10.0  # idle for a while: the next call goes at once
    await limiter.wait()
    assert len(slept) == 4


async def test_many_pods_change_in_one_paced_batch(
    cluster: FakeKubernetes, airflow3_db: AirflowDatabase, start_scaler: StartScaler, tmp_path: Path
) -> None:
    owner = ("ReplicaSet", f"airflow-worker-{HASH}")
    for n in range(20):
        cluster.add_pod(NS, pod(f"n{n:04d}"), {**WORKER, "pod-template-hash": HASH}, owner=owner)
        await run_on(airflow3_db, pod(f"n{n:04d}"), 1 + n % 3)
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, TOKEN))
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    kubernetes = KubernetesSettings(mode="kubeconfig", kubeconfig=str(config), interval=3600, patch_rate=100)
    scaler = await start_scaler(dataclasses.replace(settings, kubernetes=kubernetes))
    assert await round_after_poll(scaler, METADATA) == 20
    patches = cluster.patches()
    assert len(patches) == 20
    costs = [int(body["metadata"]["annotations"][DELETION_COST]) for _, body in patches if body]
    assert costs == sorted(costs, reverse=True)  # raises, largest first


def permission(request: Request) -> tuple[str, str, str]:
    """The RBAC (apiGroup, resource, verb) a request needs, as the API server's authorizer sees it."""
    parts = request.path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    # namespaces/<ns>/<resource>[/<name>]
    resource, named = rest[2], len(rest) > 3
    verb = {"GET": "get" if named else "list", "PATCH": "patch"}[request.method]
    return group, resource, verb


def granted(rules: list[dict[str, list[str]]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_the_shipped_role_grants_exactly_what_the_scaler_asks(
    cluster: FakeKubernetes, scaler: Running, airflow3_db: AirflowDatabase
) -> None:
    await run_on(airflow3_db, pod("aaaaa"), 1)
    await run_on(airflow3_db, "airflow-worker-sts-1", 1)
    await scaler.keda.poll(METADATA, name="airflow-worker")
    await round_after_poll(scaler, METADATA, name="airflow-worker-sts")
    needed = {permission(r) for r in cluster.requests}
    assert ("", "pods", "patch") in needed
    role = next(r for r in load_documents(ROOT / "manifests" / "base" / "rbac.yaml") if r["kind"] == "Role")
    # Both target kinds were read here, and a pod listed and patched: every rule is used, none is missing.
    assert granted(role["rules"]) == needed


async def test_the_kubernetes_client_is_loaded_only_with_kubernetes_access() -> None:
    # kubernetes-asyncio, even its lower layers only, costs memory and start time: a scaler that
    # runs without Kubernetes access, and every module on the path of KEDA's calls, must not import it.
    code = (
        "import asyncio, sys, scaler.service.server, scaler.commands.main, scaler.service.deletion_cost_reconciler\n"
        "from scaler.adapters.kubernetes.access import KubernetesSettings, NoKubernetes, connect\n"
        "for mode in ('off', 'auto'):\n"
        "    try:\n"
        "        asyncio.run(connect(KubernetesSettings(mode=mode, kubeconfig='/nonexistent'), {}))\n"
        "    except NoKubernetes:\n"
        "        pass\n"
        "sys.exit('kubernetes_asyncio' in sys.modules)"
    )
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr or "kubernetes_asyncio was imported"


async def read_target_in_a_fresh_process(cluster: FakeKubernetes, tmp_path: Path, before: str, after: str) -> str:
    """Run `before`, then read the fake cluster's ScaledObject target and pods as the scaler does, then `after`."""
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, TOKEN))
    code = (
        f"{before}\n"
        "import asyncio\n"
        "from scaler.adapters.kubernetes.access import KubernetesSettings, connect\n"
        "from scaler.adapters.kubernetes.api import KubernetesApi\n"
        "async def main():\n"
        f"    settings = KubernetesSettings(mode='kubeconfig', kubeconfig={str(config)!r})\n"
        "    api = KubernetesApi(await connect(settings, {}))\n"
        "    try:\n"
        "        target = await api.read_scale_target('airflow', 'airflow-worker')\n"
        "        print(target.kind, len(await api.list_target_pods(target)))\n"
        "    finally:\n"
        "        await api.close()\n"
        "asyncio.run(main())\n"
        f"{after}\n"
    )
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_with_kubernetes_access_only_the_clients_lower_layers_load(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    # With access, the scaler loads the configuration loaders and ApiClient, never the ~1,500 generated
    # models nor the generated API classes (about 40 MB resident), and its calls still work.
    after = (
        "import sys\n"
        "heavy = [name for name in sys.modules if name.startswith(('kubernetes_asyncio.client.models.', "
        "'kubernetes_asyncio.client.api.'))]\n"
        "sys.exit(f'generated modules loaded: {heavy[:5]} ({len(heavy)})' if heavy else 0)"
    )
    out = await read_target_in_a_fresh_process(cluster, tmp_path, "", after)
    assert out.split() == ["Deployment", "3"]  # its own pods, not the terminating one


async def test_a_fully_imported_client_library_is_used_as_it_is(cluster: FakeKubernetes, tmp_path: Path) -> None:
    before = "import kubernetes_asyncio.client"
    after = "assert kubernetes_asyncio.client.V1Pod is not None  # the full library, untouched"
    out = await read_target_in_a_fresh_process(cluster, tmp_path, before, after)
    assert out.split() == ["Deployment", "3"]
