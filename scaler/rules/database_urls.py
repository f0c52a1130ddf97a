"""Every database URL form Airflow users have, turned into what our drivers take.

Airflow keeps its database URL in SQLAlchemy form (`postgresql+psycopg2://`,
`mysql+mysqldb://`, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN) or in its connection
URI form (`postgres://`, `mysql://`, AIRFLOW_CONN_*), sometimes with query
options meant for libpq, for the MySQL client or for Airflow itself
(`__extra__`). asyncpg takes a plain libpq URL and treats every query option it
does not know as a server setting, which the server then rejects; so options
are sorted here into those asyncpg understands, `options` (`-c name=value`
server settings, for example a search_path), and the rest, which are dropped.
MySQL URLs keep the character set and TLS options (mysql.py reads them) and
drop the rest.

Pure: no I/O. `label` is the only form of a target that may appear in a log
line, an error message or a metric label.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

from scaler.errors import shown

POSTGRES_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "postgresql+asyncpg",
    "postgresql+pg8000",
)
MYSQL_SCHEMES = ("mysql", "mysql+mysqldb", "mysql+pymysql", "mysql+aiomysql", "mysql+asyncmy")
ACCEPTED_FORMS = (
    "postgresql://user:password@host:5432/airflow (also postgres://, postgresql+psycopg2://, "
    "postgresql+psycopg://, postgresql+asyncpg://; query options such as ?sslmode=require are kept) "
    "or mysql://user:password@host:3306/airflow (also mysql+mysqldb://, mysql+pymysql://; "
    "?charset= and ?ssl_ca=/ssl_cert=/ssl_key=/ssl_mode= are kept)"
)

# Query options of a MySQL URL that mysql.py passes to the driver.
MYSQL_OPTIONS = frozenset({"charset", "ssl_ca", "ssl_cert", "ssl_key", "ssl_mode"})

# Query options asyncpg's DSN parser handles itself.
_ASYNCPG_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "sslsni",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "passfile",
    }
)


# Options whose value names a file on the scaler's machine (the connectionFromEnv policy refuses
# them unless the operator allows local files). sslrootcert=system means the system's CAs.
LOCAL_FILE_OPTIONS = frozenset(
    {"sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile", "ssl_ca", "ssl_cert", "ssl_key"}
)

# Options with a fixed set of values, checked here so a bad one is INVALID_ARGUMENT before any
# connection, not a driver error after one. (asyncpg's own names; libpq's for the same options.)
_CHOICES: dict[str, frozenset[str]] = {
    "sslmode": frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}),
    "target_session_attrs": frozenset({"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}),
    "sslsni": frozenset({"0", "1"}),
    "ssl_min_protocol_version": frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    "ssl_max_protocol_version": frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    "gsslib": frozenset({"gssapi", "sspi"}),
    "ssl_mode": frozenset({"DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"}),
}


class UrlError(ValueError):
    """The text is not a database URL the scaler accepts; the message never repeats it."""


@dataclass(frozen=True)
class ConnectionTarget:
    """Where one Airflow database is and how to log in; `dsn` holds the secret."""

    hosts: tuple[tuple[str, int], ...]
    database: str
    user: str
    dsn: str = field(repr=False)
    server_settings: tuple[tuple[str, str], ...] = ()
    # Which backend reads it: "postgresql" (asyncpg) or "mysql" (aiomysql).
    dialect: str = "postgresql"
    # The kept query options that name files on the scaler's machine (LOCAL_FILE_OPTIONS).
    local_files: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """host:port/database: safe to show, stable as a metric label, and short (a hostile name is cut)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        return shown(f"{hosts}/{self.database}", 256)


