"""The command line, derived from the settings' declarations (scaler.options): one table per command.

Every flag can also be set by an environment variable named
AIRFLOW_KEDA_SCALER_<FLAG> (upper case, dashes as underscores); a flag given on
the command line wins. Repeatable flags (--database) take several
whitespace-separated values from their variable.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from scaler import __version__
from scaler.adapters.databases.pool import PoolSettings
from scaler.adapters.kubernetes.access import KubernetesSettings
from scaler.commands.check import CONNECTION, FILTERS
from scaler.commands.demo.settings import DemoSettings
from scaler.commands.files import BROKER_OPTIONS, DATABASE_OPTIONS, TLS_OPTIONS
from scaler.commands.logs import FORMATS
from scaler.commands.replay.settings import ReplaySettings
from scaler.errors import shown
from scaler.options import Option, option_for, options_of
from scaler.redaction import redact
from scaler.rules.admission import ConnectionPolicy, Limits
from scaler.rules.prewarm import PrewarmSettings
from scaler.service.database_caches import DatabaseSettings
from scaler.service.drain_loop import DrainSettings
from scaler.service.server import ServerSettings

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
            *BROKER_OPTIONS,
            *_all(DrainSettings),
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


class Parser(argparse.ArgumentParser):
    """argparse, with errors that never show a secret.

    A mistyped flag is followed by its value, and that value is often a database URL
    (`check --conection postgresql://airflow:PASSWORD@...`); argparse would print it
    whole, and a crash-looping pod would write it to its log on every restart. So
    unrecognized arguments are named by their flag only (the closest real flag
    suggested), never by a value, and every other error passes through the same
    redaction as the logs.
    """

    def parse_args(  # type: ignore[override]  # one signature: ours never returns unparsed arguments
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(extras, self._flags()))
        return parsed

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {redact(message)}\n")

    def _flags(self) -> list[str]:
        """Every flag of this parser and its commands, for suggestions."""
        flags: list[str] = []
        for action in self._actions:
            flags += [flag for flag in action.option_strings if flag.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags += [flag for sub_action in sub._actions for flag in sub_action.option_strings]
        return sorted(set(flags))


def unrecognized(extras: Sequence[str], flags: Sequence[str]) -> str:
    """What argparse's "unrecognized arguments" says, without the values.

    >>> unrecognized(["--conection", "postgresql://airflow:pw@db/airflow"], ["--connection", "--database"])
    'unrecognized argument --conection (did you mean --connection?); 1 other argument not shown (it may hold a secret)'
    """
    named: list[str] = []
    others = 0
    for extra in extras:
        flag = extra.partition("=")[0]
        if flag.startswith("--") and len(flag) <= 64 and flag[2:].replace("-", "").isalnum():
            close = difflib.get_close_matches(flag, flags, n=1)
            named.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        else:
            others += 1
    parts = []
    if named:
        parts.append(f"unrecognized argument{'s' if len(named) > 1 else ''} {', '.join(named)}")
    if others:
        noun = "argument" if others == 1 else "arguments"
        parts.append(f"{others}{' other' if named else ' unrecognized'} {noun} not shown (it may hold a secret)")
    return "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    kind = _converter(option, raw)
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


def _converter(option: Option, variable: str | None) -> Callable[[str], Any]:
    """`variable`: the value of the option's environment variable, if set (an error in it says so)."""
    parse, accepted = option.parse, option.choices
    if parse is None and not accepted:
        return str

    def convert(text: str) -> Any:
        origin = f" (from {option.env})" if variable is not None and text == variable else ""
        if accepted and text not in accepted:
            raise argparse.ArgumentTypeError(
                f"invalid choice: '{shown(text)}' (choose from {', '.join(accepted)}){origin}"
            )
        if parse is None:
            return text
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error}{origin}") from None

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
