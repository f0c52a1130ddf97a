"""The `airflow-keda-scaler` command: serve, check, replay, demo.

The one place that knows every part: it builds each command's settings from
the flags (parser.py) and files (files.py) and runs it. Nothing imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from scaler.admission import ConnectionPolicy, Limits
from scaler.airflow_databases import DatabaseSettings
from scaler.check import CONNECTION, FILTERS, run_check
from scaler.cli.files import load_databases, load_tls
from scaler.cli.parser import build_parser, build_settings
from scaler.databases.pool import PoolSettings
from scaler.demo.settings import DemoSettings
from scaler.errors import ConfigError
from scaler.kubernetes.access import KubernetesSettings, NoKubernetes
from scaler.logs import configure_logging
from scaler.prewarm import PrewarmSettings
from scaler.replay.settings import ReplaySettings
from scaler.server import ServerSettings, serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # check and replay print their own one-line verdict; the service's log lines would repeat it.
    quiet = args.command in ("check", "replay") and args.log_level != "debug"
    configure_logging("error" if quiet else args.log_level, args.log_format)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check":
            return _check(args)
        if args.command == "replay":
            return _replay(args)
        return _demo(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    settings = build_settings(
        ServerSettings,
        args,
        database_settings=build_settings(
            DatabaseSettings,
            args,
            pool=build_settings(PoolSettings, args),
            prewarm=build_settings(PrewarmSettings, args),
        ),
        databases=load_databases(args),
        tls=load_tls(args),
        kubernetes=build_settings(KubernetesSettings, args),
        limits=build_settings(Limits, args),
        policy=build_settings(ConnectionPolicy, args),
    )
    try:
        return asyncio.run(serve(settings))
    except NoKubernetes as error:
        print(f"error: --kubernetes {settings.kubernetes.mode}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _read_only(args: argparse.Namespace) -> dict[str, Any]:
    """What check and replay take alike: the database, the trigger's scope, one connection, the policy."""
    return {
        "connection": getattr(args, CONNECTION.dest),
        "filters": {key: value for key, option in FILTERS if (value := getattr(args, option.dest)) is not None},
        "databases": load_databases(args),
        # One connection is all either needs.
        "pool": build_settings(PoolSettings, args, max_size=1),
        "policy": build_settings(ConnectionPolicy, args),
    }


def _check(args: argparse.Namespace) -> int:
    return asyncio.run(run_check(**_read_only(args)))


def _replay(args: argparse.Namespace) -> int:
    from scaler.replay.command import run_replay

    progress = sys.stderr if sys.stderr.isatty() else None
    return asyncio.run(run_replay(**_read_only(args), settings=build_settings(ReplaySettings, args), progress=progress))


def _demo(args: argparse.Namespace) -> int:
    # The demo (and its optional dependencies) load only when asked for.
    from scaler.demo.run import run_demo

    return asyncio.run(run_demo(build_settings(DemoSettings, args)))
