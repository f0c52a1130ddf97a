"""The README's run command: the demo starts, answers, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import glob
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def postgres_pids() -> set[str]:
    """Processes whose command line names a throwaway server folder (Linux /proc, else pgrep)."""
    proc = Path("/proc")
    if not proc.is_dir():
        found = subprocess.run(["pgrep", "-f", "airflow-keda-scaler-pg-"], capture_output=True, text=True, check=False)
        return set(found.stdout.split())
    pids = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"airflow-keda-scaler-pg-" in cmdline.read_bytes():
                pids.add(cmdline.parent.name)
    return pids


def test_demo_runs_answers_and_cleans_up() -> None:
    before = set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*"))
    pids_before = postgres_pids()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaler",
            "demo",
            "--duration",
            "7",
            "--grpc-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
            "--poll-interval",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    polls = [line for line in result.stdout.splitlines() if "celery-default:" in line and "workers" in line]
    assert len(polls) >= 4, result.stdout
    for line in polls:
        # Every answer agrees with the workload the demo itself put in the database, within one refresh.
        assert "UNAVAILABLE" not in line
        assert "INVALID" not in line
    numbers = [tuple(map(int, m)) for m in re.findall(r"queued +(\d+) running +(\d+) -> workers +(\d+)", result.stdout)]
    assert any(workers > 0 for _, _, workers in numbers), result.stdout
    after = set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*"))
    assert after <= before, "the demo left its PostgreSQL folder behind"
    assert postgres_pids() <= pids_before, "the demo left its PostgreSQL running"
