"""The command line, derived from the settings' declarations (scaler.options): one table per command.

Every flag can also be set by an environment variable named
AIRFLOW_KEDA_SCALER_<FLAG> (upper case, dashes as underscores); a flag given on
the command line wins. Repeatable flags (--database) take several
whitespace-separated values from their variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from scaler import __version__
from scaler.admission import ConnectionPolicy, Limits
from scaler.airflow_databases import DatabaseSettings
from scaler.check import CONNECTION, FILTERS
from scaler.cli.files import DATABASE_OPTIONS, TLS_OPTIONS
from scaler.databases.pool import PoolSettings
from scaler.demo.settings import DemoSettings
from scaler.errors import shown
from scaler.kubernetes.access import KubernetesSettings
from scaler.logs import FORMATS
from scaler.options import Option, option_for, options_of
from scaler.prewarm import PrewarmSettings
from scaler.replay.settings import ReplaySettings
from scaler.server import ServerSettings

T = TypeVar("T")

LOG_LEVEL = Option("--log-level", "Log level.", default="info", choices=("debug", "info", "warning", "error"))
LOG_FORMAT = Option(
    "--log-format",
    "text for people, json for one object a line with the decision's fields (scaled_object, demand, workers, "
    "reason, database, ...).",
    default="text",
    choices=FORMATS,
)
GLOBAL_OPTIONS = (LOG_LEVEL, LOG_FORMAT)


def _all(cls: type[Any]) -> tuple[Option, ...]:
    return tuple(option for _, option in options_of(cls))


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    options: tuple[Option, ...]


_POLICY_AND_TIMEOUTS = (
    option_for(PoolSettings, "connect_timeout"),
    option_for(PoolSettings, "query_timeout"),
    *_all(ConnectionPolicy),
)

COMMANDS: dict[str, Command] = {
    "serve": Command(
        help="Serve KEDA's externalscaler gRPC API.",
        description="Serve KEDA's externalscaler gRPC API, with gRPC health and reflection.",
        options=(
            *_all(ServerSettings),
            *DATABASE_OPTIONS,
            *_all(DatabaseSettings),
            *_all(PoolSettings),
            *_all(PrewarmSettings),
            *TLS_OPTIONS,
            *_all(KubernetesSettings),
            *_all(ConnectionPolicy),
            *_all(Limits),
        ),
    ),
    "check": Command(
        help="Connect to an Airflow database and print the demand and the workers the scaler would ask for.",
        description="Connect, print demand per queue and state and the workers the scaler would ask for; "
        "exit 1 with a one-line reason when the database cannot be read, 2 when the input is wrong.",
        options=(CONNECTION, *DATABASE_OPTIONS, *(option for _, option in FILTERS), *_POLICY_AND_TIMEOUTS),
    ),
    "replay": Command(
        help="Replay an Airflow database's recent task instances under the chart's formula and the scaler's.",
        description="Read the task instances of a window (read-only) in one trigger's scope and replay them through "
        "a model of KEDA, the HPA, Celery and the worker pods: per policy, the tasks killed, task-hours lost, "
        "worker-hours and queued time, beside what really happened. Exit 1 with a one-line reason when the "
        "database cannot be read, 2 when the input is wrong.",
        options=(
            CONNECTION,
            *DATABASE_OPTIONS,
            *(option for _, option in FILTERS),
            *_all(ReplaySettings),
            *_POLICY_AND_TIMEOUTS,
        ),
    ),
    "demo": Command(
        help="Run the scaler on an embedded PostgreSQL with a synthetic Airflow workload and watch it decide.",
        description="Start a throwaway PostgreSQL with Airflow's task_instance table, a synthetic workload on two "
        "queues, and the real scaler on gRPC, then poll it the way KEDA does and print what it answers.",
        options=_all(DemoSettings),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-keda-scaler",
        description="A KEDA external scaler that sizes Airflow Celery workers from the Airflow database.",
        epilog="Every flag can also be set by the environment variable shown with it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for option in GLOBAL_OPTIONS:
        add_option(parser, option)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.description)
        for option in command.options:
            add_option(sub, option)
    return parser


def add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """A flag whose default comes from its environment variable, if set, else from its declaration."""
    raw = os.environ.get(option.env)
    shown = option.shown_default
    text = f"{option.help} [env {option.env}{f'; default: {shown}' if shown else ''}]"
    kind = _converter(option)
    # Choices are checked by _converter, not argparse: its message would echo a value of any size.
    choices = None
    metavar = option.metavar or ("{" + ",".join(option.choices) + "}" if option.choices else None)
    if option.repeat:
        parser.add_argument(
            option.flag, dest=option.dest, action="append", default=None, type=kind, metavar=metavar, help=text
        )
        parser.set_defaults(**{f"_env_{option.dest}": raw.split() if raw else []})
    else:
        # argparse runs `type` on string defaults, so a bad variable is reported like a bad flag.
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=raw if raw is not None else option.default,
            type=kind,
            metavar=metavar,
            choices=choices,
            help=text,
        )


def _converter(option: Option) -> Callable[[str], Any]:
    parse, accepted = option.parse, option.choices
    if parse is None and not accepted:
        return str

    def convert(text: str) -> Any:
        if accepted and text not in accepted:
            raise argparse.ArgumentTypeError(f"invalid choice: '{shown(text)}' (choose from {', '.join(accepted)})")
        if parse is None:
            return text
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def build_settings(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """The settings dataclass `cls` from the parsed flags of its declared fields; `given` sets the others.

    A field whose flag the command does not have keeps its declared default.
    """
    values = dict(given)
    for name, option in options_of(cls):
        if name not in values and hasattr(args, option.dest):
            values[name] = getattr(args, option.dest)
    return cls(**values)
