"""gRPC TLS from PEM files on disk, reloaded when they change.

KEDA dials with TLS when a trigger sets `enableTLS` or its TriggerAuthentication
gives `caCert` (and, for mutual TLS, `tlsClientCert`/`tlsClientKey`). The files
are usually a mounted Secret that cert-manager renews: the kubelet swaps the
whole folder at once, and gRPC asks for the certificate configuration on every
new connection, so a change on disk is served from the next connection on,
without a restart.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A certificate, key or CA file is missing or unusable; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    # When set, clients must present a certificate signed by this CA (mutual TLS).
    client_ca: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)


def check_files(files: TlsFiles) -> None:
    """Raise TlsError naming the file when the files cannot serve TLS."""
    for path in files.paths:
        try:
            path.read_bytes()
        except OSError as error:
            raise TlsError(f"cannot read {path}: {error.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as error:
        raise TlsError(
            f"--tls-cert {files.cert} and --tls-key {files.key} are not a PEM certificate and its key "
            f"({error.reason or error})"
        ) from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as error:
            raise TlsError(f"--tls-client-ca {files.client_ca} is not a PEM CA certificate ({error.reason})") from None


class CertificateReloader:
    """gRPC's certificate configuration fetcher: a new configuration when the files changed, else None.

    gRPC calls it on its own thread for every new connection; a stat of each
    file is all it costs when nothing changed. A half-written rotation (a
    cert without its new key) is not served: it waits for the next change.
    """

    def __init__(self, files: TlsFiles, *, on_reload: Callable[[], None] | None = None) -> None:
        self.files = files
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._signature = self._stat()
        self.initial = self._load()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return None
            try:
                check_files(self.files)
                configuration = self._load()
            except (TlsError, OSError) as error:
                # Keep serving the old certificate; try again on the next connection.
                log.warning("TLS files changed but cannot be used yet, keeping the old certificate: %s", error)
                return None
            self._signature = signature
        log.info("TLS certificate files changed on disk: serving the new certificate to new connections")
        if self._on_reload is not None:
            self._on_reload()
        return configuration

    def _stat(self) -> tuple[tuple[float, int, int], ...] | None:
        try:
            return tuple(_identity(os.stat(path)) for path in self.files.paths)
        except OSError:
            return None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        files = self.files
        return grpc.ssl_server_certificate_configuration(
            [(files.key.read_bytes(), files.cert.read_bytes())],
            root_certificates=files.client_ca.read_bytes() if files.client_ca else None,
        )


def _identity(stat: os.stat_result) -> tuple[float, int, int]:
    # The inode changes when the kubelet swaps a Secret's folder; mtime and size when a file is rewritten.
    return (stat.st_mtime, stat.st_size, stat.st_ino)


def server_credentials(files: TlsFiles, *, on_reload: Callable[[], None] | None = None) -> grpc.ServerCredentials:
    """TLS (mutual when files.client_ca is set) that follows the files on disk."""
    check_files(files)
    reloader = CertificateReloader(files, on_reload=on_reload)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,  # type: ignore[arg-type]  # grpc-stubs omits the documented None ("unchanged")
        require_client_authentication=files.client_ca is not None,
    )
