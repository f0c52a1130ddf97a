"""No password in any CLI output: every command, every flag, its variable, a mistyped flag, a stray value.

The commands run dry (main(..., dry_run=True)): flags, variables and files are read and
every setting is built, as for a real run, and every error in them is printed as it
would be, but nothing starts. Hypothesis runs derandomized (see conftest.py's profile).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scaler.commands.main import main
from scaler.commands.parser import COMMANDS, GLOBAL_OPTIONS
from scaler.options import Option

SECRET_MARK = "Pw7"  # every generated password starts with it; nothing else generated contains it
# What RFC 3986 lets a URL's password hold unencoded (unreserved, sub-delims, ":"), and percent-escapes.
PASSWORD_CHARACTERS = "abcxyzABCXYZ0189-._~!$&'()*+,;=:"
passwords = st.text(st.sampled_from(PASSWORD_CHARACTERS), max_size=40).map(lambda text: SECRET_MARK + text) | (
    st.text(st.sampled_from("0123456789ABCDEF"), min_size=2, max_size=2).map(lambda hex_: f"{SECRET_MARK}%{hex_}")
)
schemes = st.sampled_from(["postgresql", "postgres", "postgresql+psycopg2", "mysql", "mysql+mysqldb", "redis", "x"])
# A database URL as an operator would paste it, or a libpq key=value string.
secrets_in = st.sampled_from(
    [
        "{scheme}://airflow:{password}@db.internal:5432/airflow",
        "{scheme}://airflow:{password}@db.internal/airflow?sslmode=require",
        "NAME={scheme}://u:{password}@h/db",
        "host=db user=airflow password={password} dbname=airflow",
    ]
)

# Every option of every command, and the global ones, with the commands that take them.
SURFACE: list[tuple[str, Option]] = [
    *((name, option) for name, command in COMMANDS.items() for option in command.options),
    *(("check", option) for option in GLOBAL_OPTIONS),
]


def mistyped(flag: str, at: int) -> str:
    """A flag with one letter dropped, as a hurried operator types it (--conection)."""
    body = flag[2:]
    at %= len(body)
    return "--" + body[:at] + body[at + 1 :]


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, password): a password placed somewhere a person may put it."""
    password = draw(passwords)
    secret = draw(secrets_in).format(scheme=draw(schemes), password=password)
    command, option = draw(st.sampled_from(SURFACE))
    where = draw(st.sampled_from(["value", "equals", "mistyped", "mistyped-equals", "variable", "stray", "command"]))
    argv: list[str] = [command]
    environment: dict[str, str] = {}
    if where == "value":
        argv += [option.flag, secret]
    elif where == "equals":
        argv += [f"{option.flag}={secret}"]
    elif where.startswith("mistyped"):
        flag = mistyped(option.flag, draw(st.integers(0, 40)))
        argv += [f"{flag}={secret}"] if where == "mistyped-equals" else [flag, secret]
    elif where == "variable":
        environment[option.env] = secret
    elif where == "stray":
        argv += [secret]
    else:
        argv = [secret]
    if command in ("check", "replay") and where != "command":
        argv += ["--connection", "postgresql://airflow@db/airflow"]  # so that a command's own checks run too
    return argv, environment, password


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invocation=invocations())
@example(invocation=(["check", "--conection", "postgresql://airflow:Pw7PASSWORD@host/airflow"], {}, "Pw7PASSWORD"))
@example(invocation=(["serve", "--databse", "NAME=postgresql://airflow:Pw7PASSWORD@host/airflow"], {}, "Pw7PASSWORD"))
# A URL in --allowed-hosts whose password holds a comma: the entry cut there has no "@" left to mask by.
@example(invocation=(["serve", "--allowed-hosts", "postgresql://airflow:Pw7,@db.internal:5432/airflow"], {}, "Pw7,"))
@example(invocation=(["serve", "--broker", "airflow=redis://:Pw7PASSWORD@redis:port/0"], {}, "Pw7PASSWORD"))
@example(invocation=(["serve", "--broker", "NAME=redis://:Pw7PASSWORD@redis/0"], {}, "Pw7PASSWORD"))
@example(
    invocation=(["serve", "--connection-from-env", "postgresql://a:Pw7" + "p" * 80 + "@h/db"], {}, "Pw7" + "p" * 80)
)
@example(invocation=(["serve"], {"AIRFLOW_KEDA_SCALER_POOL_SIZE": "mysql://a:Pw7x@h/db"}, "Pw7x"))
def test_no_cli_error_shows_a_password(
    invocation: tuple[list[str], dict[str, str], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, environment, password = invocation
    with monkeypatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        try:
            code = main(argv, dry_run=True)
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 2
    out, err = capsys.readouterr()
    assert password not in out + err
    # The start of a password is no better: a message cut short must not show it either.
    assert SECRET_MARK not in out + err
    assert code in (0, 2)


def test_a_mistyped_flag_is_named_with_the_flag_it_resembles(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "--conection", "postgresql://airflow:PASSWORD@host/airflow"], dry_run=True)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "unrecognized argument --conection (did you mean --connection?)" in error
    assert "1 other argument not shown" in error
    assert "PASSWORD" not in error


def test_a_bad_variable_names_the_variable_and_masks_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_KEDA_SCALER_CONNECTION_FROM_ENV", "postgresql://airflow:PASSWORD@host/airflow")
    with pytest.raises(SystemExit):
        main(["serve"], dry_run=True)
    error = capsys.readouterr().err.splitlines()[-1]
    assert "argument --connection-from-env: invalid choice: 'postgresql://airflow:***@host/airflow'" in error
    assert "(from AIRFLOW_KEDA_SCALER_CONNECTION_FROM_ENV)" in error
