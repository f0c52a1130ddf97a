"""Every URL form Airflow users have, turned into what asyncpg or aiomysql take."""

from __future__ import annotations

import pytest

from scaler.rules.database_urls import UrlError, parse_url

FORMS: dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]] = {
    # name: (url, expected label, expected asyncpg dsn, expected server settings beyond application_name)
    "plain postgresql": (
        "postgresql://airflow:pw@db:5432/airflow",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow",
        (),
    ),
    "Airflow connection URI postgres://": (
        "postgres://airflow:pw@db/airflow",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow",
        (),
    ),
    "SQLAlchemy psycopg2": (
        "postgresql+psycopg2://airflow:pw@db:6432/airflow",
        "db:6432/airflow",
        "postgresql://airflow:pw@db:6432/airflow",
        (),
    ),
    "SQLAlchemy asyncpg": (
        "postgresql+asyncpg://airflow:pw@db/airflow",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow",
        (),
    ),
    "SQLAlchemy psycopg 3": (
        "postgresql+psycopg://airflow:pw@db/airflow",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow",
        (),
    ),
    "sslmode is kept, Airflow's extras are dropped": (
        "postgresql://airflow:pw@db/airflow?sslmode=require&__extra__=%7B%7D&connect_timeout=10",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow?sslmode=require",
        (),
    ),
    "percent-encoded password": (
        "postgresql://airflow:p%40ss%2Fw%3Ard@db/airflow",
        "db:5432/airflow",
        "postgresql://airflow:p%40ss%2Fw%3Ard@db:5432/airflow",
        (),
    ),
    "libpq options become server settings": (
        "postgresql://airflow:pw@db/airflow?options=-csearch_path%3Dairflow",
        "db:5432/airflow",
        "postgresql://airflow:pw@db:5432/airflow",
        (("search_path", "airflow"),),
    ),
    "several hosts": (
        "postgresql://airflow:pw@db1:5432,db2:5433/airflow?target_session_attrs=read-write",
        "db1:5432,db2:5433/airflow",
        "postgresql://airflow:pw@db1:5432,db2:5433/airflow?target_session_attrs=read-write",
        (),
    ),
    "IPv6 host": (
        "postgresql://airflow:pw@[::1]:5432/airflow",
        "::1:5432/airflow",
        "postgresql://airflow:pw@[::1]:5432/airflow",
        (),
    ),
    "no password (trust or .pgpass)": (
        "postgresql://airflow@db/airflow",
        "db:5432/airflow",
        "postgresql://airflow@db:5432/airflow",
        (),
    ),
}


@pytest.mark.parametrize(("url", "label", "dsn", "settings"), FORMS.values(), ids=FORMS.keys())
def test_accepted_forms(url: str, label: str, dsn: str, settings: tuple[tuple[str, str], ...]) -> None:
    target = parse_url(url)
    assert target.label == label
    assert target.dsn == dsn
    assert target.server_settings == (("application_name", "airflow-keda-scaler"), *settings)
    assert "pw" not in repr(target)


MYSQL_FORMS: dict[str, tuple[str, str, str]] = {
    # name: (url, expected label, expected normalised URL that mysql.py reads)
    "Airflow connection URI mysql://": (
        "mysql://airflow:pw@db/airflow",
        "db:3306/airflow",
        "mysql://airflow:pw@db:3306/airflow",
    ),
    "SQLAlchemy mysqlclient, Airflow's documented form": (
        "mysql+mysqldb://airflow:pw@db:3307/airflow?charset=utf8mb4&binary_prefix=true",
        "db:3307/airflow",
        "mysql://airflow:pw@db:3307/airflow?charset=utf8mb4",
    ),
    "SQLAlchemy PyMySQL, TLS options kept, Airflow's extras dropped": (
        "mysql+pymysql://airflow:p%40ss@db/airflow?ssl_ca=%2Fcerts%2Fca.pem&ssl_mode=VERIFY_CA&__extra__=%7B%7D",
        "db:3306/airflow",
        "mysql://airflow:p%40ss@db:3306/airflow?ssl_ca=%2Fcerts%2Fca.pem&ssl_mode=VERIFY_CA",
    ),
}


@pytest.mark.parametrize(("url", "label", "dsn"), MYSQL_FORMS.values(), ids=MYSQL_FORMS.keys())
def test_accepted_mysql_forms(url: str, label: str, dsn: str) -> None:
    target = parse_url(url)
    assert (target.dialect, target.label, target.dsn, target.server_settings) == ("mysql", label, dsn, ())
    assert "pw" not in repr(target)
    assert "p%40ss" not in repr(target)


def test_postgresql_forms_are_the_postgresql_dialect() -> None:
    assert {parse_url(url).dialect for url, *_ in FORMS.values()} == {"postgresql"}


REJECTED = {
    "mssql": ("mssql+pyodbc://u:pw@h/airflow", "unsupported URL scheme 'mssql+pyodbc://'"),
    "mysql with two hosts": ("mysql://u:pw@h1,h2/airflow", "one host"),
    "sqlite": ("sqlite:////tmp/airflow.db", "unsupported URL scheme 'sqlite://'"),
    "not a URL": ("host=db user=airflow", "not a URL"),
    "no host": ("postgresql://u:pw@/airflow", "names no host"),
    "no user": ("postgresql://db/airflow", "no user"),
    "bad options": ("postgresql://u:pw@db/airflow?options=search_path", "-c name=value"),
}


@pytest.mark.parametrize(("url", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected_forms(url: str, message: str) -> None:
    with pytest.raises(UrlError, match=message.replace("+", r"\+")) as caught:
        parse_url(url)
    assert "pw" not in str(caught.value)


def test_a_hostile_database_name_gives_a_short_label() -> None:
    """The label names the database in errors and metrics: a 100,000-letter name is cut, not repeated."""
    target = parse_url("postgresql://u:secret@db:5432/" + "d" * 100_000)
    assert len(target.label) < 300
    assert target.label.startswith("db:5432/ddd")
    assert target.label.endswith("(100008 characters)")
    assert parse_url("postgresql://u:secret@db:5432/airflow").label == "db:5432/airflow"
