"""What `serve` and `check` read from files and repeated flags: configured databases and TLS files.

The flags are declared here, beside the code that reads them; a problem is a
ConfigError naming the flag, file and line, never a URL's password.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaler.errors import ConfigError
from scaler.options import Option
from scaler.rules.database_urls import ACCEPTED_FORMS, ConnectionTarget, UrlError, parse_url
from scaler.service.tls import TlsError, TlsFiles, check_files

DATABASE = Option(
    "--database",
    "An Airflow database a ScaledObject can name with `database: NAME`, so credentials never travel over gRPC. "
    "Repeatable.",
    metavar="NAME=URL",
    repeat=True,
)
DATABASE_FILE = Option(
    "--database-file",
    "A file of NAME=URL lines (blank lines and # comments ignored), for example a mounted Secret.",
    metavar="PATH",
)
DATABASE_OPTIONS = (DATABASE, DATABASE_FILE)

TLS_CERT = Option("--tls-cert", "PEM certificate (chain) to serve gRPC over TLS; needs --tls-key.", metavar="PATH")
TLS_KEY = Option("--tls-key", "PEM private key of --tls-cert.", metavar="PATH")
TLS_CLIENT_CA = Option(
    "--tls-client-ca",
    "PEM CA: require client certificates signed by it (mutual TLS, KEDA's tlsClientCert/tlsClientKey). "
    "All three files are re-read when they change on disk (cert-manager rotation), without a restart.",
    metavar="PATH",
)
TLS_OPTIONS = (TLS_CERT, TLS_KEY, TLS_CLIENT_CA)


def repeated(args: argparse.Namespace, option: Option) -> list[str]:
    """A repeatable flag's values: those on the command line, else its variable's."""
    given: list[str] | None = getattr(args, option.dest)
    return given if given is not None else list(getattr(args, f"_env_{option.dest}"))


def load_databases(args: argparse.Namespace) -> dict[str, ConnectionTarget]:
    """--database entries, the variable's, and --database-file's lines, by name."""
    entries: list[tuple[str, str]] = [("--database", entry) for entry in repeated(args, DATABASE)]
    file = getattr(args, DATABASE_FILE.dest)
    if file:
        path = Path(file)
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise ConfigError(f"--database-file {path}: {error.strerror}") from None
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((f"{path}:{number}", line.strip()))
    databases: dict[str, ConnectionTarget] = {}
    for origin, entry in entries:
        name, eq, url = entry.partition("=")
        name = name.strip()
        if not eq or not name or not url.strip():
            raise ConfigError(f"{origin}: expected NAME=URL")
        if name in databases:
            raise ConfigError(f"{origin}: database '{name}' is configured twice")
        try:
            databases[name] = parse_url(url)
        except UrlError as error:
            raise ConfigError(f"{origin}: database '{name}': {error}; accepted: {ACCEPTED_FORMS}") from None
    return databases


def load_tls(args: argparse.Namespace) -> TlsFiles | None:
    """--tls-cert/--tls-key/--tls-client-ca as checked files, or None for plaintext."""
    cert, key, client_ca = (getattr(args, option.dest) for option in TLS_OPTIONS)
    if not cert and not key:
        if client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        return None
    if not cert or not key:
        raise ConfigError("--tls-cert and --tls-key go together: give both, or neither for plaintext")
    files = TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    try:
        check_files(files)
    except TlsError as error:
        raise ConfigError(str(error)) from None
    return files
