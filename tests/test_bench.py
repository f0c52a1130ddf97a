"""The benchmark suite still runs (at small sizes): its figures are for docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_suite_runs_and_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    assert "QUICK RUN" in text
    for heading in (
        "## 1. Database load",
        "## 2. Activation latency",
        "## 3a. Saturation throughput",
        "## 3b. Call latency",
        "## 4. Snapshot query on a big Airflow database",
        "## 5. Memory",
        "## 5b. Restart storm",
        "## 5c. Memory budget",
        "## 6. Safe scale-down",
    ):
        assert heading in text, heading
    assert "- machine: Linux" in text
