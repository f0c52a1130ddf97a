"""Benchmark 5: the server's resident memory with 1,000 ScaledObjects known and 1,000 open streams.

Measured twice: without Kubernetes access, and with it, against a real HTTP server that plays the
Kubernetes API (tests/support/fake_kubernetes.py) and holds each ScaledObject, its Deployment and two
worker pods, so that the deletion-cost reconciler reads every one of them before the figure is taken.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import Database, serve
from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from tests.support.fake_kubernetes import FakeKubernetes, kubeconfig

MIB = 1024 * 1024
TARGET = 100 * 1000 * 1000  # 100 MB


@dataclass(frozen=True)
class Figures:
    idle: int
    known: int
    loaded: int


async def measure(database: Database, scaled_objects: int, cluster: FakeKubernetes | None, folder: Path) -> Figures:
    databases = {"airflow": database.dsn}
    if cluster is None:
        process = serve(databases)
    else:
        config = folder / "kubeconfig"
        config.write_text(kubeconfig(cluster.url, "bench-token"))
        process = serve(databases, kubernetes="kubeconfig", kubeconfig=str(config), deletion_cost_interval="1")
    async with (
        process as scaler,
        grpc.aio.insecure_channel(scaler.address) as channel,
    ):
        idle = scaler.rss_bytes()
        stub = pb_grpc.ExternalScalerStub(channel)
        refs = [
            pb.ScaledObjectRef(
                name=f"workers-{i}", namespace="airflow", scalerMetadata={"database": "airflow", "queues": f"q{i % 20}"}
            )
            for i in range(scaled_objects)
        ]
        for start in range(0, scaled_objects, 100):
            await asyncio.gather(*(stub.IsActive(ref, timeout=10) for ref in refs[start : start + 100]))
        known = scaler.rss_bytes()
        streams = [stub.StreamIsActive(ref) for ref in refs]
        await asyncio.gather(*(stream.read() for stream in streams))
        if cluster is not None:
            await _until_every_target_listed(cluster, scaled_objects)
        await asyncio.sleep(1.0)
        loaded = scaler.rss_bytes()
        for stream in streams:
            stream.cancel()
    return Figures(idle, known, loaded)


async def _until_every_target_listed(cluster: FakeKubernetes, scaled_objects: int, timeout: float = 120.0) -> None:
    """Until the reconciler has listed the pods of every ScaledObject's target (a full round)."""
    deadline = time.monotonic() + timeout
    while sum(1 for request in cluster.requests if request.path.endswith("/pods")) < scaled_objects:
        if time.monotonic() > deadline:
            raise RuntimeError("the deletion-cost reconciler did not list every target's pods in time")
        await asyncio.sleep(0.2)


async def fake_cluster(scaled_objects: int) -> FakeKubernetes:
    cluster = await FakeKubernetes().start()
    for i in range(scaled_objects):
        name, template_hash = f"workers-{i}", f"h{i}"
        labels = {"component": "worker", "set": str(i)}
        cluster.add_scaled_object("airflow", name, name)
        cluster.add_workload("Deployment", "airflow", name, labels)
        for pod in ("a", "b"):
            cluster.add_pod(
                "airflow",
                f"{name}-{template_hash}-{pod}",
                {**labels, "pod-template-hash": template_hash},
                owner=("ReplicaSet", f"{name}-{template_hash}"),
            )
    return cluster


async def run(database: Database, scaled_objects: int) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        without = await measure(database, scaled_objects, None, Path(folder))
        cluster = await fake_cluster(scaled_objects)
        try:
            with_access = await measure(database, scaled_objects, cluster, Path(folder))
        finally:
            await cluster.stop()
    for label, figures in (("without Kubernetes access", without), ("with Kubernetes access", with_access)):
        print(
            f"  memory {label}: idle {figures.idle / MIB:.0f} MiB, {scaled_objects} known "
            f"{figures.known / MIB:.0f} MiB, +{scaled_objects} streams {figures.loaded / MIB:.0f} MiB",
            flush=True,
        )

    def met(figures: Figures) -> str:
        return "met" if figures.loaded < TARGET else "**missed**"

    lines = [
        "## 5. Memory",
        "",
        "Resident memory (`VmRSS` from `/proc`) of the real `serve` process, without Kubernetes access",
        "(`--kubernetes off`) and with it: a kubeconfig pointing at a real HTTP server that plays the Kubernetes",
        f"API with the {scaled_objects} ScaledObjects, their Deployments and two worker pods each; the last",
        "figure is taken after the deletion-cost reconciler has read every ScaledObject, its Deployment and its",
        "pods. With access, only kubernetes-asyncio's configuration loaders and `ApiClient` are loaded, never",
        "its generated APIs and models (`scaler/adapters/kubernetes/lazy_client.py`).",
        "",
        "| state | without Kubernetes access | with Kubernetes access |",
        "| --- | ---: | ---: |",
        f"| started, one database configured | {without.idle / MIB:.1f} MiB | {with_access.idle / MIB:.1f} MiB |",
        f"| {scaled_objects} ScaledObjects known (each called once) | {without.known / MIB:.1f} MiB | "
        f"{with_access.known / MIB:.1f} MiB |",
        f"| and {scaled_objects} `StreamIsActive` streams open | {without.loaded / MIB:.1f} MiB | "
        f"{with_access.loaded / MIB:.1f} MiB |",
        "",
        f"Target < 100 MB: {met(without)} without Kubernetes access, {met(with_access)} with it.",
    ]
    return "\n".join(lines), max(without.loaded, with_access.loaded)
