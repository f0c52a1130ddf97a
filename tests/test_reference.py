"""docs/reference.md says exactly what the code accepts, and no more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scaler.commands.parser import COMMANDS, GLOBAL_OPTIONS, build_parser
from scaler.options import Option
from scaler.rules.trigger_metadata import METADATA_KEYS

REFERENCE = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
# Read by the test suite, not by the scaler.
TEST_ONLY = {
    "AIRFLOW_KEDA_SCALER_TEST_DSN",
    "AIRFLOW_KEDA_SCALER_TEST_MYSQL_URL",
    "AIRFLOW_KEDA_SCALER_TEST_REDIS_URL",
    "AIRFLOW_KEDA_SCALER_E2E_VERSIONS",
}
ROOT = Path(__file__).resolve().parent.parent


def section(title_start: str) -> str:
    """The text of the `###` subsection whose title starts with `title_start`."""
    match = re.search(rf"(?ms)^### {re.escape(title_start)}.*?\n(.*?)(?=^#{{2,3}} |\Z)", REFERENCE)
    assert match, f"docs/reference.md has no section '### {title_start}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [row for row in rows if len(row) > 1 and not set(row[0]) <= {"-", " "} and row[0] not in ("Flag", "Key")]


def documented_flags(text: str) -> dict[str, list[str]]:
    """Flag -> the row's cells, from a reference table."""
    rows = {}
    for row in table_rows(text):
        (flag,) = re.findall(r"`(--[a-z][a-z-]*)", row[0])
        rows[flag] = row
    return rows


def check_table(options: tuple[Option, ...], text: str, *, extra: frozenset[str] = frozenset()) -> None:
    documented = documented_flags(text)
    declared = {option.flag: option for option in options}
    assert set(documented) == set(declared) | extra
    for flag, row in documented.items():
        if flag in extra:
            continue
        option = declared[flag]
        assert row[1] == f"`{option.env}`", flag
        shown = row[2].strip("`")
        if option.shown_default and shown:
            default = option.default if option.shown is None else option.shown
            assert _same(shown, default), f"{flag}: docs/reference.md says {shown}, the code {default}"


def _same(shown: str, default: object) -> bool:
    if isinstance(default, int | float) and not isinstance(default, bool):
        return float(shown) == float(default)
    return shown == str(default)


def test_global_flags() -> None:
    check_table(GLOBAL_OPTIONS, section("Global flags"), extra=frozenset({"--version"}))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_documents_every_flag_its_variable_and_default(command: str) -> None:
    check_table(COMMANDS[command].options, section(f"`airflow-keda-scaler {command}`"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_parser_has_every_declared_flag_with_its_default(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for option in (*GLOBAL_OPTIONS, *COMMANDS[command].options):
        monkeypatch.delenv(option.env, raising=False)
    args = vars(build_parser().parse_args([command]))
    for option in COMMANDS[command].options:
        assert option.dest in args, option.flag
        if not option.repeat:
            assert args[option.dest] == option.default, option.flag


def test_trigger_metadata_keys() -> None:
    documented = [re.findall(r"`(\w+)`", row[0])[0] for row in table_rows(section("Trigger metadata"))]
    assert documented == list(METADATA_KEYS)  # same keys, same order


def test_every_variable_the_readme_names_is_real() -> None:
    real = {option.env for option in GLOBAL_OPTIONS} | {
        option.env for command in COMMANDS.values() for option in command.options
    }
    named = set(re.findall(r"AIRFLOW_KEDA_SCALER_[A-Z0-9_]+", REFERENCE))
    assert named - TEST_ONLY <= real, named - TEST_ONLY - real


def test_every_compatibility_row_names_tests_that_exist() -> None:
    match = re.search(r"(?ms)^## Compatibility\n(.*?)(?=^## )", REFERENCE)
    assert match, "REFERENCE has no '## Compatibility' section"
    rows = [row for row in table_rows(match.group(1)) if row[0] != "Area"]
    assert len(rows) >= 10
    for area, _, backed_by in rows:
        references = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", backed_by)
        assert references, f"row '{area}' names no test"
        for path, name in references:
            source = (ROOT / path).read_text()
            assert re.search(rf"(?m)^(async )?def {name}\(", source), f"row '{area}': {path}::{name} does not exist"
