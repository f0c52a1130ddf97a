"""The edge: what a caller may send, checked before anything parses, caches, logs or connects to it.

Anyone who can write a ScaledObject (or set an environment variable of a worker
Deployment, which `connectionFromEnv` forwards) sends the shared scaler whatever
metadata they like. This module bounds its size, checks the ScaledObject's name,
and applies the operator's policy for database URLs that arrive in metadata.

Pure: no I/O. Host rules compare the URL's host text; a host name is never
resolved here (resolving would be I/O, and the address may change by the time
the driver connects), so CIDR rules match only URLs that name an IP address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from scaler.errors import InvalidMetadata, NotPermitted, shown
from scaler.options import positive, setting
from scaler.rules.database_urls import ConnectionTarget
from scaler.rules.trigger_metadata import NAME_KEYS, TriggerSpec, parse_metadata

# The longest status message sent to a caller: a default gRPC client refuses trailers over 8 KiB
# (RESOURCE_EXHAUSTED instead of our code), and `kubectl describe` shows the message in one line.
STATUS_MESSAGE_LIMIT = 512

# Kubernetes object names: DNS subdomains (RFC 1123), at most 253 characters.
_KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

ConnectionFromEnv = Literal["allow", "deny"]
CONNECTION_FROM_ENV_MODES: tuple[ConnectionFromEnv, ...] = ("allow", "deny")


@dataclass(frozen=True)
class Limits:
    """How much metadata one call may carry; larger is INVALID_ARGUMENT naming the key and the limit."""

    # One value: a database URL with TLS options fits in well under 1 KiB.
    max_value_bytes: int = setting(
        4096,
        flag="--max-metadata-value",
        parse=positive(int),
        metavar="BYTES",
        help="The longest metadata value a call may carry; longer is INVALID_ARGUMENT naming the key.",
    )
    # The whole map (keys and values, KEDA's own keys included).
    max_metadata_bytes: int = setting(
        16384,
        flag="--max-metadata-bytes",
        parse=positive(int),
        metavar="BYTES",
        help="The largest metadata map (all keys and values) a call may carry; larger is INVALID_ARGUMENT.",
    )
    # A real trigger lists a few queues (the chart's worker sets, one per queue) and one or two executors;
    # a list of thousands is an attack on memory and on every call's filtering.
    max_trigger_names: int = setting(
        64,
        flag="--max-trigger-names",
        parse=positive(int),
        metavar="N",
        help="Most names one trigger may list in queues, excludeQueues and excludeExecutors together; more is "
        "INVALID_ARGUMENT naming the key.",
    )
    # Hard caps, whatever the memory budget (budget.py) would admit: each stream and ScaledObject
    # costs memory until it ends or falls silent.
    max_streams: int = setting(
        20_000,
        flag="--max-streams",
        parse=positive(int),
        metavar="N",
        help="Most StreamIsActive streams open at once; one more is RESOURCE_EXHAUSTED. gRPC's own pending-call "
        "limits follow it, so a restart's burst of reopened streams is taken up, not cancelled.",
    )
    max_scaled_objects: int = setting(
        20_000,
        flag="--max-scaled-objects",
        parse=positive(int),
        metavar="N",
        help="Most ScaledObjects (namespace/name) known at once; a new one past it is RESOURCE_EXHAUSTED until "
        "silent ones expire (--metrics-series-ttl).",
    )
    # So that one namespace (one team, or one runaway script) cannot take every slot of the shared scaler.
    max_scaled_objects_per_namespace: int = setting(
        1000,
        flag="--max-scaled-objects-per-namespace",
        parse=positive(int),
        metavar="N",
        help="Most ScaledObjects known at once in one namespace; a new one past it is RESOURCE_EXHAUSTED, other "
        "namespaces are not affected, and the known ones keep their answers.",
    )


def check_request(namespace: str, name: str, metadata: Mapping[str, str], limits: Limits) -> None:
    """Refuse an oversized map or a name that is no Kubernetes name, before anything else looks at it.

    >>> check_request("airflow", "celery-worker", {"queues": "x" * 5000}, Limits())
    Traceback (most recent call last):
    ...
    scaler.errors.InvalidMetadata: metadata key 'queues': its value is 5000 bytes; accepted: at most 4096 bytes \
