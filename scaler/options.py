"""Each setting declared once: its default, flag, help and parsing on one dataclass field.

A settings dataclass (PoolSettings, Limits, ServerSettings, ...) declares a field
with `setting(default, flag=..., help=...)`. The CLI derives the flag, its
environment variable (AIRFLOW_KEDA_SCALER_<FLAG>), its default and its help from
that declaration and builds the dataclass back from the parsed flags, so a
default written here cannot drift from the one `--help` and docs/reference.md show (its
reference tables are checked against these declarations by a test).
Flags that are no setting of a dataclass (a file to read, the check command's
filters) are declared as `Option`s in the one table of their command.

Pure: standard library only (and errors.shown, so a bad value is quoted cut short).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from scaler.errors import shown

ENV_PREFIX = "AIRFLOW_KEDA_SCALER_"
_OPTION = "option"


def env_name(flag: str) -> str:
    """--pool-size -> AIRFLOW_KEDA_SCALER_POOL_SIZE."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


@dataclass(frozen=True)
class Option:
    """One command-line flag and its environment variable."""

    flag: str
    help: str
    default: Any = None
    metavar: str | None = None
    # Text -> value; raises ValueError with a message naming what is accepted. None: the text as it is.
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] = ()  # the accepted texts, checked before `parse`
    shown: str | None = None  # the default as --help and docs/reference.md write it, when str(default) is not it
    secret: bool = False  # never show the default (or the variable's value)
    repeat: bool = False  # may be given several times; its variable holds whitespace-separated values

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def shown_default(self) -> str:
        """'' when there is no default to show."""
        if self.secret or (self.default is None and self.shown is None):
            return ""
        return self.shown if self.shown is not None else str(self.default)


def setting(
    default: Any,
    *,
    flag: str,
    help: str,  # noqa: A002 - argparse's own word
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] = (),
    shown: str | None = None,
) -> Any:
    """A dataclass field whose default and flag are declared together (see the module's docstring)."""
    option = Option(flag, help, default=default, metavar=metavar, parse=parse, choices=choices, shown=shown)
    return dataclasses.field(default=default, metadata={_OPTION: option})


def options_of(cls: type[Any]) -> Iterator[tuple[str, Option]]:
    """(field name, option) for each field of the settings dataclass `cls` declared with `setting`, in order."""
    for item in dataclasses.fields(cls):
        option = item.metadata.get(_OPTION)
        if option is not None:
            yield item.name, option


def option_for(cls: type[Any], name: str) -> Option:
    """The option of one field: `option_for(PoolSettings, "max_size").flag == "--pool-size"`."""
    for field_name, option in options_of(cls):
        if field_name == name:
            return option
    raise KeyError(f"{cls.__name__}.{name} is not declared with setting()")


def number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser of numbers of `kind` (int, float) whose error names the text: number(int)("2") == 2."""

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"'{shown(text)}' is not a {kind.__name__}") from None

    convert.__name__ = kind.__name__
    return convert


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser of numbers greater than 0: positive(float)("2.5") == 2.5.

    >>> positive(int)("0")
    Traceback (most recent call last):
    ...
    ValueError: '0' must be greater than 0
    """
    parse = number(kind)

    def convert(text: str) -> Any:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"'{shown(text)}' must be greater than 0")
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


def checked(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """A parser that keeps the text but refuses what `parse` refuses (for a value parsed later)."""

    def convert(text: str) -> str:
        parse(text)
        return text

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[::]:PORT') -> (host, port); ValueError with the accepted form.

    >>> split_address("0.0.0.0:8080"), split_address("[::]:9090")
    (('0.0.0.0', 8080), ('::', 9090))
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"'{shown(address)}' is not HOST:PORT (for example 0.0.0.0:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)
