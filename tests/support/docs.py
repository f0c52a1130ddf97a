"""The commands the README and docs/ show, as the tests run them.

A fenced block the tests run is preceded by `<!-- test: TAG [ARGUMENT] -->`; a shell block without one
fails `test_every_shell_block_is_run_by_a_test`. TAG says which test runs it (`make`, `cluster`,
`replay`, `check`, `in-pod`, `grants`, `grpcurl`, `helm`, `manifests`, `values FILE`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import AirflowDatabase

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
GUIDE = ROOT / "docs" / "switching-from-the-official-chart.md"
# A fenced block, indented or not (inside a list item), with the tag line before it if any.
_BLOCK = re.compile(
    r"(?m)(?:^[ ]*<!-- test: (?P<tag>[\w-]+)(?: (?P<argument>\S+))? -->\n\n?)?"
    r"^(?P<indent>[ ]*)```(?P<language>\w*)\n(?P<text>.*?)\n(?P=indent)```",
    re.S,
)
SHELL = ("sh", "bash", "console")
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    page: Path
    tag: str
    argument: str
    language: str
    text: str

    def commands(self) -> list[str]:
        """Its commands, a continued line (`\\` at the end) joined to the next."""
        return [command.strip() for command in self.text.replace("\\\n", " ").splitlines() if command.strip()]


def blocks(page: Path) -> list[Block]:
    return [
        Block(page, m["tag"] or "", m["argument"] or "", m["language"], textwrap.dedent(m["text"]))
        for m in _BLOCK.finditer(page.read_text())
    ]


def tagged(tag: str, page: Path | None = None) -> list[Block]:
    """Every block with this tag, on one page or on all of them, in page order."""
    return [block for p in ((page,) if page else PAGES) for block in blocks(p) if block.tag == tag]


def replace_url(text: str, url: str) -> str:
    """The shown PostgreSQL URL (host, user, password: placeholders) replaced by a real one."""
    replaced, count = re.subn(r"postgresql://[^\"'\s]+", url, text)
    assert count, f"no postgresql:// URL in {text!r}"
    return replaced


def run_shown(
    command: str, *, cwd: Path, tools: tuple[Path, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A shown command in bash (-euo pipefail), as a user runs it from `cwd`: `.venv/bin/` is this interpreter's
    folder (the same install under make test), which is on PATH first, as the image's is, after `tools`."""
    command = re.sub(r"(?<![\w/])\.venv/bin/", f"{BIN}/", command)
    path = ":".join([*map(str, tools), str(BIN), os.environ["PATH"]])
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
        env={**os.environ, "PATH": path, **(env or {})},
    )


@contextlib.asynccontextmanager
async def guide_reader(database: AirflowDatabase) -> AsyncIterator[str]:
    """The switching guide's role, made by its step 2 SQL on `database`; a URL that logs in as it, as the guide's
    Secret names it. The role is dropped at the end (roles belong to the whole server)."""
    (grants,) = tagged("grants", GUIDE)
    await database.connection.execute("DROP ROLE IF EXISTS keda_reader")
    await database.connection.execute(grants.text)
    try:
        yield re.sub(r"//[^@]+@", "//keda_reader:change-me@", database.dsn)
    finally:
        await database.connection.execute(
            "REVOKE ALL ON task_instance, dag, dag_run FROM keda_reader; DROP ROLE keda_reader"
        )