(--max-metadata-value)
    """
    total = 0
    for key, value in metadata.items():
        size = len(value.encode())
        total += len(key.encode()) + size
        if size > limits.max_value_bytes or len(key) > limits.max_value_bytes:
            raise InvalidMetadata(
                shown(key),
                f"its value is {size} bytes",
                f"at most {limits.max_value_bytes} bytes (--max-metadata-value)",
            )
    if total > limits.max_metadata_bytes:
        raise InvalidMetadata(
            "(all)",
            f"the metadata map is {total} bytes",
            f"at most {limits.max_metadata_bytes} bytes in all (--max-metadata-bytes)",
        )
    names = 0
    for key in NAME_KEYS:
        # The names as parsing will split them: counted here, before a spec holding them exists.
        names += sum(1 for part in metadata.get(key, "").split(",") if part.strip())
        if names > limits.max_trigger_names:
            raise InvalidMetadata(
                key,
                f"the trigger lists more than {limits.max_trigger_names} names",
                f"at most {limits.max_trigger_names} names in queues, excludeQueues and excludeExecutors together "
                "(--max-trigger-names)",
            )
    for field, value in (("namespace", namespace), ("name", name)):
        if not _KUBERNETES_NAME.fullmatch(value):
            raise InvalidMetadata(
                f"(ScaledObject {field})", f"'{shown(value)}' is not a Kubernetes name", "a DNS subdomain name"
            )


@dataclass(frozen=True)
class HostRule:
    """One --allowed-hosts entry: a host name, host:port, or an IP network (CIDR)."""

    host: str | None = None  # lower case; None for a network rule
    port: int | None = None  # None: any port
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def allows(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False  # a name: never resolved here (see the module's docstring)
        return host.lower().rstrip(".") == self.host


def parse_host_rules(text: str) -> tuple[HostRule, ...]:
    """`db.internal,10.0.0.0/8,pg:6432,[fd00::1]:5432` -> rules; ValueError naming a bad entry.

    >>> [rule.allows("10.1.2.3", 5432) for rule in parse_host_rules("10.0.0.0/8")]
    [True]
    >>> parse_host_rules("pg:6432")[0].allows("PG", 5432)
    False
    """
    rules: list[HostRule] = []
    for number, entry in enumerate((part.strip() for part in text.split(",")), 1):
        if not entry:
            continue
        try:
            rules.append(_host_rule(entry))
        except ValueError:
            if "://" in entry or "@" in entry or ":/" in entry:
                # A URL given by mistake, cut at a comma of its password: not shown at all, no mask can tell.
                raise ValueError(f"entry {number} looks like a URL, not a host, host:port or CIDR network") from None
            raise ValueError(f"'{shown(entry)}' is not a host, host:port or CIDR network") from None
    return tuple(rules)


def _host_rule(entry: str) -> HostRule:
    if "/" in entry:
        return HostRule(network=ipaddress.ip_network(entry, strict=False))
    host, port = entry, None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise ValueError(entry)
        if rest:
            port = _port(rest.removeprefix(":"))
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = _port(port_text)
    if not host:
        raise ValueError(entry)
    try:
        return HostRule(network=ipaddress.ip_network(host), port=port)
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", host):
        raise ValueError(entry)
    return HostRule(host=host.lower().rstrip("."), port=port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(text)
    return int(text)


@dataclass(frozen=True)
class ConnectionPolicy:
    """What an operator lets a ScaledObject connect to through `connectionFromEnv`.

    Databases configured on the scaler (`database: NAME`) are the operator's own and
    are never checked here.
    """

    connection_from_env: ConnectionFromEnv = setting(
        "allow",
        flag="--connection-from-env",
        choices=CONNECTION_FROM_ENV_MODES,
        help="allow: a ScaledObject may send a database URL (connectionFromEnv), and the scaler connects where it "
        "points; deny: only databases configured on the scaler (database: NAME) are used, and a URL is refused "
        "with PERMISSION_DENIED before any connection.",
    )
    allowed_hosts: tuple[HostRule, ...] = setting(
        (),
        flag="--allowed-hosts",
        parse=parse_host_rules,
        metavar="H1,H2",
        shown="",
        help="With connectionFromEnv allowed, the only hosts its URLs may name: host, host:port, or an IP network "
        "in CIDR form (matched against IP addresses written in the URL; names are not resolved). Empty: any host.",
    )
    # URL options that make the scaler read local files (sslrootcert, sslkey, passfile, ssl_ca, ...)
    # and Unix socket hosts: off unless the operator allows them.
    allow_local_files: bool = setting(
        False,
        flag="--connection-files",
        choices=("deny", "allow"),
        parse=lambda text: text == "allow",
        shown="deny",
        help="Whether connectionFromEnv URLs may name files or sockets on the scaler's machine (sslrootcert, "
        "sslcert, sslkey, sslcrl, passfile, ssl_ca, ssl_cert, ssl_key, a Unix socket host).",
    )

    def refuse_before_parsing(self, metadata: Mapping[str, str]) -> None:
        """With `deny`, a URL in metadata is refused without even being parsed."""
        if self.connection_from_env == "deny" and metadata.get("connectionFromEnv", "").strip():
            raise NotPermitted(
                "connectionFromEnv",
                "this scaler does not accept database URLs from ScaledObjects (--connection-from-env deny)",
                "database: NAME, naming a database configured on the scaler",
            )

    def parse(self, metadata: Mapping[str, str]) -> TriggerSpec:
        """The trigger's spec under this policy: what `serve` and `check` both go through.

        InvalidMetadata for metadata the scaler cannot use, NotPermitted for what the policy refuses.
        """
        self.refuse_before_parsing(metadata)
        spec = parse_metadata(metadata)
        if isinstance(spec.database, ConnectionTarget):
            self.check(spec.database)
        return spec

    def check(self, target: ConnectionTarget) -> None:
        """NotPermitted when the operator's policy does not let a ScaledObject reach this target."""
        if not self.allow_local_files:
            if target.local_files:
                raise NotPermitted(
                    "connectionFromEnv",
                    f"the URL option {target.local_files[0]} names a file on the scaler's machine",
                    "URLs without local file options (an operator may allow them: --connection-files allow)",
                )
            if any(host.startswith("/") or host.startswith("@") for host, _ in target.hosts):
                raise NotPermitted(
                    "connectionFromEnv",
                    "the URL names a Unix socket on the scaler's machine",
                    "a TCP host (an operator may allow sockets: --connection-files allow)",
                )
        if self.allowed_hosts:
            for host, port in target.hosts:
                if not any(rule.allows(host, port) for rule in self.allowed_hosts):
                    raise NotPermitted(
                        "connectionFromEnv",
                        f"host {shown(host)}:{port} is not in the scaler's --allowed-hosts",
                        "a host the operator listed",
                    )
