"""The `airflow-keda-scaler` command: serve, check, demo.

Every flag can also be set by an environment variable named
AIRFLOW_KEDA_SCALER_<FLAG> (upper case, dashes as underscores); a flag given on
the command line wins. Repeatable flags (--database) take several
whitespace-separated values from their variable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scaler import __version__
from scaler.admission import CONNECTION_FROM_ENV_MODES, ConnectionPolicy, Limits, parse_host_rules
from scaler.databases.postgres import PoolSettings
from scaler.databases.registry import RegistrySettings
from scaler.databases.urls import ACCEPTED_FORMS, ConnectionTarget, UrlError, parse_url
from scaler.http_server import split_address
from scaler.kubernetes.access import KUBERNETES_MODES, KubernetesSettings, NoKubernetes
from scaler.logs import FORMATS, configure_logging
from scaler.tls import TlsError, TlsFiles, check_files

ENV_PREFIX = "AIRFLOW_KEDA_SCALER_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class ConfigError(ValueError):
    """A flag or environment variable is unusable; the message is safe to print."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"'{text}' must be greater than 0")
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,  # noqa: A002 - argparse's own word
    default: Any = None,
    type: Callable[[str], Any] = str,  # noqa: A002
    repeat: bool = False,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    secret: bool = False,
) -> None:
    """Add a flag whose default comes from its environment variable, if set."""
    env = env_name(flag)
    raw = os.environ.get(env)
    shown = "" if default is None or secret else f"; default: {default}"
    text = f"{help} [env {env}{shown}]"
    if repeat:
        parser.add_argument(flag, action="append", default=None, type=type, metavar=metavar, help=text)
        parser.set_defaults(**{f"_env_{flag.lstrip('-').replace('-', '_')}": raw.split() if raw else []})
    else:
        # argparse runs `type` on string defaults, so a bad variable is reported like a bad flag.
        parser.add_argument(
            flag, default=raw if raw is not None else default, type=type, metavar=metavar, choices=choices, help=text
        )


def _repeated(args: argparse.Namespace, dest: str) -> list[str]:
    given: list[str] | None = getattr(args, dest)
    return given if given is not None else list(getattr(args, f"_env_{dest}"))


def _add_database_flags(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--database",
        repeat=True,
        metavar="NAME=URL",
        help="An Airflow database a ScaledObject can name with `database: NAME`, so credentials never travel "
        "over gRPC. Repeatable.",
    )
    _add(
        parser,
        "--database-file",
        metavar="PATH",
        help="A file of NAME=URL lines (blank lines and # comments ignored), for example a mounted Secret.",
    )


def _add_pool_flags(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--connect-timeout",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="How long to wait for a database connection.",
    )
    _add(
        parser,
        "--query-timeout",
        type=_positive(float),
        default=2.0,
        metavar="SECONDS",
        help="How long the snapshot query may run (KEDA's HPA path allows 3 s per call).",
    )


