"""The README's run command: the demo starts, answers, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import glob
import itertools
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from scaler.demo import SCALED_OBJECTS, Sample
from scaler.demo_plot import write_plot


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


def test_demo_runs_scales_and_cleans_up(tmp_path: Path) -> None:
    before = set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*"))
    pids_before = postgres_pids()
    plot = tmp_path / "demo.svg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaler",
            "demo",
            "--duration",
            "20",
            "--seed",
            "3",
            "--grpc-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
            "--poll-interval",
            "1",
            "--cooldown",
            "4",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rounds = [line for line in result.stdout.splitlines() if "celery-default:" in line and "workers" in line]
    assert len(rounds) >= 10, result.stdout
    assert "UNAVAILABLE" not in result.stdout
    assert "INVALID" not in result.stdout
    pattern = r"(celery-\w+): queued +(\d+) running +(\d+) -> workers +(\d+) replicas +(\d+) (active|idle)"
    answers = [
        (name, int(queued), int(running), int(workers), int(replicas), state == "active")
        for name, queued, running, workers, replicas, state in re.findall(pattern, result.stdout)
    ]
    for _, _, _, workers, count, active in answers:
        assert active == (workers > 0)
        assert count <= 10  # maxReplicaCount
    for name in ("celery-default", "celery-ml"):
        seen = [a for a in answers if a[0] == name]
        assert seen[0][4] == 1, f"{name}: KEDA's activation takes 0 replicas to 1, not further"
        assert any(a[2] > 0 for a in seen), f"{name} never ran a task"  # worker slots took queued tasks
    default = [a[4] for a in answers if a[0] == "celery-default"]
    assert max(default) > 1, "the HPA never scaled past one replica"
    assert any(later < earlier for earlier, later in itertools.pairwise(default)), "never scaled down"
    assert "<svg" in plot.read_text()
    assert f"wrote {plot}" in result.stdout
    after = set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*"))
    assert after <= before, "the demo left its PostgreSQL folder behind"
    assert postgres_pids() <= pids_before, "the demo left its PostgreSQL running"


def test_demo_rejects_a_plot_file_it_cannot_write() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scaler", "demo", "--plot", "demo.jpg"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "'demo.jpg' must end in .png, .svg or .html" in result.stderr


@pytest.mark.parametrize("suffix", [".png", ".svg", ".html"])
def test_plot_writes_each_format(tmp_path: Path, suffix: str) -> None:
    history = [
        Sample(at=float(t), name=so.name, queued=q, running=r, workers=w, active=w > 0, replicas=w)
        for t, (q, r, w) in enumerate([(0, 0, 0), (30, 0, 2), (10, 20, 2), (0, 16, 1), (0, 0, 0)])
        for so in SCALED_OBJECTS
    ]
    path = tmp_path / f"demo{suffix}"
    write_plot(path, history)
    data = path.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n")
    elif suffix == ".svg":
        assert b"<svg" in data
    else:
        assert data.startswith(b"<!doctype html>")
        assert b"<svg" in data
    assert b"celery-default" in data or suffix == ".png"


def test_ctrl_c_stops_the_demo_cleanly_and_leaves_nothing_behind() -> None:
    before = set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*"))
    pids_before = postgres_pids()
    process = subprocess.Popen(
        [sys.executable, "-m", "scaler", "demo", "--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until the first polling round
            if "celery-default:" in line and "workers" in line:
                break
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, errors
    assert "the embedded PostgreSQL and its folder are gone" in errors
    assert set(glob.glob(f"{tempfile.gettempdir()}/airflow-keda-scaler-pg-*")) <= before
    assert postgres_pids() <= pids_before
