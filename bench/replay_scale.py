"""Benchmark 7: `replay` of a week of a busy Airflow: 1,000,000 task instances, time and memory.

The history is written into Airflow 3's task_instance table of the embedded
PostgreSQL (COPY), then the real command runs in its own process, as a user
would run it: `airflow-keda-scaler replay --since 7d --format json`. Its wall
time and the peak resident memory of its process tree (the command and the
processes it starts for the policies, summed, sampled from /proc every 100 ms)
are what the targets are about.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.common import Database

WEEK = 7 * 86400
TARGET_SECONDS = 60.0
TARGET_MB = 500.0
COLUMNS = [
    "id", "dag_id", "task_id", "run_id", "map_index", "try_number", "max_tries", "pool", "pool_slots",
    "state", "queue", "hostname", "queued_dttm", "start_date", "end_date",
]  # fmt: skip


def history(tasks: int, end: datetime.datetime, seed: int = 7) -> Iterator[tuple[object, ...]]:
    """Bursts of DAG runs every 5 minutes on average (100-900 tasks) over a week; durations median 5 min."""
    rng = random.Random(seed)
    start = end - datetime.timedelta(seconds=WEEK)
    made, burst = 0, 0
    while made < tasks:
        burst += 1
        at = rng.uniform(0, WEEK - 3600)
        for index in range(min(tasks - made, rng.randint(100, 900))):
            queued = start + datetime.timedelta(seconds=at + rng.uniform(0, 120))
            started = queued + datetime.timedelta(seconds=rng.uniform(1, 30))
            ended = started + datetime.timedelta(seconds=min(7200, max(30, rng.lognormvariate(math.log(300), 0.9))))
            yield (
                uuid.UUID(int=rng.getrandbits(128)),
                f"dag_{burst % 500}",
                f"task_{index}",
                f"scheduled__{burst}",
                -1,
                1,
                1,
                "default_pool",
                1,
                "success",
                "default",
                f"airflow-worker-{rng.randint(0, 60)}",
                queued,
                started,
                ended,
            )
            made += 1


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


async def run(database: Database, tasks: int) -> tuple[str, dict[str, object]]:
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    connection = await database.connect()
    started = time.monotonic()
    try:
        rows = history(tasks, end)
        while chunk := [row for _, row in zip(range(100_000), rows, strict=False)]:
            await connection.copy_records_to_table("task_instance", records=chunk, columns=COLUMNS)
        await connection.execute("ANALYZE task_instance")
    finally:
        await connection.close()
    loaded = time.monotonic() - started
    print(f"  {tasks:,} task instances written in {loaded:.0f} s", flush=True)
    command = [sys.executable, "-m", "scaler", "replay", "--since", "7d", "--max-replicas", "200", "--format", "json"]
    env = {**os.environ, "AIRFLOW_KEDA_SCALER_CONNECTION": database.dsn}
    began = time.monotonic()
    process = await asyncio.to_thread(
        subprocess.Popen, command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - began
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"replay failed ({process.returncode}): {err.strip()}")
    document = json.loads(out)
    mb = peak / 1e6
    print(f"  replay: {elapsed:.1f} s, peak {mb:.0f} MB resident (process tree)", flush=True)
    lines = [
        "## 7. Replay at scale: a week of a busy Airflow",
        "",
        f"{tasks:,} task instances over 7 days in Airflow 3's task_instance table (bursts of 100-900 tasks every "
        "5 minutes on average, durations lognormal with a median of 5 minutes, clipped to 30 s-2 h), written by "
        f"`bench/replay_scale.py` in {loaded:.0f} s. Then the real command, in its own process: "
        "`airflow-keda-scaler replay --since 7d --max-replicas 200 --format json` (worker_concurrency 16, KEDA's "
        "and the HPA's defaults otherwise). Its time includes starting Python, reading every row through the "
        "read-only cursor and replaying every policy (one process each, on the machine's cores; the history "
        "has no scheduled DAG runs, so pre-warm replays as ours). Memory is the peak of the resident memory of "
        "the command and its policy processes, summed, sampled every 100 ms.",
        "",
        "| figure | value | target |",
        "| --- | ---: | --- |",
        f"| task instances replayed | {document['tasks']:,} | |",
        f"| wall time | {elapsed:.1f} s | under {TARGET_SECONDS:.0f} s: "
        f"{'met' if elapsed < TARGET_SECONDS else '**missed**'} |",
        f"| peak resident memory | {mb:.0f} MB | under {TARGET_MB:.0f} MB: "
        f"{'met' if mb < TARGET_MB else '**missed**'} |",
        "",
        "| policy | tasks killed | task-hours lost | worker-hours | queued p50 | queued p95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy in document["policies"]:
        lines.append(
            f"| {policy['policy']} | {policy['tasks_killed']:,} | {policy['task_hours_lost']:,.1f} | "
            f"{policy['worker_hours']:,.1f} | {policy['queued_p50_s']:.0f} s | {policy['queued_p95_s']:.0f} s |"
        )
    return "\n".join(lines), {"seconds": elapsed, "peak_mb": mb}
