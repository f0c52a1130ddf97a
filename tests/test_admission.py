"""What one ScaledObject may send the shared scaler: bounded sizes, Kubernetes names, the operator's URL policy.

Each test here stands for a way the scaler could be frozen, bloated or misused by one
hostile ScaledObject; every refusal happens before a cache, a log line or a connection
sees the input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
import pytest

from scaler._proto import externalscaler_pb2 as pb
from scaler.commands.main import main
from scaler.rules.admission import STATUS_MESSAGE_LIMIT, ConnectionPolicy, Limits, parse_host_rules
from scaler.rules.database_urls import parse_url
from scaler.rules.decision import decide
from scaler.rules.snapshot import Snapshot, SnapshotRow
from scaler.rules.trigger_metadata import PARSE_CACHE_BUDGET, ParseCache, parse_metadata
from scaler.service.database_caches import DatabaseSettings
from tests.conftest import AirflowDatabase, StartScaler, fast_settings, until, with_password
from tests.support.keda import Keda


@dataclass
class Listener:
    """A TCP port that counts the connections made to it (and closes them): did the scaler connect?"""

    port: int
    connections: int = 0


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counted = Listener(0)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    counted.port = server.sockets[0].getsockname()[1]
    yield counted
    server.close()
    await server.wait_closed()


async def refusal(keda: Keda, metadata: Mapping[str, str], *, name: str = "celery-worker") -> grpc.aio.AioRpcError:
    """The error GetMetricSpec answers with (it must answer one)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.GetMetricSpec(Keda.ref(metadata, name=name), timeout=10)
    return raised.value


# --- sizes and names --------------------------------------------------------------------------


async def test_an_oversized_value_is_invalid_argument_naming_the_key_and_the_limit(start_scaler: StartScaler) -> None:
    keda = (await start_scaler()).keda
    # 100 KB: echoed whole, a default client reported RESOURCE_EXHAUSTED instead of our code.
    error = await refusal(keda, {"database": "airflow", "queues": "q" * 100_000})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'queues'" in (error.details() or "")
    assert "at most 4096 bytes (--max-metadata-value)" in (error.details() or "")


async def test_a_request_past_grpcs_receive_limit_is_refused_before_it_is_parsed(start_scaler: StartScaler) -> None:
    # The 40 x 1.2 MB maps: refused by gRPC itself (the allocator keeps what large requests used).
    keda = (await start_scaler()).keda
    error = await refusal(keda, {"database": "airflow", "queues": "q" * 1_200_000})
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")


async def test_an_oversized_map_is_invalid_argument(start_scaler: StartScaler) -> None:
    keda = (await start_scaler()).keda
    metadata = {"database": "airflow", **{f"key{i}": "v" * 1000 for i in range(20)}}
    error = await refusal(keda, metadata)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(--max-metadata-bytes)" in (error.details() or "")


@pytest.mark.parametrize("name", ["x" * 10_000, "Upper", "under_score", "", "a\nb"])
async def test_a_name_that_is_no_kubernetes_name_is_refused(start_scaler: StartScaler, name: str) -> None:
    keda = (await start_scaler()).keda
    error = await refusal(keda, {"database": "airflow"}, name=name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details() or "") <= STATUS_MESSAGE_LIMIT


