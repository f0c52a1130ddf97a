"""The `airflow-keda-scaler` command line: parse a command's flags and run it (serve, check, replay, demo).

The one place that knows every part: it builds each command's settings from
the flags (parser.py) and files (files.py) and runs it. Nothing imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.kubernetes.access import KubernetesSettings, NoKubernetes
from scaler.commands.check import CONNECTION, FILTERS, run_check
from scaler.commands.demo.settings import DemoSettings
from scaler.commands.files import load_brokers, load_databases, load_tls
from scaler.commands.logs import configure_logging
from scaler.commands.parser import build_parser, build_settings
from scaler.commands.replay.settings import ReplaySettings
from scaler.errors import ConfigError
from scaler.redaction import redact
from scaler.rules.admission import ConnectionPolicy, Limits
from scaler.rules.prewarm import PrewarmSettings
from scaler.service.database_caches import DatabaseSettings
from scaler.service.drain_loop import DrainSettings
from scaler.service.server import ServerSettings, serve


def main(argv: Sequence[str] | None = None, *, dry_run: bool = False) -> int:
    """Run a command. `dry_run`: parse its flags, variables and files and build its settings (every error in
    them surfaces here, as it would), but start nothing; the CLI's tests go over the whole surface so."""
    args = build_parser().parse_args(argv)
    # check and replay print their own one-line verdict; the service's log lines would repeat it.
    quiet = args.command in ("check", "replay") and args.log_level != "debug"
    if not dry_run:
        configure_logging("error" if quiet else args.log_level, args.log_format)
    try:
        command = _COMMANDS[args.command](args)
        return 0 if dry_run else command()
    except ConfigError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> Callable[[], int]:
    databases = load_databases(args)
    settings = build_settings(
        ServerSettings,
        args,
        database_settings=build_settings(
            DatabaseSettings,
            args,
            pool=build_settings(PoolSettings, args),
            prewarm=build_settings(PrewarmSettings, args),
        ),
        databases=databases,
        tls=load_tls(args),
        kubernetes=build_settings(KubernetesSettings, args),
        drain=build_settings(DrainSettings, args, brokers=load_brokers(args, databases)),
        limits=build_settings(Limits, args),
        policy=build_settings(ConnectionPolicy, args),
    )

    def run() -> int:
        try:
            return _listening(serve(settings))
        except NoKubernetes as error:
            print(f"error: --kubernetes {settings.kubernetes.mode}: {redact(str(error))}", file=sys.stderr)
            return 2

    return run


def _listening(command: Coroutine[Any, Any, int]) -> int:
    """Run a command that listens: a port it cannot have (taken, or not local) is one line naming the flag."""
    try:
        return asyncio.run(command)
    except OSError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
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


def _check(args: argparse.Namespace) -> Callable[[], int]:
    given = _read_only(args)
    return lambda: asyncio.run(run_check(**given))


def _replay(args: argparse.Namespace) -> Callable[[], int]:
    given, settings = _read_only(args), build_settings(ReplaySettings, args)

    def run() -> int:
        from scaler.commands.replay.command import run_replay

        progress = sys.stderr if sys.stderr.isatty() else None
        return asyncio.run(run_replay(**given, settings=settings, progress=progress))

    return run


def _demo(args: argparse.Namespace) -> Callable[[], int]:
    settings = build_settings(DemoSettings, args)

    def run() -> int:
        # The demo (and its optional dependencies) load only when asked for.
        from scaler.commands.demo.run import run_demo

        return _listening(run_demo(settings))

    return run


# Each builds its command's settings from the parsed flags (raising ConfigError for bad input) and returns
# the command, not yet started.
_COMMANDS: dict[str, Callable[[argparse.Namespace], Callable[[], int]]] = {
    "serve": _serve,
    "check": _check,
    "replay": _replay,
    "demo": _demo,
}
