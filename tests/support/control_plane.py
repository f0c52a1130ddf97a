"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

Built from the Go module proxy by scripts/build-cluster-tools (once per machine, cached outside
the clone). The API server enforces RBAC, issues service-account tokens and carries the
aggregation layer's front-proxy settings; the controller manager runs the controllers the
scaler lives among (deployment, replicaset, statefulset, horizontal-pod-autoscaler, garbage
collector, service accounts and their tokens, endpoint slices, namespaces). There is no kubelet
and no scheduler: tests/support/fake_node.py plays the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import free_port
from tests.support.kustomize import kubectl

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD = ROOT / "scripts" / "build-cluster-tools"
CONTROLLERS = (
    "deployment,replicaset,statefulset,horizontalpodautoscaling,garbagecollector,serviceaccount,"
    "serviceaccount-token,endpointslice,namespace"
)
READY_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # prctl(2)
# The cluster is thrown away with its folder: nothing is worth a graceful stop (the API server's takes ~25 s).
STOP_TIMEOUT = 3.0


def build_tools() -> Path:
    """The folder of the built binaries (built now if missing: minutes, once per machine)."""
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-cluster-tools failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def kubeconfig(server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None, token: str = "") -> str:
    user: dict[str, str] = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
    )


@dataclass
class ControlPlane:
    folder: Path
    bin: Path
    url: str = ""
    ca_file: Path = field(default_factory=Path)
    admin: Path = field(default_factory=Path)  # the admin's kubeconfig (system:masters)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # by binary
    keda_metrics: str = ""  # the URL of KEDA's operator's Prometheus metrics, once start_keda() ran
    _session: aiohttp.ClientSession | None = None

    async def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """kubectl as the cluster's admin; its output (CalledProcessError with its message when it fails)."""
        process = await asyncio.create_subprocess_exec(
            kubectl(),
            f"--kubeconfig={self.admin}",
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 120)
        if check and process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode or 1, ["kubectl", *args], out, err)
        return out.decode()

    async def apply(self, resources: Sequence[dict[str, Any]]) -> None:
        await self.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(r) for r in resources))

    async def api(self, method: str, path: str, body: object = None, *, content_type: str = "") -> Any:
        """One request to the API server as the admin; the decoded JSON answer."""
        assert self._session is not None
        headers = {"Content-Type": content_type or "application/json"}
        async with self._session.request(
            method, self.url + path, data=None if body is None else json.dumps(body), headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:500]}")
            return json.loads(text) if text else None

    def token_kubeconfig(self, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's), as a pod would."""
        path = self.folder / f"token-{len(list(self.folder.glob('token-*')))}.kubeconfig"
        path.write_text(kubeconfig(self.url, self.ca_file, token=token))
        return path

    async def service_account_token(self, namespace: str, name: str) -> str:
        """A token for the ServiceAccount from the TokenRequest API, as the kubelet mounts one."""
        return (await self.kubectl("create", "token", name, "-n", namespace, "--duration=1h")).strip()


def _write_certificates(folder: Path) -> dict[str, Path]:
    ca, front_ca = trustme.CA(), trustme.CA()
    files: dict[str, Path] = {"ca": folder / "ca.crt", "front-ca": folder / "front-ca.crt"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    front_ca.cert_pem.write_to_path(str(files["front-ca"]))

    def leaf(name: str, issuer: trustme.CA, *identities: str, cn: str, org: str | None = None) -> None:
        cert = issuer.issue_cert(*identities, common_name=cn, organization_name=org)
        files[f"{name}.crt"], files[f"{name}.key"] = folder / f"{name}.crt", folder / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(files[f"{name}.crt"]))
        cert.private_key_pem.write_to_path(str(files[f"{name}.key"]))

    leaf("apiserver", ca, "127.0.0.1", "localhost", "kubernetes.default.svc", cn="kube-apiserver")
    leaf("admin", ca, "admin", cn="admin", org="system:masters")
    leaf("kcm", ca, "kcm", cn="system:kube-controller-manager")
    leaf("front-proxy-client", front_ca, "front-proxy-client", cn="front-proxy-client")
    # Service-account tokens are signed with this key and checked with its public half.
    key = ec.generate_private_key(ec.SECP256R1())
    files["sa.key"], files["sa.pub"] = folder / "sa.key", folder / "sa.pub"
    files["sa.key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files["sa.pub"].write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return files


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies (even by SIGKILL), so no
    etcd, API server or KEDA outlives a killed test run and holds its ports and memory."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(plane: ControlPlane, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
    with (plane.folder / f"{name}.log").open("wb") as log:
        plane.processes[name] = subprocess.Popen(
            [str(plane.bin / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=_die_with_parent,
        )


async def _until_ready(plane: ControlPlane) -> None:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while True:
        with contextlib.suppress(aiohttp.ClientError, RuntimeError, json.JSONDecodeError):
            assert plane._session is not None
            async with plane._session.get(plane.url + "/readyz") as response:
                if response.status == 200:
                    return
        for name, process in plane.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited {process.returncode}; its log is in {plane.folder}")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"the API server was not ready within {READY_TIMEOUT:g}s; logs in {plane.folder}")
        await asyncio.sleep(0.2)


def _prepare(folder: Path, tools: Path, api: int) -> tuple[ControlPlane, dict[str, Path]]:
    """Certificates, keys and kubeconfigs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = _write_certificates(folder)
    plane = ControlPlane(folder, tools, url=f"https://127.0.0.1:{api}", ca_file=files["ca"])
    plane.admin = folder / "admin.kubeconfig"
    plane.admin.write_text(kubeconfig(plane.url, files["ca"], cert=files["admin.crt"], key=files["admin.key"]))
    (folder / "kcm.kubeconfig").write_text(
        kubeconfig(plane.url, files["ca"], cert=files["kcm.crt"], key=files["kcm.key"])
    )
    return plane, files


@contextlib.asynccontextmanager
async def control_plane(folder: Path, tools: Path) -> AsyncIterator[ControlPlane]:
    """etcd, kube-apiserver and kube-controller-manager on free loopback ports, stopped and removed on exit."""
    etcd, peer, api, kcm = free_port(), free_port(), free_port(), free_port()
    plane, files = await asyncio.to_thread(_prepare, folder, tools, api)
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["admin.crt"]), str(files["admin.key"]))
    plane._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    try:
        _start(
            plane,
            "etcd",
            [
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--log-level=warn",
            ],
        )
        _start(
            plane,
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api}",
                # Not loopback: the API server writes it into the `kubernetes` Service's endpoints, which refuse
                # loopback. Nothing connects to it.
                "--advertise-address=10.0.0.1",
                f"--tls-cert-file={files['apiserver.crt']}",
                f"--tls-private-key-file={files['apiserver.key']}",
                f"--client-ca-file={files['ca']}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={files['sa.pub']}",
                f"--service-account-signing-key-file={files['sa.key']}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--authorization-mode=Node,RBAC",
                f"--requestheader-client-ca-file={files['front-ca']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={files['front-proxy-client.crt']}",
                f"--proxy-client-key-file={files['front-proxy-client.key']}",
            ],
        )
        await _until_ready(plane)
        _start(
            plane,
            "kube-controller-manager",
            [
                f"--kubeconfig={folder / 'kcm.kubeconfig'}",
                f"--authentication-kubeconfig={folder / 'kcm.kubeconfig'}",
                f"--authorization-kubeconfig={folder / 'kcm.kubeconfig'}",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={files['sa.key']}",
                f"--root-ca-file={files['ca']}",
                "--use-service-account-credentials",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm}",
                "--horizontal-pod-autoscaler-sync-period=2s",
            ],
        )
        yield plane
    finally:
        await plane._session.close()
        for process in reversed(plane.processes.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in plane.processes.values():
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def keda_crds(tools: Path) -> list[Path]:
    """KEDA's CRDs at the built release, from its module in Go's module cache (the build downloaded it)."""
    version = tools.name.rsplit("keda-", 1)[-1]
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    folder = Path(cache) / f"github.com/kedacore/keda/v2@{version}" / "config" / "crd" / "bases"
    crds = sorted(folder.glob("*.yaml"))
    if not crds:
        raise RuntimeError(f"no KEDA CRDs in {folder}: run scripts/build-cluster-tools")
    return crds


def _keda_certificates(folder: Path) -> None:
    """The operator's metrics gRPC service and the adapter's client share one CA (ca.crt, tls.crt, tls.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="keda-operator")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(folder / "tls.key"))


async def start_keda(plane: ControlPlane) -> None:
    """KEDA's operator and metrics adapter as processes, the adapter serving external metrics to the HPA
    through the aggregation layer; stopped with the control plane.

    The APIService names a Service of type ExternalName `localhost`: the aggregator resolves it to
    https://localhost:PORT, so the adapter listens on loopback and needs no network namespace.
    """
    for crd in await asyncio.to_thread(keda_crds, plane.bin):
        # Server-side: the ScaledJob CRD is too large for the annotation client-side apply keeps.
        await plane.kubectl("apply", "--server-side", "-f", str(crd))
    certs = plane.folder / "keda-certs"
    await asyncio.to_thread(_keda_certificates, certs)
    metrics_service, adapter, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(plane.admin),
        "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda",
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": "keda",
        "OPERATOR_NAME": "keda-operator",
    }
    _start(
        plane,
        "keda-operator",
        [
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--metrics-service-bind-address=127.0.0.1:{metrics_service}",
            f"--cert-dir={certs}",
            "--leader-elect=false",
        ],
        env,
    )
    plane.keda_metrics = f"http://127.0.0.1:{metrics}/metrics"
    _start(
        plane,
        "keda-adapter",
        [
            f"--metrics-service-address=127.0.0.1:{metrics_service}",
            "--metrics-service-grpc-authority=localhost",
            "--bind-address=127.0.0.1",
            f"--secure-port={adapter}",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            f"--kubeconfig={plane.admin}",
            f"--lister-kubeconfig={plane.admin}",
            f"--authentication-kubeconfig={plane.admin}",
            f"--authorization-kubeconfig={plane.admin}",
        ],
        env,
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "keda-metrics-apiserver", "namespace": "keda"},
        "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"name": "https", "port": adapter}]},
    }
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {
            "service": {"name": "keda-metrics-apiserver", "namespace": "keda", "port": adapter},
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "insecureSkipTLSVerify": True,  # the adapter's serving certificate is for loopback
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    await plane.apply([service, api_service])
    await plane.kubectl(
        "wait", "--for=condition=Available", "apiservice/v1beta1.external.metrics.k8s.io", "--timeout=120s"
    )
