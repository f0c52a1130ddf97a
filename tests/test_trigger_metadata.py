"""Metadata parsing: a table of named cases, no database."""

from __future__ import annotations

import pytest

from scaler.errors import InvalidMetadata
from scaler.rules import trigger_metadata
from scaler.rules.database_urls import ConnectionTarget
from scaler.rules.name_filters import EMPTY, NameFilter
from scaler.rules.trigger_metadata import NamedDatabase, TriggerSpec, executor_spellings, parse_metadata

URL = "postgresql://airflow:s3cret-pw@pg.airflow.svc:5432/airflow"
K8S_PATH = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"

VALID: dict[str, tuple[dict[str, str], dict[str, object]]] = {
    "defaults with a named database": (
        {"database": "airflow"},
        {
            "database": NamedDatabase("airflow"),
            "queues": None,
            "exclude_queues": EMPTY,
            "exclude_executors": EMPTY,
            "concurrency": 16,
            "activation_threshold": 0.0,
        },
    ),
    "KEDA's own keys and unknown keys are ignored": (
        {"database": "airflow", "scalerAddress": "x:6000", "somethingElse": "?"},
        {"concurrency": 16},
    ),
    "queues are trimmed and split": (
        {"database": "a", "queues": " default , ml "},
        {"queues": NameFilter.of({"default", "ml"})},
    ),
    "empty queues means every queue": ({"database": "a", "queues": ""}, {"queues": None}),
    "pre-warm is off by default, with its defaults": (
        {"database": "a"},
        {"prewarm": False, "prewarm_lead": 120, "prewarm_max_workers": 10},
    ),
    "pre-warm on, with a lead and a cap": (
        {"database": "a", "prewarm": "True", "prewarmLeadSeconds": " 60 ", "prewarmMaxWorkers": "0"},
        {"prewarm": True, "prewarm_lead": 60, "prewarm_max_workers": 0},
    ),
    "the longest lead": ({"database": "a", "prewarmLeadSeconds": "900"}, {"prewarm_lead": 900}),
    "excludeQueues": (
        {"database": "a", "excludeQueues": "kubernetes"},
        {"exclude_queues": NameFilter.of({"kubernetes"})},
    ),
    "excludeExecutors by class name matches the module path too": (
        {"database": "a", "excludeExecutors": "KubernetesExecutor"},
        {"exclude_executors": NameFilter.of({"KubernetesExecutor"})},
    ),
    "excludeExecutors by module path also names the class": (
        {"database": "a", "excludeExecutors": K8S_PATH},
        {"exclude_executors": NameFilter.of({K8S_PATH, "KubernetesExecutor"})},
    ),
    "excludeExecutors in Airflow's alias:path form": (
        {"database": "a", "excludeExecutors": f"k8s:{K8S_PATH}"},
        {"exclude_executors": NameFilter.of({"k8s", K8S_PATH, "KubernetesExecutor"})},
    ),
    "concurrency": ({"database": "a", "concurrency": " 8 "}, {"concurrency": 8}),
    "activationThreshold integer": ({"database": "a", "activationThreshold": "5"}, {"activation_threshold": 5.0}),
    "activationThreshold decimal": ({"database": "a", "activationThreshold": "0.5"}, {"activation_threshold": 0.5}),
}

