"""The README's first command, `make demo`: the demo starts, answers, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaler.commands.demo.plot import draw, write_plot
from scaler.commands.demo.workload import SCALED_OBJECTS, Sample


def postgres_pids(folder: Path) -> set[str]:
    """Processes whose command line names a throwaway server folder under `folder` (Linux /proc, else pgrep).

    Only this test's demo's: other throwaway servers on the machine (the suite's own, a parallel run)
    come and go as they please.
    """
    marker = f"{folder}/airflow-keda-scaler-pg-"
    proc = Path("/proc")
    if not proc.is_dir():
        found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
        return set(found.stdout.split())
    pids = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker.encode() in cmdline.read_bytes():
                pids.add(cmdline.parent.name)
    return pids


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """A short folder of its own for the demo's temporary files (TMPDIR): its PostgreSQL lives there.

    Short, because the server's Unix socket path must fit in 107 bytes.
    """
    folder = Path(tempfile.mkdtemp(prefix="akd-"))
    folder.chmod(0o1777)  # like /tmp: as root, the server runs as nobody, which must reach its folder
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def leftovers(folder: Path) -> tuple[list[str], set[str]]:
    """Throwaway PostgreSQL folders and processes the demo left in `folder`."""
    return glob.glob(f"{folder}/airflow-keda-scaler-pg-*"), postgres_pids(folder)


def test_demo_runs_scales_and_cleans_up(tmp_path: Path, demo_tmp: Path) -> None:
    plot = tmp_path / "demo.svg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaler",
            "demo",
            "--duration",
            "30",
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
        env={**os.environ, "TMPDIR": str(demo_tmp)},
    )
    assert result.returncode == 0, result.stderr
    rounds = [line for line in result.stdout.splitlines() if "celery-default:" in line and "workers" in line]
    assert len(rounds) >= 10, result.stdout
    assert "UNAVAILABLE" not in result.stdout
    assert "INVALID" not in result.stdout
    pattern = (
        r"(celery-\w+): queued +(\d+) running +(\d+) -> workers +(\d+) replicas +(\d+) (active|idle)"
        r" +(floor|pre-warm)? +killed (\d+) \(chart formula: (\d+)\)"
    )
    found = re.findall(pattern, result.stdout)
    answers = [
        (name, int(queued), int(running), int(workers), int(replicas), state == "active")
        for name, queued, running, workers, replicas, state, _, _, _ in found
    ]
    assert len(answers) == len(rounds) * len(SCALED_OBJECTS), result.stdout
    # The scaler's floor keeps every busy worker: nothing it scales is ever killed.
    assert all(killed == "0" for *_, killed, _ in found)
    for _, _, _, workers, count, active in answers:
        assert active == (workers > 0)
        assert count <= 10  # maxReplicaCount
    for name in ("celery-default", "celery-ml"):
        seen = [a for a in answers if a[0] == name]
        first_active = next(a for a in seen if a[5])
        assert 1 <= first_active[4] <= max(1, first_active[3]), f"{name}: activation, then the HPA's desired replicas"
        assert any(a[2] > 0 for a in seen), f"{name} never ran a task"  # worker slots took queued tasks
    # The scheduled DAG's worker set: workers asked for and active before its run's first task, then its
    # tasks start as they come (never queued at a poll).
    etl = [(a, held) for a, (*_, held, _, _) in zip(answers, found, strict=True) if a[0] == "celery-etl"]
    first_task = next(i for i, (a, _) in enumerate(etl) if a[1] + a[2] > 0)
    warm = [a for a, held in etl[:first_task] if held == "pre-warm"]
    assert warm, "no pre-warm before the scheduled run"
    assert all(a[3] > 0 and a[5] and a[1] + a[2] == 0 for a in warm)
    assert etl[first_task][0][1] == 0, "the scheduled run's tasks waited for workers"
    default = [a[4] for a in answers if a[0] == "celery-default"]
    assert max(default) > 1, "the HPA never scaled past one replica"
    assert any(later < earlier for earlier, later in itertools.pairwise(default)), "never scaled down"
    # The shadow replay of the same tasks under the chart's formula kills some of the long ones.
    (summary,) = re.findall(
        r"tasks killed: celery-default 0 \(the chart's formula on the same tasks: (\d+)\)", result.stdout
    )
    assert int(summary) > 0, result.stdout
    assert "<svg" in plot.read_text()
    assert f"wrote {plot}" in result.stdout
    folders, pids = leftovers(demo_tmp)
    assert folders == [], "the demo left its PostgreSQL folder behind"
    assert pids == set(), "the demo left its PostgreSQL running"


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


def test_ctrl_c_stops_the_demo_cleanly_and_leaves_nothing_behind(demo_tmp: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scaler", "demo", "--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(demo_tmp)},
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
    assert leftovers(demo_tmp) == ([], set())


def test_a_taken_metrics_port_is_one_line_naming_the_flag_and_leaves_nothing_behind(demo_tmp: Path) -> None:
    # 8080, the demo's default, is Airflow's own webserver port too: a user may well have it taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses = ["--grpc-address", "127.0.0.1:0", "--metrics-address", f"127.0.0.1:{port}"]
        result = subprocess.run(
            [sys.executable, "-m", "scaler", "demo", *addresses],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "TMPDIR": str(demo_tmp)},
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot listen on 127.0.0.1:{port} for metrics (--metrics-address): address already in use"
    ]
    assert leftovers(demo_tmp) == ([], set())


def test_the_plot_keeps_every_line_inside_its_axes_and_the_legend_off_them_and_marks_pre_warm() -> None:
    # The scaler asks for more than maxReplicaCount (12 > 10) at the peak; pre-warm holds workers before a run.
    shape = [(0, 0, 0, False), (0, 0, 3, True), (180, 0, 12, False), (40, 60, 12, False), (0, 16, 1, False)]
    history = [
        Sample(
            at=float(t),
            name=so.name,
            queued=q,
            running=r,
            workers=w,
            active=w > 0,
            replicas=min(w, so.max_replicas),
            prewarm_held=warm,
            due_in=2.0 - t,
            queued_p95=3.0,
            chart_queued_p95=9.0,
        )
        for t, (q, r, w, warm) in enumerate(shape)
        for so in SCALED_OBJECTS
    ]
    figure = draw(history)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = [axis.get_window_extent(renderer) for axis in figure.axes]
    (legend,) = figure.legends
    assert not any(legend.get_window_extent(renderer).overlaps(panel) for panel in panels)
    for axis in figure.axes:
        top = axis.get_ylim()[1]
        for line in axis.get_lines():
            assert max(line.get_ydata(), default=0) < top, (axis.get_title(), line.get_label())
    labels = {text.get_text() for text in legend.get_texts()}
    assert {"pre-warm held", "scheduled run due", "workers asked for", "replicas"} <= labels
    assert all(
        "queued p95 3 s (chart's formula 9 s)" in axis.get_title() for axis in figure.axes[: len(SCALED_OBJECTS)]
    )
