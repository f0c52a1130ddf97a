"""Real Apache Airflow releases in cached throwaway virtualenvs.

Used by the end-to-end test (`make e2e`) and by scripts/generate_airflow_schemas.py.
Each version lives in its own virtualenv under the cache folder
(AIRFLOW_KEDA_SCALER_AIRFLOW_CACHE, default ~/.cache/airflow-keda-scaler/airflow-venvs),
installed once from PyPI with the Celery, PostgreSQL and Redis extras and the MySQL drivers,
and reused while it imports. The versions of everything else are pinned by
tests/support/airflow_constraints/airflow-<version>.txt (what `pip freeze` gave for a
working install), as Airflow's own constraint files do, so an install made today
behaves like the one the tests were written against.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

CACHE_ENV = "AIRFLOW_KEDA_SCALER_AIRFLOW_CACHE"
EXTRAS = "celery,postgres,redis"
# MySQL drivers: PyMySQL for `mysql+pymysql://`, aiomysql for the async engine Airflow 3 derives from it.
DRIVERS = ("pymysql", "aiomysql")
CONSTRAINTS = Path(__file__).resolve().parent / "airflow_constraints"
# What the install must be able to import before it is reused.
PROBE = "import airflow, airflow.providers.celery, redis, pymysql, aiomysql, psycopg2; print(airflow.__version__)"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "airflow-keda-scaler" / "airflow-venvs"


def installed(venv: Path, version: str) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, check=False)
    return probe.returncode == 0 and probe.stdout.strip().splitlines()[-1:] == [version]


def ensure_airflow(version: str, *, log: Path | None = None) -> Path:
    """The virtualenv holding apache-airflow==version, installing it on first use (a few minutes)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"airflow-{version}"
    # Two test runs at once must not install into one folder together.
    with open(cache / f"airflow-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(venv, version):
            return venv
        output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
            subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=output, stderr=subprocess.STDOUT)
            constraints = CONSTRAINTS / f"airflow-{version}.txt"
            pinned = ["-c", str(constraints)] if constraints.exists() else []
            subprocess.run(
                [*pip, *pinned, f"apache-airflow[{EXTRAS}]=={version}", *DRIVERS],
                check=True,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if log:
                output.close()  # type: ignore[union-attr]
        if not installed(venv, version):
            raise RuntimeError(f"apache-airflow=={version} installed into {venv} but does not import")
        return venv
