"""What `serve` and `check` read from files and repeated flags: configured databases and TLS files.

The flags are declared here, beside the code that reads them; a problem is a
ConfigError naming the flag, file and line, never a URL's password.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from scaler.errors import ConfigError, shown
from scaler.options import Option
from scaler.rules.broker_urls import ACCEPTED_BROKERS, BrokerTarget, BrokerUrlError, parse_broker_url
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

BROKER = Option(
    "--broker",
    'The Celery broker of the workers of the database NAME (as named by --database), for `drain: "true"` '
    "triggers: " + ACCEPTED_BROKERS + ". Repeatable.",
    metavar="NAME=URL",
    repeat=True,
)
BROKER_FILE = Option(
    "--broker-file",
    "A file of NAME=URL broker lines (blank lines and # comments ignored), for example a mounted Secret.",
    metavar="PATH",
)
BROKER_OPTIONS = (BROKER, BROKER_FILE)

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


def _entries(args: argparse.Namespace, flag: Option, file_flag: Option) -> list[tuple[str, str, str]]:
    """(origin, name, url) of a repeated NAME=URL flag, its variable, and its file's lines."""
    entries: list[tuple[str, str]] = [(flag.flag, entry) for entry in repeated(args, flag)]
    file = getattr(args, file_flag.dest)
    if file:
        path = Path(file)
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise ConfigError(f"{file_flag.flag} {path}: {error.strerror}") from None
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((f"{path}:{number}", line.strip()))
    found: list[tuple[str, str, str]] = []
    names: set[str] = set()
    for origin, entry in entries:
        name, eq, url = entry.partition("=")
        name = name.strip()
        if not eq or not name or not url.strip():
            raise ConfigError(f"{origin}: expected NAME=URL")
        if name in names:
            raise ConfigError(f"{origin}: {flag.flag.removeprefix('--')} '{shown(name)}' is configured twice")
        names.add(name)
        found.append((origin, name, url))
    return found


def load_databases(args: argparse.Namespace) -> dict[str, ConnectionTarget]:
    """--database entries, the variable's, and --database-file's lines, by name."""
    databases: dict[str, ConnectionTarget] = {}
    for origin, name, url in _entries(args, DATABASE, DATABASE_FILE):
        try:
            databases[name] = parse_url(url)
        except UrlError as error:
            raise ConfigError(f"{origin}: database '{name}': {error}; accepted: {ACCEPTED_FORMS}") from None
    return databases


def load_brokers(args: argparse.Namespace, databases: Mapping[str, ConnectionTarget]) -> dict[str, BrokerTarget]:
    """--broker entries, the variable's, and --broker-file's lines, by the name of the database they serve."""
    brokers: dict[str, BrokerTarget] = {}
    for origin, name, url in _entries(args, BROKER, BROKER_FILE):
        if name not in databases:
            raise ConfigError(f"{origin}: broker '{shown(name)}' names no database configured with --database")
        try:
            brokers[name] = parse_broker_url(url)
        except BrokerUrlError as error:
            raise ConfigError(f"{origin}: broker '{name}': {error}; accepted: {ACCEPTED_BROKERS}") from None
    return brokers


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