async def test_status_messages_are_short_whatever_the_value(start_scaler: StartScaler) -> None:
    keda = (await start_scaler()).keda
    for metadata in (
        {"database": "airflow", "concurrency": "9" * 4000 + "x"},
        {"database": "n" * 4000},
        {"database": "airflow", "queues": "a,," + "b" * 4000},
    ):
        error = await refusal(keda, metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(error.details() or "") <= STATUS_MESSAGE_LIMIT, metadata.keys()


def test_the_parse_cache_stays_within_its_budget_under_distinct_large_maps() -> None:
    # The landed lru_cache kept 4,096 maps however large: 40 maps of 1.2 MB took 500 MiB.
    cache = ParseCache(budget=200_000)
    for i in range(300):
        items = (("database", "airflow"), ("queues", ",".join(f"q{i}-{n}" for n in range(400))))
        cache.put(items, parse_metadata(dict(items)))
        assert cache.cost <= cache.budget
    assert 0 < cache.size < 300
    # A map that alone outweighs the budget is parsed but never kept.
    huge = (("database", "airflow"), ("queues", ",".join(str(n) for n in range(50_000))))
    before = cache.size
    cache.put(huge, parse_metadata(dict(huge)))
    assert cache.size == before
    assert PARSE_CACHE_BUDGET <= 8 * 1024 * 1024


def test_a_huge_concurrency_still_asks_for_a_worker_when_there_is_work() -> None:
    # 1 / 10**330 underflowed to 0.0 as a float: 0 workers while IsActive said true.
    spec = parse_metadata({"database": "airflow", "concurrency": "1" + "0" * 330})
    decision = decide(spec, Snapshot((SnapshotRow("queued", "default", None, 1),), True, 0.0))
    assert (decision.workers, decision.active) == (1, True)


def test_the_redactor_takes_linear_time_on_hostile_text() -> None:
    # The landed pattern backtracked: 40,000 letters took 3 s, 1 MB would take tens of minutes.
    # A child process with a generous limit: linear code needs well under a second for all of these.
    code = (
        "from scaler.redaction import redact\n"
        "for text in ('d' * 1_000_000, 'a://b:' * 200_000, \"password='\" * 100_000, 'x:' * 500_000):\n"
        "    assert '***' not in redact(text) or text.startswith('password')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- the connectionFromEnv policy ---------------------------------------------------------------


async def test_deny_refuses_every_url_before_any_connection(start_scaler: StartScaler, listener: Listener) -> None:
    settings = dataclasses.replace(fast_settings(), policy=ConnectionPolicy(connection_from_env="deny"))
    keda = (await start_scaler(settings)).keda
    url = f"postgresql://airflow:secret-7f3a@127.0.0.1:{listener.port}/airflow"
    error = await refusal(keda, {"connectionFromEnv": url})
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--connection-from-env deny" in (error.details() or "")
    assert "secret-7f3a" not in (error.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=Keda.ref({"connectionFromEnv": url})))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert listener.connections == 0


async def test_allowed_hosts_refuse_an_unlisted_host_and_let_a_listed_one_connect(
    start_scaler: StartScaler, listener: Listener
) -> None:
    policy = ConnectionPolicy(allowed_hosts=parse_host_rules(f"127.0.0.1:{listener.port},db.internal"))
    keda = (await start_scaler(dataclasses.replace(fast_settings(), policy=policy))).keda
    for host in ("127.0.0.2", "localhost", "[::1]", "other.internal", f"127.0.0.1:{listener.port},127.0.0.3"):
        port = "" if ":" in host.split(",")[0] else f":{listener.port}"
        error = await refusal(keda, {"connectionFromEnv": f"postgresql://u@{host}{port}/airflow"})
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, host
    assert listener.connections == 0
    # A listed host is connected to (and fails there: the listener is no database).
    request = pb.GetMetricsRequest(
        scaledObjectRef=Keda.ref({"connectionFromEnv": f"postgresql://u@127.0.0.1:{listener.port}/airflow"})
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.GetMetrics(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert listener.connections >= 1


@pytest.mark.parametrize(
    "query",
    [
        "?sslrootcert=/etc/passwd",
        "?sslmode=require&sslkey=/var/run/secrets/kubernetes.io/serviceaccount/token",
        "?passfile=/root/.pgpass",
        "?sslcrl=/etc/shadow",
    ],
)
async def test_url_options_naming_local_files_are_refused_unless_allowed(
    start_scaler: StartScaler, listener: Listener, query: str
) -> None:
    url = f"postgresql://u@127.0.0.1:{listener.port}/airflow{query}"
    keda = (await start_scaler()).keda
    error = await refusal(keda, {"connectionFromEnv": url})
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names a file on the scaler's machine" in (error.details() or "")
    assert "--connection-files allow" in (error.details() or "")  # what the operator would set
    allowing = dataclasses.replace(fast_settings(), policy=ConnectionPolicy(allow_local_files=True))
    keda = (await start_scaler(allowing)).keda
    await keda.stub.GetMetricSpec(Keda.ref({"connectionFromEnv": url}), timeout=10)  # accepted
    assert listener.connections == 0  # GetMetricSpec never connects


async def test_mysql_file_options_and_socket_hosts_are_refused(start_scaler: StartScaler) -> None:
    keda = (await start_scaler()).keda
    for url in (
        "mysql://root@127.0.0.1/airflow?ssl_ca=/etc/passwd",
        "postgresql://u@%2Frun%2Fpostgresql/airflow",
        "postgresql://u@%2Ftmp%2Fx:5432,127.0.0.1/airflow",
    ):
        error = await refusal(keda, {"connectionFromEnv": url})
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, url


@pytest.mark.parametrize(
    ("query", "option"),
    [("?sslmode=bogus", "sslmode"), ("?target_session_attrs=bogus", "target_session_attrs"), ("?sslsni=2", "sslsni")],
)
async def test_an_invalid_url_option_is_invalid_argument_before_any_connection(
    start_scaler: StartScaler, listener: Listener, query: str, option: str
) -> None:
    keda = (await start_scaler()).keda
    ref = Keda.ref({"connectionFromEnv": f"postgresql://u:pw@127.0.0.1:{listener.port}/airflow{query}"})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert option in details
    assert " at 0x" not in details  # no Python object's address
    assert listener.connections == 0


def test_a_percent_encoded_socket_host_stays_the_same_socket() -> None:
    target = parse_url("postgresql://u@%2Ftmp%2Fx/airflow")
    assert target.hosts == (("/tmp/x", 5432),)
    assert target.label == "/tmp/x:5432/airflow"
    # What asyncpg is given names the same socket folder (it percent-decodes hosts).
    assert target.dsn == "postgresql://u@%2Ftmp%2Fx:5432/airflow"


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "a b", "host:99999", "[::1", ":5432"])
def test_bad_allowed_hosts_entries_are_named(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a host, host:port or CIDR network"):
        parse_host_rules(entry)


def test_host_rules_match_hosts_ports_and_networks() -> None:
    rules = parse_host_rules("db.internal, 10.0.0.0/8, pg:6432, [fd00::1]:5432")
    allowed = [("db.internal", 1), ("DB.Internal.", 5432), ("10.200.0.1", 5432), ("pg", 6432), ("fd00::1", 5432)]
    refused = [("db.internal.evil", 5432), ("11.0.0.1", 5432), ("pg", 5432), ("fd00::1", 5433), ("10.0.0.1.nip.io", 1)]
    assert all(any(rule.allows(host, port) for rule in rules) for host, port in allowed)
    assert not any(any(rule.allows(host, port) for rule in rules) for host, port in refused)


async def test_check_applies_the_same_policy(
    airflow3_db: AirflowDatabase, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = with_password(airflow3_db.dsn)
    code = await asyncio.to_thread(main, ["check", "--connection-from-env", "deny", "--connection", url])
    assert code == 2
    assert "--connection-from-env deny" in capsys.readouterr().err
    monkeypatch.setenv("AIRFLOW_KEDA_SCALER_ALLOWED_HOSTS", "db.elsewhere")
    assert await asyncio.to_thread(main, ["check", "--connection", url]) == 2
    assert "is not in the scaler's --allowed-hosts" in capsys.readouterr().err
    monkeypatch.setenv("AIRFLOW_KEDA_SCALER_ALLOWED_HOSTS", "127.0.0.0/8,localhost")
    assert await asyncio.to_thread(main, ["check", "--connection", url]) == 0


# --- capacity -------------------------------------------------------------------------------------


async def test_streams_past_the_limit_are_resource_exhausted_and_room_returns(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    scaler = await start_scaler(dataclasses.replace(settings, limits=Limits(max_streams=2)))
    first, second = (scaler.keda.stream({"database": "airflow"}, name=name) for name in ("a", "b"))
    assert [await first.next(), await second.next()] == [False, False]
    third = scaler.keda.stub.StreamIsActive(Keda.ref({"database": "airflow"}, name="c"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await third.read()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams" in (raised.value.details() or "")
    first.cancel()
    await until(lambda: scaler.server.scaled_objects.open_streams == 1)
    again = scaler.keda.stream({"database": "airflow"}, name="c")
    assert await again.next() is False
    second.cancel()
    again.cancel()


async def test_scaled_objects_past_the_limit_are_resource_exhausted(
    airflow3_db: AirflowDatabase, start_scaler: StartScaler
) -> None:
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    scaler = await start_scaler(dataclasses.replace(settings, limits=Limits(max_scaled_objects=2)))
    await scaler.keda.poll({"database": "airflow"}, name="a")
    await scaler.keda.poll({"database": "airflow"}, name="b")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await scaler.keda.poll({"database": "airflow"}, name="c")
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-scaled-objects" in (raised.value.details() or "")
    await scaler.keda.poll({"database": "airflow"}, name="a")  # known ones go on


async def test_url_databases_past_the_limit_are_resource_exhausted(
    start_scaler: StartScaler, listener: Listener
) -> None:
    settings = fast_settings()
    settings = dataclasses.replace(
        settings, database_settings=dataclasses.replace(settings.database_settings, max_databases=1)
    )
    keda = (await start_scaler(settings)).keda
    await keda.stub.GetMetricSpec(Keda.ref({"connectionFromEnv": f"postgresql://u@127.0.0.1:{listener.port}/a"}))
    error = await refusal(keda, {"connectionFromEnv": f"postgresql://u@127.0.0.1:{listener.port}/b"})
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-databases" in (error.details() or "")
    assert DatabaseSettings().max_databases >= 100


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--pool-size", "z" * 100_000],
        ["serve", "--query-timeout", "-" + "9" * 100_000],
        ["serve", "--grpc-address", "a" * 100_000],
        ["demo", "--plot", "p" * 100_000],
    ],
    ids=["not-a-number", "not-positive", "not-an-address", "not-a-plot-file"],
)
def test_a_huge_bad_flag_is_named_in_a_short_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {argv[1]}:" in error
    assert "(100000 characters)" in error or "(100001 characters)" in error
    assert len(error) < 300


async def test_one_namespace_cannot_take_every_slot(airflow3_db: AirflowDatabase, start_scaler: StartScaler) -> None:
    settings = fast_settings({"airflow": parse_url(airflow3_db.dsn)})
    scaler = await start_scaler(dataclasses.replace(settings, limits=Limits(max_scaled_objects_per_namespace=2)))
    keda = scaler.keda
    for name in ("a", "b"):
        await keda.stub.IsActive(Keda.ref({"database": "airflow"}, name=name, namespace="greedy"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.IsActive(Keda.ref({"database": "airflow"}, name="c", namespace="greedy"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "namespace greedy" in (raised.value.details() or "")
    assert "--max-scaled-objects-per-namespace" in (raised.value.details() or "")
    # Its stream is refused the same way; other namespaces are not affected; the known ones go on.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await keda.stub.StreamIsActive(Keda.ref({"database": "airflow"}, name="c", namespace="greedy")).read()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for name in ("a", "b"):
        await keda.stub.IsActive(Keda.ref({"database": "airflow"}, name=name, namespace="modest"))
    await keda.stub.IsActive(Keda.ref({"database": "airflow"}, name="a", namespace="greedy"))
    assert Limits().max_scaled_objects_per_namespace == 1000


@pytest.mark.parametrize("key", ["queues", "excludeQueues", "excludeExecutors"])
async def test_a_trigger_listing_too_many_names_is_refused_naming_the_key_and_the_limit(
    start_scaler: StartScaler, key: str
) -> None:
    keda = (await start_scaler(fast_settings({"airflow": parse_url("postgresql://u@127.0.0.1:1/a")}))).keda
    limit = Limits().max_trigger_names
    # The amplifier: a 4,000-byte value of short names (800 of them).
    error = await refusal(keda, {"database": "airflow", key: ",".join(f"q{n:02}" for n in range(800))})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"metadata key '{key}'" in (error.details() or "")
    assert f"at most {limit} names" in (error.details() or "")
    assert "--max-trigger-names" in (error.details() or "")
    # The limit counts every list together; at the limit, the trigger is taken.
    half = ",".join(f"q{n}" for n in range(limit // 2))
    split = {"database": "airflow", "queues": half, "excludeQueues": half + ",one-more"}
    assert (await refusal(keda, split)).code() == grpc.StatusCode.INVALID_ARGUMENT
    await keda.stub.GetMetricSpec(Keda.ref({"database": "airflow", "queues": half, "excludeQueues": half}))