def _host_rules(text: str) -> str:
    try:
        parse_host_rules(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_policy_flags(parser: argparse.ArgumentParser) -> None:
    """What a ScaledObject may reach with connectionFromEnv (serve) or --connection (check)."""
    policy = ConnectionPolicy()
    _add(
        parser,
        "--connection-from-env",
        default=policy.connection_from_env,
        choices=CONNECTION_FROM_ENV_MODES,
        help="allow: a ScaledObject may send a database URL (connectionFromEnv), and the scaler connects where it "
        "points; deny: only databases configured on the scaler (database: NAME) are used, and a URL is refused "
        "with PERMISSION_DENIED before any connection.",
    )
    _add(
        parser,
        "--allowed-hosts",
        type=_host_rules,
        default="",
        metavar="H1,H2",
        help="With connectionFromEnv allowed, the only hosts its URLs may name: host, host:port, or an IP network "
        "in CIDR form (matched against IP addresses written in the URL; names are not resolved). Empty: any host.",
    )
    _add(
        parser,
        "--connection-files",
        default="allow" if policy.allow_local_files else "deny",
        choices=("deny", "allow"),
        help="Whether connectionFromEnv URLs may name files or sockets on the scaler's machine (sslrootcert, "
        "sslcert, sslkey, sslcrl, passfile, ssl_ca, ssl_cert, ssl_key, a Unix socket host).",
    )


def connection_policy(args: argparse.Namespace) -> ConnectionPolicy:
    return ConnectionPolicy(
        connection_from_env=args.connection_from_env,
        allowed_hosts=parse_host_rules(args.allowed_hosts or ""),
        allow_local_files=args.connection_files == "allow",
    )


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    limits, registry = Limits(), RegistrySettings()
    positive = _positive(int)
    _add(
        parser,
        "--max-metadata-value",
        type=positive,
        default=limits.max_value_bytes,
        metavar="BYTES",
        help="The longest metadata value a call may carry; longer is INVALID_ARGUMENT naming the key.",
    )
    _add(
        parser,
        "--max-metadata-bytes",
        type=positive,
        default=limits.max_metadata_bytes,
        metavar="BYTES",
        help="The largest metadata map (all keys and values) a call may carry; larger is INVALID_ARGUMENT.",
    )
    _add(
        parser,
        "--max-streams",
        type=positive,
        default=limits.max_streams,
        metavar="N",
        help="Most StreamIsActive streams open at once; one more is RESOURCE_EXHAUSTED. gRPC's own pending-call "
        "limits follow it, so a restart's burst of reopened streams is taken up, not cancelled.",
    )
    _add(
        parser,
        "--max-scaled-objects",
        type=positive,
        default=limits.max_scaled_objects,
        metavar="N",
        help="Most ScaledObjects (namespace/name) known at once; a new one past it is RESOURCE_EXHAUSTED until "
        "silent ones expire (--metrics-series-ttl).",
    )
    _add(
        parser,
        "--max-databases",
        type=positive,
        default=registry.max_databases,
        metavar="N",
        help="Most distinct connectionFromEnv databases open at once (configured databases do not count); one more "
        "is RESOURCE_EXHAUSTED until idle ones close (--pool-idle-timeout).",
    )


def _address(text: str) -> str:
    try:
        split_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _plot_file(text: str) -> str:
    if Path(text).suffix.lower() not in (".png", ".svg", ".html"):
        raise argparse.ArgumentTypeError(f"'{text}' must end in .png, .svg or .html")
    return text


def _add_metrics_address(parser: argparse.ArgumentParser, *, default: str) -> None:
    _add(
        parser,
        "--metrics-address",
        type=_address,
        default=default,
        metavar="HOST:PORT",
        help="Where to serve Prometheus metrics (/metrics) and HTTP probes (/healthz, /readyz); port 0 for any.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-keda-scaler",
        description="A KEDA external scaler that sizes Airflow Celery workers from the Airflow database.",
        epilog="Every flag can also be set by the environment variable shown with it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add(parser, "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="Log level.")
    _add(
        parser,
        "--log-format",
        default="text",
        choices=FORMATS,
        help="text for people, json for one object a line with the decision's fields (scaled_object, demand, "
        "workers, reason, database, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="Serve KEDA's externalscaler gRPC API.",
        description="Serve KEDA's externalscaler gRPC API, with gRPC health and reflection.",
    )
    _add(
        serve,
        "--grpc-address",
        default="0.0.0.0:6000",
        metavar="HOST:PORT",
        help="Where to listen for KEDA's gRPC calls.",
    )
    _add_database_flags(serve)
    _add(
        serve,
        "--refresh-interval",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="How old a database's shared snapshot may get before the next call refreshes it; "
        "at most one snapshot query per database per interval, whatever the number of ScaledObjects.",
    )
    _add(
        serve,
        "--watch-interval",
        type=_positive(float),
        default=0.5,
        metavar="SECONDS",
        help="How often a database with open StreamIsActive streams (external-push) is read for changes: one "
        "read per interval for all its streams; a queued task reaches KEDA within about this long.",
    )
    _add_pool_flags(serve)
    _add(
        serve, "--pool-size", type=_positive(int), default=2, metavar="N", help="Most connections per Airflow database."
    )
    _add(
        serve,
        "--pool-idle-timeout",
        type=_positive(float),
        default=300.0,
        metavar="SECONDS",
        help="Close a database's pool after this long without a call.",
    )
    _add_metrics_address(serve, default="0.0.0.0:8080")
    _add(
        serve,
        "--metrics-series-ttl",
        type=_positive(float),
        default=600.0,
        metavar="SECONDS",
        help="Remove a ScaledObject's metric series after this long without a call from KEDA (bounded cardinality "
        "when ScaledObjects are deleted).",
    )
    _add(serve, "--tls-cert", metavar="PATH", help="PEM certificate (chain) to serve gRPC over TLS; needs --tls-key.")
    _add(serve, "--tls-key", metavar="PATH", help="PEM private key of --tls-cert.")
    _add(
        serve,
        "--tls-client-ca",
        metavar="PATH",
        help="PEM CA: require client certificates signed by it (mutual TLS, KEDA's tlsClientCert/tlsClientKey). "
        "All three files are re-read when they change on disk (cert-manager rotation), without a restart.",
    )
    _add(
        serve,
        "--kubernetes",
        default="auto",
        choices=KUBERNETES_MODES,
        help="How to reach the Kubernetes API to keep worker pods' pod-deletion-cost: in-cluster (the pod's "
        "service account), kubeconfig, auto (in-cluster when KUBERNETES_SERVICE_HOST is set, else a kubeconfig "
        "if one exists, else none), or off. Without it the busy-worker floor still applies.",
    )
    _add(
        serve,
        "--kubeconfig",
        metavar="PATH",
        help="The kubeconfig for --kubernetes kubeconfig/auto; default: $KUBECONFIG, else ~/.kube/config.",
    )
    _add(
        serve,
        "--deletion-cost-interval",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="How often worker pods' pod-deletion-cost is brought up to date (one pod list per scale target).",
    )
    _add(
        serve,
        "--kubernetes-patch-rate",
        type=_positive(float),
        default=10.0,
        metavar="PER_SECOND",
        help="Most pod patches per second, over all ScaledObjects.",
    )
    _add_policy_flags(serve)
    _add_limit_flags(serve)
    _add(
        serve,
        "--shutdown-grace",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cancelled.",
    )

    check = commands.add_parser(
        "check",
        help="Connect to an Airflow database and print the demand and the workers the scaler would ask for.",
        description="Connect, print demand per queue and state and the workers the scaler would ask for; "
        "exit 1 with a one-line reason when the database cannot be read, 2 when the input is wrong.",
    )
    _add(
        check,
        "--connection",
        metavar="URL",
        secret=True,
        help=f"The Airflow database URL, in any form Airflow uses: {ACCEPTED_FORMS}. Prefer the variable: "
        "a URL on the command line shows in the process list.",
    )
    _add_database_flags(check)
    _add(check, "--queues", metavar="Q1,Q2", help="Count only these Celery queues (metadata `queues`).")
    _add(check, "--exclude-queues", metavar="Q1,Q2", help="Never count these queues (metadata `excludeQueues`).")
    _add(
        check,
        "--exclude-executors",
        metavar="E1,E2",
        help="Never count tasks of these executors (metadata `excludeExecutors`).",
    )
    _add(check, "--concurrency", metavar="N", help="Celery worker_concurrency (metadata `concurrency`); default 16.")
    _add(
        check,
        "--activation-threshold",
        metavar="N",
        help="Active when demand is above this (metadata `activationThreshold`); default 0.",
    )
    _add_pool_flags(check)
    _add_policy_flags(check)

    demo = commands.add_parser(
        "demo",
        help="Run the scaler on an embedded PostgreSQL with a synthetic Airflow workload and watch it decide.",
        description="Start a throwaway PostgreSQL with Airflow's task_instance table, a synthetic workload on two "
        "queues, and the real scaler on gRPC, then poll it the way KEDA does and print what it answers.",
    )
    _add(
        demo,
        "--grpc-address",
        default="127.0.0.1:6000",
        metavar="HOST:PORT",
        help="Where the demo's scaler listens (use port 0 for any free port).",
    )
    _add(
        demo,
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Stop after this long; 0 runs until Ctrl-C.",
    )
    _add_metrics_address(demo, default="127.0.0.1:8080")
    _add(demo, "--seed", type=int, default=1, metavar="N", help="Seed of the synthetic workload.")
    _add(
        demo,
        "--cooldown",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="The simulated ScaledObjects' cooldownPeriod (shrunk from KEDA's 300 s so a short run scales to zero).",
    )
    _add(
        demo,
        "--plot",
        type=_plot_file,
        metavar="FILE",
        help="At the end, write demand against workers and replicas over time to FILE (.png, .svg or .html).",
    )
    _add(
        demo,
        "--poll-interval",
        type=_positive(float),
        default=2.0,
        metavar="SECONDS",
        help="The simulated ScaledObjects' pollingInterval: how often the KEDA-shaped client polls.",
    )
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The command parsers by name (serve, check, demo); the docs tests read their flags."""
    for action in parser._actions:  # argparse has no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> list[str]:
    """A parser's long flags, without --help and --version."""
    return [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--version")
    ]


def load_databases(args: argparse.Namespace) -> dict[str, ConnectionTarget]:
    """--database entries, the variable's, and --database-file's lines, by name."""
    entries: list[tuple[str, str]] = [("--database", entry) for entry in _repeated(args, "database")]
    if args.database_file:
        path = Path(args.database_file)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # check prints its own one-line verdict; the service's log lines would repeat it.
    quiet = args.command == "check" and args.log_level != "debug"
    configure_logging("error" if quiet else args.log_level, args.log_format)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check":
            from scaler.check import run_check

            return asyncio.run(run_check(args, databases=load_databases(args), policy=connection_policy(args)))
        from scaler.demo import run_demo

        return asyncio.run(run_demo(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from scaler.server import ServerSettings, serve

    settings = ServerSettings(
        grpc_address=args.grpc_address,
        shutdown_grace=args.shutdown_grace,
        registry=RegistrySettings(
            refresh_interval=args.refresh_interval,
            watch_interval=args.watch_interval,
            idle_timeout=args.pool_idle_timeout,
            max_databases=args.max_databases,
            pool=PoolSettings(
                max_size=args.pool_size,
                connect_timeout=args.connect_timeout,
                query_timeout=args.query_timeout,
            ),
        ),
        databases=load_databases(args),
        metrics_address=args.metrics_address,
        series_ttl=args.metrics_series_ttl,
        tls=load_tls(args),
        kubernetes=KubernetesSettings(
            mode=args.kubernetes,
            kubeconfig=args.kubeconfig,
            interval=args.deletion_cost_interval,
            patch_rate=args.kubernetes_patch_rate,
        ),
        limits=Limits(
            max_value_bytes=args.max_metadata_value,
            max_metadata_bytes=args.max_metadata_bytes,
            max_streams=args.max_streams,
            max_scaled_objects=args.max_scaled_objects,
        ),
        policy=connection_policy(args),
    )
    try:
        return asyncio.run(serve(settings))
    except NoKubernetes as error:
        print(f"error: --kubernetes {args.kubernetes}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def load_tls(args: argparse.Namespace) -> TlsFiles | None:
    """--tls-cert/--tls-key/--tls-client-ca as checked files, or None for plaintext."""
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
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