def parse_url(url: str) -> ConnectionTarget:
    """Parse any accepted URL form.

    >>> parse_url("postgresql+psycopg2://airflow:s3cret@pg:5432/airflow?sslmode=require").label
    'pg:5432/airflow'
    """
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UrlError("the value is not a URL (no scheme://)")
    scheme = scheme.lower()
    if scheme not in POSTGRES_SCHEMES and scheme not in MYSQL_SCHEMES:
        shown = scheme if scheme.replace("+", "").replace("-", "").isalnum() and len(scheme) < 40 else "?"
        raise UrlError(f"unsupported URL scheme '{shown}://'")
    netloc, _, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    path = path.split("#", 1)[0]
    query = query.split("#", 1)[0]
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist = netloc
    user, _, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    database = unquote(path)
    if not database:
        raise UrlError("the URL names no database (expected .../<database name>)")

    mysql = scheme in MYSQL_SCHEMES
    default_port = 3306 if mysql else 5432
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if not item:
            continue
        host, port = _split_host_port(item, default_port)
        hosts.append((host, port))
    if not hosts:
        raise UrlError("the URL names no host")
    if not user:
        raise UrlError("the URL names no user")
    if mysql:
        return _mysql_target(hosts, database, user, password, query)

    passthrough: list[tuple[str, str]] = []
    settings: list[tuple[str, str]] = [("application_name", "airflow-keda-scaler")]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _ASYNCPG_OPTIONS:
            passthrough.append((key, _checked(key, value)))
        elif key == "options":
            settings.extend(_parse_libpq_options(value))
        elif key == "application_name":
            settings[0] = ("application_name", value)
        # Anything else (Airflow's __extra__, connect_timeout, keepalives, ...) is
        # dropped: our own timeouts apply, and unknown names would reach the server.

    netloc_out = ",".join(f"{_host_in_url(host)}:{port}" for host, port in hosts)
    credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    dsn = f"postgresql://{credentials}@{netloc_out}/{quote(database, safe='')}"
    if passthrough:
        dsn += "?" + urlencode(passthrough)
    return ConnectionTarget(
        hosts=tuple(hosts),
        database=database,
        user=user,
        dsn=dsn,
        server_settings=tuple(settings),
        local_files=_local_files(passthrough),
    )


def _checked(key: str, value: str) -> str:
    """The option's value, or UrlError naming the option and what it takes."""
    choices = _CHOICES.get(key)
    if choices is not None and value not in choices and value.upper() not in choices:
        raise UrlError(f"the URL option {key} has a value that is not one of {', '.join(sorted(choices))}")
    return value


def _local_files(options: list[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(
        key for key, value in options if key in LOCAL_FILE_OPTIONS and not (key == "sslrootcert" and value == "system")
    )


def _mysql_target(
    hosts: list[tuple[str, int]], database: str, user: str, password: str, query: str
) -> ConnectionTarget:
    if len(hosts) > 1:
        raise UrlError("a MySQL URL names one host (several hosts are a PostgreSQL form)")
    host, port = hosts[0]
    kept = [
        (key, _checked(key, value)) for key, value in parse_qsl(query, keep_blank_values=True) if key in MYSQL_OPTIONS
    ]
    if any(key == "charset" and not value.replace("_", "").isalnum() for key, value in kept):
        raise UrlError("the URL option charset is not a character set name (letters, digits and _)")
    credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    dsn = f"mysql://{credentials}@{_host_in_url(host)}:{port}/{quote(database, safe='')}"
    if kept:
        dsn += "?" + urlencode(kept)
    return ConnectionTarget(
        hosts=((host, port),), database=database, user=user, dsn=dsn, dialect="mysql", local_files=_local_files(kept)
    )


def _split_host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [ipv6]:port
        host, _, port_text = item[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    host = unquote(host)
    if not host:
        raise UrlError("the URL has an empty host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UrlError("the URL has a port that is not a number from 1 to 65535")
    return host, int(port_text)


def _host_in_url(host: str) -> str:
    """The host as it goes back into a URL: IPv6 in brackets, a socket path percent-encoded.

    >>> _host_in_url("/tmp/x"), _host_in_url("::1"), _host_in_url("db")
    ('%2Ftmp%2Fx', '[::1]', 'db')
    """
    if "/" in host or "@" in host or "," in host or "%" in host:
        return quote(host, safe="")
    return f"[{host}]" if ":" in host else host


def _parse_libpq_options(value: str) -> list[tuple[str, str]]:
    """libpq `options=-c search_path=airflow -cstatement_timeout=0` -> settings."""
    settings: list[tuple[str, str]] = []
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise UrlError("the URL's options= query option is malformed") from error
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            assignment = words[index + 1]
            index += 2
        elif word.startswith("-c") or word.startswith("--"):
            assignment = word[2:]
            index += 1
        else:
            raise UrlError("the URL's options= query option holds something other than -c name=value")
        name, eq, setting = assignment.partition("=")
        if not eq or not name:
            raise UrlError("the URL's options= query option holds a -c without name=value")
        settings.append((name.replace("-", "_"), setting))
    return settings
