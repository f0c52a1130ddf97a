"""The shipped manifests against the real thing: every example, applied unchanged, passes the real CRD validation
and is served by KEDA through the scaler; and the base without its RoleBinding is refused by the real RBAC,
which the scaler's metrics and log then say.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from scaler.service.metrics import NAMESPACE as N
from scaler.service.tls import TlsFiles
from tests.cluster.conftest import (
    METADATA,
    NS,
    deployment,
    running_pods,
    scaled_object,
    shell,
    start_protected_scaler,
    until_ready,
)
from tests.conftest import AirflowDatabase, StartScaler
from tests.support.control_plane import ROOT, ControlPlane, start_keda
from tests.support.docs import Block, tagged
from tests.support.fake_node import FakeNode
from tests.support.kustomize import build, load_documents
from tests.support.scrape import scrape

pytestmark = pytest.mark.cluster

EXAMPLES = ROOT / "manifests" / "examples"
# Each ScaledObject example is an alternative to the others (they scale the same Deployment), so each is applied
# alone, with what it needs; the worker Deployment example is applied first and stays.
ALTERNATIVES = {
    "scaledobject-external.yaml": (),
    "scaledobject-external-push.yaml": ("triggerauthentication-tls.yaml",),
    "scaledobjects-per-queue.yaml": (),
}


def test_every_example_is_in_this_test() -> None:
    """A new example must be added to ALTERNATIVES (or be the worker Deployment), or it would go unproven."""
    covered = {"celery-worker-deployment.yaml", *ALTERNATIVES, *(n for needs in ALTERNATIVES.values() for n in needs)}
    assert {path.name for path in EXAMPLES.glob("*.yaml")} == covered


def with_address(folder: Path, files: tuple[str, ...], address: str) -> list[dict[str, Any]]:
    """The example files, copied unchanged, through a kustomization that sets only namespace and scalerAddress."""
    folder.mkdir()
    for name in files:
        shutil.copy(EXAMPLES / name, folder / name)
    patch = [{"op": "replace", "path": "/spec/triggers/0/metadata/scalerAddress", "value": address}]
    kustomization = {
        "namespace": NS,
        "resources": list(files),
        "patches": [{"target": {"kind": "ScaledObject"}, "patch": json.dumps(patch)}],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return build(folder)


def client_secret(ca: trustme.CA) -> dict[str, Any]:
    """What triggerauthentication-tls.yaml reads: the scaler's CA and KEDA's client certificate and key."""
    client = ca.issue_cert("keda-operator", common_name="keda-operator")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keda-airflow-keda-scaler-client", "namespace": NS},
        "stringData": {
            "ca.crt": ca.cert_pem.bytes().decode(),
            "tls.crt": b"".join(blob.bytes() for blob in client.cert_chain_pems).decode(),
            "tls.key": client.private_key_pem.bytes().decode(),
        },
    }


def airflow_secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"connection": "not-read-by-this-test"},
    }


def server_files(ca: trustme.CA, folder: Path) -> TlsFiles:
    folder.mkdir()
    files = TlsFiles(folder / "tls.crt", folder / "tls.key", folder / "ca.crt")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.client_ca))
    return files


async def test_every_example_passes_the_real_crd_validation_and_keda_serves_it(
    plane: ControlPlane, direct_db: AirflowDatabase, start_scaler: StartScaler, tmp_path: Path
) -> None:
    await start_keda(plane)
    # The Secrets the worker example's environment names, as the Airflow installation has them: KEDA reads a
    # scale target's environment and refuses the ScaledObject when a Secret it names is missing.
    await plane.apply([airflow_secret("airflow-metadata"), airflow_secret("airflow-broker-url")])
    await plane.apply(load_documents(EXAMPLES / "celery-worker-deployment.yaml"))
    ml = deployment(0)
    ml["metadata"]["name"] = "airflow-worker-ml"
    await plane.apply([ml])
    ca = trustme.CA()
    plain = await start_protected_scaler(plane, direct_db, start_scaler)
    mutual = await start_protected_scaler(plane, direct_db, start_scaler, tls=server_files(ca, tmp_path / "tls"))
    await plane.apply([client_secret(ca)])

    for example, needs in ALTERNATIVES.items():
        scaler = mutual if needs else plain
        resources = with_address(tmp_path / example, (example, *needs), f"127.0.0.1:{scaler.server.port}")
        # The real CRD schemas validate each object; a refusal fails here. The TriggerAuthentication goes first, as
        # docs/deploying.md says: a ScaledObject that KEDA sees before its TriggerAuthentication gets a plaintext
        # connection to the TLS port, which KEDA keeps (it never became Ready in one run of three).
        scaled_objects = [r for r in resources if r["kind"] == "ScaledObject"]
        if needs:
            await plane.apply([r for r in resources if r["kind"] != "ScaledObject"])
        await plane.apply(scaled_objects)
        names = [r["metadata"]["name"] for r in scaled_objects]
        assert names, example
        for name in names:
            so = await until_ready(plane, name)
            assert so["status"]["hpaName"] == f"keda-hpa-{name}", example
        await plane.kubectl("delete", "scaledobjects", "-n", NS, *names, "--wait=true")


async def test_without_the_rolebinding_the_api_server_refuses_and_the_scaler_says_so(
    plane: ControlPlane,
    node: FakeNode,
    direct_db: AirflowDatabase,
    start_scaler: StartScaler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    binding = next(r for r in build(ROOT / "manifests" / "base") if r["kind"] == "RoleBinding")
    await plane.kubectl("delete", "rolebinding", binding["metadata"]["name"], "-n", binding["metadata"]["namespace"])
    await plane.apply([deployment(2), scaled_object()])
    await running_pods(node, 2)
    scaler = await start_protected_scaler(plane, direct_db, start_scaler)
    await scaler.keda.poll(METADATA, name="airflow-worker")
    assert scaler.server.reconciler is not None
    with caplog.at_level(logging.WARNING, logger="scaler.service.deletion_cost_reconciler"):
        await scaler.server.reconciler.reconcile_once()

    metrics = await scrape(scaler.server.http.port)
    labels = {"namespace": NS, "scaled_object": "airflow-worker", "reason": "forbidden"}
    assert metrics.value(f"{N}_pod_deletion_cost_skipped", **labels) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "scaler.service.deletion_cost_reconciler"]
    assert any("forbidden" in message and "airflow/airflow-worker" in message for message in warnings), warnings
    # Nothing was annotated: the API server refused every call.
    assert all("annotations" not in pod["metadata"] or not pod["metadata"]["annotations"] for pod in await node.pods())


async def test_docs_deploying_commands_apply_and_the_namespace_overlay_keeps_the_scalers_permissions(
    bare_plane: ControlPlane,
) -> None:
    """docs/deploying.md's kubectl commands, as written, against the real API server; after each, the real RBAC
    says which ServiceAccount may list and patch the workers' pods."""

    async def may(account: str) -> bool:
        answers = [
            await bare_plane.kubectl("auth", "can-i", verb, "pods", "-n", NS, "--as", account, check=False)
            for verb in ("list", "patch")
        ]
        return all(answer.strip() == "yes" for answer in answers)

    async def run(block: Block) -> None:
        for command in block.commands():
            await asyncio.to_thread(shell, command, ROOT, bare_plane)

    base, namespace, tls, drain = tagged("manifests", ROOT / "docs" / "deploying.md")
    await run(base)
    assert await may("system:serviceaccount:keda:airflow-keda-scaler")
    # The overlay moves the scaler, not the workers' Role, and binds that Role to the moved ServiceAccount.
    await run(namespace)
    assert await may("system:serviceaccount:platform-keda:airflow-keda-scaler")
    roles = await bare_plane.kubectl(
        "get",
        "roles",
        "-A",
        "--field-selector=metadata.name=airflow-keda-scaler",
        "-o",
        "jsonpath={.items[*].metadata.namespace}",
    )
    assert roles.split() == [NS]
    moved = await bare_plane.api("GET", "/apis/apps/v1/namespaces/platform-keda/deployments/airflow-keda-scaler")
    assert moved["spec"]["template"]["spec"]["serviceAccountName"] == "airflow-keda-scaler"
    await run(tls)
    served = await bare_plane.api("GET", "/apis/apps/v1/namespaces/keda/deployments/airflow-keda-scaler")
    assert "AIRFLOW_KEDA_SCALER_TLS_CERT" in {
        e["name"] for e in served["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # Drain: the brokers file, and the Lease its replicas elect the leader with, as the real RBAC answers.
    await run(drain)
    served = await bare_plane.api("GET", "/apis/apps/v1/namespaces/keda/deployments/airflow-keda-scaler")
    assert "AIRFLOW_KEDA_SCALER_BROKER_FILE" in {
        e["name"] for e in served["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    account = "system:serviceaccount:keda:airflow-keda-scaler"
    for verb, resource in (
        ("create", "leases"),
        ("get", "leases/airflow-keda-scaler-drain"),
        ("update", "leases/airflow-keda-scaler-drain"),
    ):
        answer = await bare_plane.kubectl("auth", "can-i", verb, resource, "-n", "keda", "--as", account, check=False)
        assert answer.strip() == "yes", (verb, resource)
    other = await bare_plane.kubectl(
        "auth", "can-i", "update", "leases/someone-elses", "-n", "keda", "--as", account, check=False
    )
    assert other.strip() == "no"
