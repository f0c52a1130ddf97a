"""gRPC over TLS and mutual TLS, with certificates made here, over real sockets; rotation without restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme

from scaler.rules.database_urls import parse_url
from scaler.service.metrics import NAMESPACE
from scaler.service.server import ScalerServer
from scaler.service.tls import TlsFiles
from tests.conftest import AirflowDatabase, fast_settings, free_port
from tests.support.keda import Keda
from tests.support.scrape import scrape


def pem(blobs: list[trustme.Blob]) -> bytes:
    return b"".join(blob.bytes() for blob in blobs)


def write_atomically(path: Path, data: bytes) -> None:
    # As the kubelet updates a mounted Secret: a new file swapped in, never a half-written one.
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclasses.dataclass
class Pki:
    folder: Path
    ca: trustme.CA

    @property
    def files(self) -> TlsFiles:
        return TlsFiles(self.folder / "tls.crt", self.folder / "tls.key", self.folder / "ca.crt")

    def issue_server(self, ca: trustme.CA, *, write_key: bool = True) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        write_atomically(self.files.cert, pem(cert.cert_chain_pems))
        if write_key:
            self.write_key(cert)
        self._pending = cert

    def write_key(self, cert: trustme.LeafCert | None = None) -> None:
        write_atomically(self.files.key, (cert or self._pending).private_key_pem.bytes())

    def trust_client_ca(self, ca: trustme.CA) -> None:
        write_atomically(self.folder / "ca.crt", ca.cert_pem.bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path, trustme.CA())
    pki.issue_server(pki.ca)
    pki.trust_client_ca(pki.ca)
    return pki


def credentials(server_ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(server_ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        server_ca.cert_pem.bytes(), client.private_key_pem.bytes(), pem(client.cert_chain_pems)
    )


async def serve(airflow3_db: AirflowDatabase, tls: TlsFiles) -> ScalerServer:
    settings = dataclasses.replace(fast_settings({"airflow": parse_url(airflow3_db.dsn)}), tls=tls)
    server = ScalerServer(settings)
    await server.start()
    return server


@pytest.fixture
async def mutual(pki: Pki, airflow3_db: AirflowDatabase) -> AsyncIterator[ScalerServer]:
    server = await serve(airflow3_db, pki.files)
    yield server
    await server.stop()


async def poll(port: int, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """One KEDA poll over a new connection; the status it ended with."""
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address) if creds is None else grpc.aio.secure_channel(address, creds)
    async with channel:
        try:
            await Keda(channel).poll({"database": "airflow"})
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_tls_without_client_certificates(pki: Pki, airflow3_db: AirflowDatabase) -> None:
    server = await serve(airflow3_db, dataclasses.replace(pki.files, client_ca=None))
    try:
        assert await poll(server.port, credentials(pki.ca)) == grpc.StatusCode.OK
        assert await poll(server.port, None) == grpc.StatusCode.UNAVAILABLE  # plaintext refused
        assert await poll(server.port, credentials(trustme.CA())) == grpc.StatusCode.UNAVAILABLE  # not trusted
    finally:
        await server.stop()


async def test_mutual_tls_accepts_only_clients_signed_by_the_ca(pki: Pki, mutual: ScalerServer) -> None:
    keda = pki.ca.issue_cert("keda-operator")
    assert await poll(mutual.port, credentials(pki.ca, keda)) == grpc.StatusCode.OK
    assert await poll(mutual.port, None) == grpc.StatusCode.UNAVAILABLE
    assert await poll(mutual.port, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    stranger = trustme.CA().issue_cert("keda-operator")
    assert await poll(mutual.port, credentials(pki.ca, stranger)) == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_are_served_without_a_restart(pki: Pki, mutual: ScalerServer) -> None:
    old_ca, new_ca = pki.ca, trustme.CA()
    old_client, new_client = old_ca.issue_cert("keda"), new_ca.issue_cert("keda")
    assert await poll(mutual.port, credentials(old_ca, old_client)) == grpc.StatusCode.OK

    # Half a rotation (new certificate, old key) is not served: the old pair goes on working.
    pki.issue_server(new_ca, write_key=False)
    assert await poll(mutual.port, credentials(old_ca, old_client)) == grpc.StatusCode.OK
    assert await poll(mutual.port, credentials(new_ca, old_client)) == grpc.StatusCode.UNAVAILABLE

    # The key arrives, and the client CA changes too: new connections get the new pair.
    pki.write_key()
    pki.trust_client_ca(new_ca)
    assert await poll(mutual.port, credentials(new_ca, new_client)) == grpc.StatusCode.OK
    assert await poll(mutual.port, credentials(old_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    assert await poll(mutual.port, credentials(new_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    reloads = (await scrape(mutual.http.port)).value(f"{NAMESPACE}_tls_certificate_reloads_total")
    assert reloads is not None
    assert reloads >= 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{folder}/tls.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "{folder}/ca.crt"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "{folder}/missing.crt", "--tls-key", "{folder}/tls.key"], "cannot read {folder}/missing.crt"),
        (["--tls-cert", "{folder}/ca.crt", "--tls-key", "{folder}/tls.key"], "are not a PEM certificate and its key"),
        (
            ["--tls-cert", "{folder}/tls.crt", "--tls-key", "{folder}/tls.key", "--tls-client-ca", "{folder}/tls.key"],
            "is not a PEM CA certificate",
        ),
    ],
    ids=["cert-without-key", "ca-without-cert", "missing-file", "key-does-not-match", "ca-is-not-a-certificate"],
)
def test_unusable_tls_files_fail_fast_naming_the_file(pki: Pki, flags: list[str], message: str) -> None:
    folder = str(pki.folder)
    result = subprocess.run(
        [sys.executable, "-m", "scaler", "serve", *(flag.format(folder=folder) for flag in flags)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message.format(folder=folder) in result.stderr


async def test_serve_command_speaks_mutual_tls_from_environment_variables(
    pki: Pki, airflow3_db: AirflowDatabase, tmp_path: Path
) -> None:
    port = free_port()
    files = pki.files
    env = {
        **os.environ,
        "AIRFLOW_KEDA_SCALER_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AIRFLOW_KEDA_SCALER_METRICS_ADDRESS": "127.0.0.1:0",
        "AIRFLOW_KEDA_SCALER_DATABASE": f"airflow={airflow3_db.dsn}",
        "AIRFLOW_KEDA_SCALER_TLS_CERT": str(files.cert),
        "AIRFLOW_KEDA_SCALER_TLS_KEY": str(files.key),
        "AIRFLOW_KEDA_SCALER_TLS_CLIENT_CA": str(files.client_ca),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "scaler", "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        keda = credentials(pki.ca, pki.ca.issue_cert("keda-operator"))
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", keda) as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
        assert await poll(port, keda) == grpc.StatusCode.OK
        assert await poll(port, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        process.terminate()
        assert await asyncio.to_thread(process.wait, 20) == 0
    assert f"(port {port}, mutual TLS)" in log.read_text()
