"""Regenerate scaler/fixtures/airflow_schema/*.sql from real Airflow releases.

For each version this installs apache-airflow into a throwaway virtualenv
(tests/support/airflow_install.py: cached under ~/.cache/airflow-keda-scaler/airflow-venvs),
runs Airflow's own `airflow db migrate` against a throwaway PostgreSQL and a
throwaway MariaDB, and dumps the tables the scaler reads (TABLES: task_instance
for demand, dag and dag_run for pre-warm) with pg_dump or SHOW CREATE TABLE.
Foreign keys to other Airflow tables are dropped from the dumps: the tests
insert task instances and DAG runs without the rest of Airflow's tables.
Everything else (columns, types, defaults, primary key, unique constraints,
indexes) is Airflow's, as the server printed it.

    python scripts/generate_airflow_schemas.py                       # all versions, both databases
    python scripts/generate_airflow_schemas.py --versions 3.3.2 --databases mysql

Needs network access to PyPI (once per version) and a few minutes per version.
MariaDB stands in for MySQL 8 (Debian ships MariaDB); Airflow supports MySQL.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scaler.fixtures.airflow_schema import MYSQL_VERSIONS, OLDEST, VERSIONS  # noqa: E402
from scaler.fixtures.embedded_postgres import EmbeddedPostgres  # noqa: E402
from tests.support.airflow_install import ensure_airflow  # noqa: E402
from tests.support.servers import MariaDB  # noqa: E402

OUT_DIR = ROOT / "scaler" / "demo" / "airflow_schema"
# task_instance: demand (the snapshot); dag and dag_run: the schedule and history pre-warm reads.
TABLES = ("dag", "dag_run", "task_instance")


def migrate(airflow: Path, url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="airflow-home-") as home:
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
        if url.startswith("mysql+pymysql://"):
            # Airflow 3 insists on importing mysqlclient (MySQLdb) for any mysql URL, and
            # building mysqlclient needs the MySQL client headers; PyMySQL's own
            # install_as_MySQLdb() stands in, and the URL's driver is PyMySQL anyway.
            shim = Path(home) / "shim"
            shim.mkdir()
            (shim / "sitecustomize.py").write_text(
                "import pymysql\n"
                "pymysql.install_as_MySQLdb()\n"
                "import MySQLdb.converters\n"
                "MySQLdb.converters.DateTime2literal = MySQLdb.converters.escape_datetime\n"
            )
            env["PYTHONPATH"] = str(shim)
        result = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def dump_tables(pg: EmbeddedPostgres, database: str) -> str:
    result = subprocess.run(
        [
            str(pg.bin_dir / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-comments",
            *(f"--table=public.{table}" for table in TABLES),
            pg.dsn_for(database),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def clean(dump: str) -> str:
    """Keep the DDL statements; drop session settings, psql meta-commands and foreign keys."""
    statements = []
    for statement in dump.split(";\n"):
        lines = [
            line
            for line in statement.splitlines()
            if line.strip() and not line.startswith("--") and not line.startswith("\\")
        ]
        text = "\n".join(lines).strip()
        if not text or text.startswith(("SET ", "SELECT pg_catalog.set_config")):
            continue
        if "FOREIGN KEY" in text:
            continue
        statements.append(text + ";")
    return "\n\n".join(statements) + "\n"


def dump_mysql_tables(admin: Any, database: str) -> str:
    """SHOW CREATE TABLE of each of TABLES (foreign keys removed), through the generator's admin connection."""
    statements = []
    for table in TABLES:
        with admin.cursor() as cursor:
            cursor.execute(f"SHOW CREATE TABLE `{database}`.{table}")
            (_, ddl), *_ = cursor.fetchall()
        statements.append(clean_mysql(str(ddl)))
    return "\n".join(statements)


def clean_mysql(ddl: str) -> str:
    """SHOW CREATE TABLE's statement without its foreign keys (and the comma before them)."""
    lines = [line for line in ddl.splitlines() if "FOREIGN KEY" not in line]
    for index, line in enumerate(lines):
        if line.startswith(")") and index and lines[index - 1].endswith(","):
            lines[index - 1] = lines[index - 1][:-1]
    return "\n".join(lines) + ";\n"


def generate_postgres(versions: list[str]) -> None:
    with EmbeddedPostgres(stat_statements=False) as pg:
        for version in versions:
            database = "airflow_" + re.sub(r"\W", "_", version)
            pg.psql(f'CREATE DATABASE "{database}"')
            airflow = ensure_airflow(version) / "bin" / "airflow"
            url = pg.dsn_for(database).replace("postgresql://", "postgresql+psycopg2://", 1)
            migrate(airflow, url)
            ddl = clean(dump_tables(pg, database))
            server_version = pg.psql("SHOW server_version").strip()
            header = (
                f"-- {', '.join(TABLES)} as `airflow db migrate` of apache-airflow=={version} creates them\n"
                f"-- (PostgreSQL {server_version}), dumped by pg_dump; foreign keys to other tables removed.\n"
                "-- Generated by scripts/generate_airflow_schemas.py: do not edit by hand.\n\n"
            )
            out = OUT_DIR / f"airflow-{version}.sql"
            out.write_text(header + ddl)
            print(f"wrote {out.relative_to(ROOT)}")


def generate_mysql(versions: list[str]) -> None:
    import pymysql

    with MariaDB() as server:
        admin = pymysql.connect(
            host="127.0.0.1", port=server.port, user=server.admin_user, password=server.admin_password
        )
        with admin.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            ((server_version,),) = cursor.fetchall()
        for version in versions:
            database = "airflow_" + re.sub(r"\W", "_", version)
            with admin.cursor() as cursor:
                # Airflow's documented database settings for MySQL.
                cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            airflow = ensure_airflow(version) / "bin" / "airflow"
            migrate(airflow, server.admin_url.replace("mysql://", "mysql+pymysql://", 1) + database)
            ddl = dump_mysql_tables(admin, database)
            header = (
                f"-- {', '.join(TABLES)} as `airflow db migrate` of apache-airflow=={version} creates them\n"
                f"-- (MariaDB {server_version}, standing in for MySQL 8), dumped by SHOW CREATE TABLE;\n"
                "-- foreign keys to other tables removed.\n"
                "-- Generated by scripts/generate_airflow_schemas.py: do not edit by hand.\n\n"
            )
            out = OUT_DIR / f"airflow-{version}.mysql.sql"
            out.write_text(header + ddl)
            print(f"wrote {out.relative_to(ROOT)}")
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", help="Airflow versions (default: every version each database has)")
    parser.add_argument("--databases", nargs="+", choices=("postgresql", "mysql"), default=["postgresql", "mysql"])
    args = parser.parse_args()
    if "postgresql" in args.databases:
        generate_postgres(args.versions or [OLDEST, *VERSIONS])
    if "mysql" in args.databases:
        generate_mysql(args.versions or list(MYSQL_VERSIONS))


if __name__ == "__main__":
    main()