INVALID: dict[str, tuple[dict[str, str], str, str]] = {
    "no database at all (KEDA dropped connectionFromEnv)": ({}, "connectionFromEnv", "KEDA drops connectionFromEnv"),
    "both database and connectionFromEnv": ({"database": "a", "connectionFromEnv": URL}, "database", "both"),
    "connectionFromEnv holding the variable's name, not a URL": (
        {"connectionFromEnv": "AIRFLOW_CONN_AIRFLOW_DB"},
        "connectionFromEnv",
        "not a URL",
    ),
    "MySQL URL": (
        {"connectionFromEnv": "mssql://u:p@h/airflow"},
        "connectionFromEnv",
        "unsupported URL scheme 'mssql://'",
    ),
    "URL without a database": (
        {"connectionFromEnv": "postgresql://u:p@h:5432"},
        "connectionFromEnv",
        "names no database",
    ),
    "URL with a bad port": ({"connectionFromEnv": "postgresql://u:p@h:99999/db"}, "connectionFromEnv", "port"),
    "concurrency zero": ({"database": "a", "concurrency": "0"}, "concurrency", "0 is less than 1"),
    "concurrency negative": ({"database": "a", "concurrency": "-3"}, "concurrency", "less than 1"),
    "concurrency not an integer": ({"database": "a", "concurrency": "16.5"}, "concurrency", "'16.5' is not an integer"),
    "concurrency garbage": ({"database": "a", "concurrency": "lots"}, "concurrency", "'lots' is not an integer"),
    "activationThreshold negative": ({"database": "a", "activationThreshold": "-1"}, "activationThreshold", ">= 0"),
    "activationThreshold not a number": (
        {"database": "a", "activationThreshold": "x"},
        "activationThreshold",
        "not a number",
    ),
    "activationThreshold infinite": ({"database": "a", "activationThreshold": "inf"}, "activationThreshold", "finite"),
    "queues with an empty name": ({"database": "a", "queues": "default,,ml"}, "queues", "empty name"),
    "prewarm not a boolean": ({"database": "a", "prewarm": "yes"}, "prewarm", "'yes' is not a boolean"),
    "prewarmLeadSeconds zero": ({"database": "a", "prewarmLeadSeconds": "0"}, "prewarmLeadSeconds", "out of range"),
    "prewarmLeadSeconds past 900": (
        {"database": "a", "prewarmLeadSeconds": "901"},
        "prewarmLeadSeconds",
        "out of range",
    ),
    "prewarmLeadSeconds a fraction": (
        {"database": "a", "prewarmLeadSeconds": "1.5"},
        "prewarmLeadSeconds",
        "'1.5' is not an integer",
    ),
    "prewarmLeadSeconds huge digits": (
        {"database": "a", "prewarmLeadSeconds": "9" * 5000},
        "prewarmLeadSeconds",
        "(5000 characters)' is not an integer",
    ),
    "prewarmMaxWorkers negative": ({"database": "a", "prewarmMaxWorkers": "-1"}, "prewarmMaxWorkers", "out of range"),
}


@pytest.mark.parametrize(("metadata", "expected"), VALID.values(), ids=VALID.keys())
def test_valid_metadata(metadata: dict[str, str], expected: dict[str, object]) -> None:
    spec = parse_metadata(metadata)
    for attribute, value in expected.items():
        assert getattr(spec, attribute) == value, attribute


@pytest.mark.parametrize(("metadata", "key", "problem"), INVALID.values(), ids=INVALID.keys())
def test_invalid_metadata_names_the_key_and_the_accepted_form(metadata: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        parse_metadata(metadata)
    assert caught.value.key == key
    assert problem in str(caught.value)
    assert "accepted:" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "mssql://airflow:s3cret-pw@h/airflow",
        "mysql://airflow:s3cret-pw@h1,h2/airflow",
        "postgresql://airflow:s3cret-pw@h:99999/airflow",
        "postgresql://airflow:s3cret-pw@h:5432",
        "s3cret-pw",
    ],
)
def test_rejected_connection_never_echoes_the_value(url: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        parse_metadata({"connectionFromEnv": url})
    assert "s3cret-pw" not in str(caught.value)


def test_connection_from_env_yields_a_target_that_hides_its_password() -> None:
    spec = parse_metadata({"connectionFromEnv": URL})
    assert isinstance(spec.database, ConnectionTarget)
    assert spec.database.label == "pg.airflow.svc:5432/airflow"
    assert "s3cret-pw" not in repr(spec)


def test_spec_is_frozen() -> None:
    spec = parse_metadata({"database": "a"})
    with pytest.raises(AttributeError):
        spec.concurrency = 3  # type: ignore[misc]
    assert isinstance(spec, TriggerSpec)


def test_executor_spellings_of_a_plain_alias() -> None:
    assert executor_spellings("my_k8s") == frozenset({"my_k8s"})


def test_identical_specs_are_one_object_even_when_the_parse_cache_keeps_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trigger_metadata, "_CACHE", trigger_metadata.ParseCache(budget=0))
    first = parse_metadata({"database": "airflow", "queues": "default,ml", "scalerAddress": "a:6000"})
    # Another order of the names, spaces, another KEDA key: the same spec, so the same object.
    assert parse_metadata({"queues": " ml , default", "database": "airflow", "scalerAddress": "b:6000"}) is first
    assert parse_metadata({"database": "airflow", "queues": "ml"}) is not first


def test_triggers_that_name_one_url_keep_one_target() -> None:
    specs = [parse_metadata({"connectionFromEnv": URL, "queues": queue}) for queue in ("a", "b", "c")]
    assert len({id(spec.database) for spec in specs}) == 1
    assert len({id(spec) for spec in specs}) == 3


def test_a_name_filter_holds_eight_bytes_a_name_and_answers_exactly() -> None:
    names = [f"queue-{n}-" + "x" * 200 for n in range(64)]
    found = NameFilter.of(names)
    assert len(found.digests) == 64 * 8
    assert all(name in found for name in names)
    assert not any(f"queue-{n}-" in found for n in range(64))
    assert None not in found
    assert found.isdisjoint(["default", "ml"])
    assert not found.isdisjoint(["default", names[3]])
    assert not EMPTY
    assert "default" not in EMPTY
