"""Throwaway servers the tests start themselves: PgBouncer, MariaDB, Redis.

Each runs from its Debian binary (found on PATH or in /usr/sbin) in a fresh
temporary folder on a free 127.0.0.1 port, in its own session so a failing
test cannot leave it behind unnoticed, and is stopped (then killed) by `stop`.
As root the servers run as `nobody`: PgBouncer and MariaDB refuse root, and
nothing of theirs needs more.

A missing binary is `ServerUnavailable`, which the fixtures turn into a skip
naming the Debian package to install (`make test` installs them where it can).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, unquote, urlsplit


class ServerUnavailable(RuntimeError):
    """The server's binary is not installed here."""


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise ServerUnavailable(
            f"{name} is not installed (Debian package '{package}'; `make test` installs it as root)"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_nobody() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _give_to_nobody(path: Path) -> None:
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), nobody.pw_uid, nobody.pw_gid)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


class ThrowawayServer:
    """One server process in a temporary folder; subclasses say how to configure and start it."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"airflow-keda-scaler-{self.name}-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration or initialise data (once, before the first start)."""

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None: this process's."""
        return None

    def initialise(self) -> None:
        """Set the running server up (once, after the first start)."""

    def ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def start(self, timeout: float = 60.0) -> Self:
        first = not any(self.dir.iterdir())
        if first:
            self.prepare()
            _give_to_nobody(self.dir)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it after Popen
        try:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.environment(),
                **_as_nobody(),  # type: ignore[call-overload]
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if self.ready():
                if first:
                    self.initialise()
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not start within {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Stop the process at once (SIGKILL), keeping its folder so that `start` can bring it back."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop it the usual way and start it again on the same port."""
        self._end(self.stop_signal)
        self.start()

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the process and remove its folder."""
        self._end(self.stop_signal)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PgBouncer(ThrowawayServer):
    """Debian's pgbouncer in transaction pooling mode in front of one PostgreSQL server.

    Every database name is passed through to the server (`* = ...`). Clients log
    in with SCRAM: the admin from the auth file, every other role through
    `auth_query` as the admin, so roles the tests create can log in, and a wrong
    password is refused by PgBouncer, as in production. The admin DSN must
    carry a password.
    """

    name = "pgbouncer"
    # SIGINT is PgBouncer's safe shutdown (waits for clients); SIGTERM is immediate, like a pod being replaced.
    stop_signal = signal.SIGTERM

    def __init__(self, server_dsn: str, *, pool_size: int = 4) -> None:
        super().__init__()
        self._binary = find_binary("pgbouncer", "pgbouncer")
        parts = urlsplit(server_dsn)
        self.server_host = parts.hostname or "127.0.0.1"
        self.server_port = parts.port or 5432
        self.admin_user = unquote(parts.username or "postgres")
        self.admin_password = unquote(parts.password or "")
        self.pool_size = pool_size

    def command(self) -> list[str]:
        return [self._binary, str(self.dir / "pgbouncer.ini")]

    def prepare(self) -> None:
        userlist = self.dir / "userlist.txt"
        quoted = self.admin_password.replace('"', '""')
        userlist.write_text(f'"{self.admin_user}" "{quoted}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "pool_mode = transaction\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            f"auth_user = {self.admin_user}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 2000\n"
            f"admin_users = {self.admin_user}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        userlist.chmod(0o600)

    def show(self, what: str) -> list[dict[str, str]]:
        """Rows of the admin console's SHOW <what> (simple query protocol only, hence psql)."""
        result = subprocess.run(
            [psql_binary(), "-XA", "-F", "\t", "-P", "footer=off", "-c", f"SHOW {what}", self.dsn_for("pgbouncer")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        header, *rows = result.stdout.splitlines()
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    def dsn_for(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        login = user or self.admin_user
        secret = self.admin_password if password is None else password
        credentials = quote(login, safe="") + (":" + quote(secret, safe="") if secret else "")
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"


class MariaDB(ThrowawayServer):
    """Debian's MariaDB server with an empty data folder; `admin_url` logs in over TCP with a password.

    Airflow supports MySQL 8, not MariaDB; MariaDB is what Debian ships, and it speaks
    the same protocol and runs the same query. `airflow db migrate` works on it.
    """

    name = "mariadb"
    admin_user = "scaler_admin"

    def __init__(self) -> None:
        super().__init__()
        self._server = find_binary("mariadbd", "mariadb-server")
        self._install_db = find_binary("mariadb-install-db", "mariadb-server")
        self.admin_password = secrets.token_urlsafe(12)

    @property
    def socket_path(self) -> Path:
        return self.dir / "mysqld.sock"

    def prepare(self) -> None:
        _give_to_nobody(self.dir)
        result = subprocess.run(
            [
                self._install_db,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            cwd=self.dir,
            capture_output=True,
            check=False,
            **_as_nobody(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"mariadb-install-db failed:\n{output[-2000:]}")

    def command(self) -> list[str]:
        return [
            self._server,
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.dir / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            # A throwaway server: no fsync per commit, yet commits survive the process being killed.
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-log-bin",
        ]

    def initialise(self) -> None:
        # root may log in over the local socket only; the tests log in over TCP with a password.
        import pymysql

        root = pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)
        try:
            with root.cursor() as cursor:
                cursor.execute(f"CREATE USER '{self.admin_user}'@'%%' IDENTIFIED BY %s", (self.admin_password,))
                cursor.execute(f"GRANT ALL ON *.* TO '{self.admin_user}'@'%' WITH GRANT OPTION")
        finally:
            root.close()

    @property
    def admin_url(self) -> str:
        return f"mysql://{self.admin_user}:{quote(self.admin_password, safe='')}@127.0.0.1:{self.port}/"


class Redis(ThrowawayServer):
    """Debian's redis-server, in memory only: the Celery broker of the end-to-end test."""

    name = "redis"

    def __init__(self, *, password: str | None = None) -> None:
        super().__init__()
        self._server = find_binary("redis-server", "redis-server")
        self.password = password

    def command(self) -> list[str]:
        return [
            self._server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            *(["--requirepass", self.password] if self.password else []),
        ]

    @property
    def url(self) -> str:
        login = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"


class RabbitMQ(ThrowawayServer):
    """Debian's rabbitmq-server (the other Celery broker the official chart offers), with a user and password,
    its own Erlang port mapper and distribution port, all in its folder."""

    name = "rabbitmq"

    def __init__(self, *, password: str = "rabbit-secret") -> None:
        super().__init__()
        self._server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(self._server):
            raise ServerUnavailable(
                "rabbitmq-server is not installed (Debian package 'rabbitmq-server'; `make test` installs it as root)"
            )
        self.user = "airflow"
        self.password = password
        self.dist_port = free_port()
        self.epmd_port = free_port()

    def prepare(self) -> None:
        (self.dir / "rabbitmq.conf").write_text(
            f"loopback_users = none\ndefault_user = {self.user}\ndefault_pass = {self.password}\ndefault_vhost = /\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / ".erlang.cookie").write_text(secrets.token_hex(16))
        (self.dir / ".erlang.cookie").chmod(0o400)

    def environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": f"rabbit{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
        }

    def command(self) -> list[str]:
        return [self._server]

    def _end(self, sig: int) -> None:
        # The script starts Erlang's VM and its port mapper; the VM is in the script's process group, the
        # port mapper (a daemon) is told to go on its own port.
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        super()._end(sig)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.path.exists(epmd):
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, check=False, timeout=10)

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}//"


def psql_binary() -> str:
    from scaler.fixtures.embedded_postgres import find_bin_dir

    with contextlib.suppress(Exception):
        candidate = find_bin_dir() / "psql"
        if candidate.is_file():
            return str(candidate)
    return find_binary("psql", "postgresql-client")
