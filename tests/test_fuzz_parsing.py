"""Property-based fuzzing of everything a ScaledObject's text reaches: the edge, metadata, URLs, the redactor.

Hypothesis runs derandomized (the same examples every run, see conftest.py's profile), so a
red CI is a real finding, never a roll of the dice; raise HYPOTHESIS_PROFILE=explore locally
to search further.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote

from hypothesis import example, given
from hypothesis import strategies as st

from scaler.errors import InvalidMetadata, NotPermitted
from scaler.redaction import redact
from scaler.rules.admission import STATUS_MESSAGE_LIMIT, ConnectionPolicy, Limits, check_request, parse_host_rules
from scaler.rules.database_urls import MYSQL_SCHEMES, POSTGRES_SCHEMES, ConnectionTarget, UrlError, parse_url
from scaler.rules.trigger_metadata import METADATA_KEYS, TriggerSpec, parse_metadata

# What a message may be at the most before the servicer cuts it: the accepted URL forms are the longest part.
MESSAGE_BOUND = 1024
SECRET_MARK = "Zq9"  # every generated password starts with it; nothing else generated contains it

keys = st.sampled_from([*METADATA_KEYS, "scalerAddress", "x"]) | st.text(max_size=20)
values = st.text(max_size=300) | st.sampled_from(["", " ", ",", "1e400", "-1", "nan", "0", "1" + "0" * 330, "true"])
metadata_maps = st.dictionaries(keys, values, max_size=8)

passwords = st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=12).map(lambda s: SECRET_MARK + s)
hosts = st.sampled_from(["db", "127.0.0.1", "[::1]", "%2Ftmp%2Fsock", "a.b.c", "h"]) | st.from_regex(
    r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?", fullmatch=True
)
ports = st.none() | st.integers(min_value=-1, max_value=70000)
names = st.text(max_size=15)
queries = st.lists(
    st.tuples(
        st.sampled_from(["sslmode", "sslrootcert", "options", "target_session_attrs", "charset", "ssl_ca", "x"]),
        st.text(max_size=20),
    ),
    max_size=3,
)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, str]:
    """A database URL as a person (or an attacker) might write one, and its password."""
    scheme = draw(st.sampled_from([*POSTGRES_SCHEMES, *MYSQL_SCHEMES, "redis", "POSTGRESQL", ""]))
    user, password = draw(names), draw(passwords)
    host_list = draw(st.lists(hosts, min_size=0, max_size=3))
    port = draw(ports)
    netloc = ",".join(f"{host}:{port}" if port is not None else host for host in host_list)
    query = "&".join(f"{key}={quote(value)}" for key, value in draw(queries))
    url = f"{scheme}://{quote(user)}:{password}@{netloc}/{quote(draw(names))}" + (f"?{query}" if query else "")
    return url, password


@given(metadata_maps)
@example({"database": "a", "concurrency": "1" + "0" * 330})
@example({"connectionFromEnv": "postgresql://u:" + SECRET_MARK + "x@h/d?sslmode=bogus"})
def test_metadata_parses_or_is_refused_with_a_short_message(metadata: dict[str, str]) -> None:
    try:
        spec = parse_metadata(metadata)
    except InvalidMetadata as error:
        refused = str(error)
        assert len(refused) < MESSAGE_BOUND
        assert SECRET_MARK not in refused
        return
    assert isinstance(spec, TriggerSpec)
    assert spec.concurrency >= 1
    assert spec.activation_threshold >= 0


@given(urls())
@example(("postgresql://u:" + SECRET_MARK + "@%2Ftmp%2Fx/airflow", SECRET_MARK))
def test_urls_parse_round_trip_or_are_refused_without_echoing_the_password(case: tuple[str, str]) -> None:
    url, password = case
    try:
        target = parse_url(url)
    except UrlError as error:
        assert password not in str(error)  # noqa: PT017 - the property is about every refusal's message
        assert len(str(error)) < MESSAGE_BOUND  # noqa: PT017
        return
    assert password not in target.label
    assert password not in repr(target)
    # What the driver is given names the same place, login and database as what was parsed.
    again = parse_url(target.dsn)
    assert (again.hosts, again.database, again.user) == (target.hosts, target.database, target.user)


@given(st.text(max_size=400))
def test_any_text_is_a_url_or_a_url_error(text: str) -> None:
    with contextlib.suppress(UrlError):
        parse_url(text)


surrounding = st.text(st.characters(exclude_characters=SECRET_MARK[0]), max_size=60)


@given(surrounding, st.from_regex(r"[a-zA-Z][a-zA-Z0-9+.-]{0,15}", fullmatch=True), names, passwords, surrounding)
@example("d" * 50, "postgresql", "airflow", SECRET_MARK + "x", ":" * 50)
def test_the_redactor_hides_every_url_password(before: str, scheme: str, user: str, password: str, after: str) -> None:
    text = f"{before} {scheme}://{quote(user, safe='')}:{password}@db:5432/airflow {after}"
    assert password not in redact(text)


@given(st.dictionaries(st.text(max_size=40), st.text(max_size=6000), max_size=6), names, names)
def test_the_edge_refuses_or_passes_within_its_limits(metadata: dict[str, str], namespace: str, name: str) -> None:
    limits = Limits(max_value_bytes=4096, max_metadata_bytes=8192)
    try:
        check_request(namespace, name, metadata, limits)
    except InvalidMetadata as error:
        assert len(str(error)) < MESSAGE_BOUND  # noqa: PT017 - the property is about every refusal's message
        return
    assert all(len(value.encode()) <= limits.max_value_bytes for value in metadata.values())
    assert sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) <= limits.max_metadata_bytes
    assert 0 < len(name) <= 253


@given(urls(), st.sampled_from(["127.0.0.0/8", "db,h", "h:5432", "[::1]", "a.b.c:1"]), st.booleans())
def test_the_policy_allows_only_listed_hosts_and_no_local_files(
    case: tuple[str, str], rules: str, local_files: bool
) -> None:
    url, _ = case
    try:
        target = parse_url(url)
    except UrlError:
        return
    policy = ConnectionPolicy(allowed_hosts=parse_host_rules(rules), allow_local_files=local_files)
    try:
        policy.check(target)
    except NotPermitted as error:
        assert len(str(error)) < STATUS_MESSAGE_LIMIT  # noqa: PT017 - the property is about every refusal
        return
    assert isinstance(target, ConnectionTarget)
    assert all(any(rule.allows(host, port) for rule in policy.allowed_hosts) for host, port in target.hosts)
    assert local_files or not target.local_files
